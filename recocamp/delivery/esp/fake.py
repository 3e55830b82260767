"""An in-process provider for unit tests: no network, scripted answers, a record of sends.

It deduplicates nothing on purpose: ``sent`` lists every message exactly as often as it was
handed over, so a test can prove that the caller never sends twice. ``script`` maps a send
key to the statuses to answer on its successive attempts (the last one repeats);
``fail_requests`` makes the next N ``send_batch`` calls raise the given error instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from recocamp.domain import OutgoingEmail, SendResult, SendStatus
from recocamp.errors import DeliveryError


class FakeProvider:
    name = "fake"
    resend_is_safe = False

    def __init__(self, batch_limit: int = 500) -> None:
        self.batch_limit = batch_limit
        self.sent: list[OutgoingEmail] = []
        self.accepted: dict[str, str] = {}
        self.script: dict[str, list[SendStatus]] = {}
        self.fail_requests: list[DeliveryError] = []
        self.attempts: Counter[str] = Counter()
        self.closed = False

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        assert len(messages) <= self.batch_limit, "batch over the provider's limit"
        if self.fail_requests:
            raise self.fail_requests.pop(0)
        return [self._one(message) for message in messages]

    def _one(self, message: OutgoingEmail) -> SendResult:
        self.attempts[message.send_key] += 1
        steps = self.script.get(message.send_key, [SendStatus.ACCEPTED])
        status = steps[min(self.attempts[message.send_key], len(steps)) - 1]
        if status is not SendStatus.ACCEPTED:
            return SendResult(message.send_key, status, error=f"scripted {status.value}")
        self.sent.append(message)
        message_id = self.accepted[message.send_key] = f"fake-{len(self.sent)}"
        return SendResult(message.send_key, status, message_id=message_id)

    def lookup(self, send_keys: Sequence[str]) -> dict[str, str] | None:
        return {key: self.accepted[key] for key in send_keys if key in self.accepted}

    def close(self) -> None:
        self.closed = True
