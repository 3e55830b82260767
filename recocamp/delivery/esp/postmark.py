"""Postmark: ``POST /email/batch`` (≤ 500 messages), search by metadata for reconciliation.

The metadata (and the ``X-Recocamp-Send-Key`` header) names each message by a keyed digest
of its send key (``tokens.provider_key``), not the send key: that holds the customer id,
which Postmark has no use for, and may be longer than the 80 characters Postmark allows a
metadata value.

Per-message answers carry an ``ErrorCode``: 0 accepted (``MessageID``), 406 inactive
recipient (bounced, complained or unsubscribed at Postmark) and 300 invalid request about
the 'To' address (a malformed address) are permanent for that recipient; a 300 about
anything else (our From, an empty body, a field over its limit) fails the message without
blaming the recipient (a typo in ``from_email`` must not suppress every customer); 429 and
anything else are retried. A batch answered 429 for every message is the account's rate
limit, as an HTTP 429 is (``TransientDeliveryError``): it holds every batch and costs no
attempt; taken for each message's error it spent their attempts and paused the campaign.
An answer of the wrong length, or with an entry that is not of that shape, is ambiguous:
the batch is looked up before anything is sent again; so is a 500 ("In most cases the
message is lost", Postmark's API overview: in some it was sent).
A 422 for the whole request is permanent for the whole batch, unless its ``ErrorCode`` is
about the account, not the messages (Postmark, "API error codes": 405 not allowed to send,
the credits ran out; 412 account pending; 413 account may not send): nothing was sent, the
claims go back and the run stops, as for refused credentials (every message of the run had
failed for good over an empty credit balance); 410 (too many messages in the batch) splits
it, as a 413 does; 100 (maintenance) is retried. Codes about our settings, the same for
every message (``SETTINGS_CODES``: 400/401, ``from_email`` is no confirmed sender signature;
1235/1236, ``message_stream`` does not exist or cannot send) stop the run with the claims
given back, for the whole request and when every message of a batch is answered so: each
message was retried ``max_attempts`` times and then failed, and the run paused over them.
The search names the message stream we send on: without ``messagestream`` Postmark searches
only its default ``outbound`` stream, and a broadcast message would look unsent (and be sent
again). The fake ESP answers as Postmark does, so pointing this provider at it is how the
demo and the tests send.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from email.utils import parseaddr
from typing import Any

import httpx

from recocamp.delivery.esp.http import error_body, headers_of, json_body, make_client, request
from recocamp.domain import OutgoingEmail, SendResult, SendStatus
from recocamp.errors import (
    BatchTooLargeError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    mask_addresses,
)
from recocamp.tokens import provider_key

INVALID_REQUEST = 300
PERMANENT_CODES = frozenset({INVALID_REQUEST, 406})
MAINTENANCE = 100
RATE_LIMITED = 429  # "Rate Limit Exceeded"
SERVER_ERROR = 500  # "in most cases the message is lost": in some it went out
TOO_MANY_BATCH_MESSAGES = 410
ACCOUNT_CODES = frozenset({405, 412, 413})  # not allowed to send, pending, may not send
# codes about our settings, the same for every message (Postmark, "API error codes"; the
# stream codes as its Email API answers them): no message can go out until they are fixed
SETTINGS_CODES = {
    400: "[esp] from_email: Postmark has no sender signature for it",
    401: "[esp] from_email: its sender signature is not confirmed",
    1235: "[esp] message_stream: no such stream on the Postmark server",
    1236: "[esp] message_stream: that stream cannot send",
}
LOOKUP_THREADS = 8  # searches at once, each on its own pooled connection
SPECIALS = re.compile(r'[][\\()<>@,:;".]')  # RFC 5322 §3.2.3 specials: quoted in a name
ESCAPED = re.compile(r'[\\"]')  # escaped inside a quoted-string


class Postmark:
    name = "postmark"
    batch_limit = 500
    resend_is_safe = False

    def __init__(
        self,
        base_url: str,
        token: str,
        from_email: str,
        timeout_s: float = 10.0,
        message_stream: str = "broadcast",
        transport: httpx.BaseTransport | None = None,
        key: bytes | None = None,
        retired: tuple[bytes, ...] = (),
    ) -> None:
        self.client = make_client(
            base_url, {"X-Postmark-Server-Token": token}, timeout_s, transport
        )
        self.from_email = sender(from_email)
        self.message_stream = message_stream
        self.key = key  # the signing key: what the send keys become at Postmark (``_ref``)
        self.retired = retired  # earlier signing keys: an e-mail claimed before a rotation

    def _ref(self, send_key: str) -> str:
        """The send key as Postmark stores and searches it: ``tokens.provider_key``."""
        return provider_key(self.key, send_key)

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        payload = [self._message(m) for m in messages]
        try:
            response = request(self.client, self.name, "POST", "/email/batch", json=payload)
        except TransientDeliveryError as exc:
            raise _maybe_taken(exc) from None
        if response.status_code >= 400:
            raise _refusal(response.status_code, error_body(self.name, response))
        body = json_body(response)
        if not isinstance(body, list) or len(body) != len(messages):
            raise TransientDeliveryError("postmark: unexpected batch answer", ambiguous=True)
        if not all(_postmarks(answer) for answer in body):  # ours to read, or looked up
            raise TransientDeliveryError(
                "postmark: unexpected entry in the batch answer", ambiguous=True
            )
        codes = {answer["ErrorCode"] for answer in body}
        if codes == {RATE_LIMITED}:  # the account's rate limit, as an HTTP 429 says it
            raise TransientDeliveryError(
                "postmark: ErrorCode 429 for every message of the batch (rate limit)",
                status=RATE_LIMITED,
            )
        wrong = sorted(codes & SETTINGS_CODES.keys())
        if wrong and 0 not in codes:  # none went out: give the claims back, stop the run
            raise DeliveryError(f"postmark: ErrorCode {wrong[0]}: {SETTINGS_CODES[wrong[0]]}")
        return [_result(m.send_key, answer) for m, answer in zip(messages, body, strict=True)]

    def _message(self, message: OutgoingEmail) -> dict[str, Any]:
        ref = self._ref(message.send_key)
        return {
            "From": self.from_email,
            "To": message.to,
            "Subject": message.subject,
            "HtmlBody": message.html,
            "TextBody": message.text,
            "Headers": [{"Name": name, "Value": value} for name, value in headers_of(message, ref)],
            "Metadata": {"send_key": ref, "campaign": message.campaign},
            "Tag": message.campaign,
            "MessageStream": self.message_stream,
        }

    def lookup(self, send_keys: Sequence[str]) -> dict[str, str] | None:
        """The send keys Postmark accepted, with their MessageIDs: one search per key (the
        search filters by one metadata value), ``LOOKUP_THREADS`` at a time. After a timeout
        a batch of 500 was looked up key after key: at a search's ~0.2 s that held the
        deliverer for minutes, while the outage that timed it out went on. The first error
        (in key order) is raised, the searches not yet started are dropped."""
        keys = list(send_keys)
        if len(keys) <= 1:
            answers = [self._search(key) for key in keys]
        else:
            pool = ThreadPoolExecutor(min(LOOKUP_THREADS, len(keys)), "postmark-search")
            try:
                answers = list(pool.map(self._search, keys))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return {
            key: message_id for key, message_id in zip(keys, answers, strict=True) if message_id
        }

    def _search(self, key: str) -> str:
        """The MessageID of the message sent with ``key``, "" when Postmark lists none:
        searched by its digest under the signing key, then under each retired one (an
        e-mail claimed before the key was rotated went out under the key of then)."""
        for ref in (self._ref(key), *(provider_key(old, key) for old in self.retired)):
            message_id = self._search_ref(ref)
            if message_id:
                return message_id
        return ""

    def _search_ref(self, ref: str) -> str:
        params = {
            "count": 1,
            "offset": 0,
            "metadata_send_key": ref,
            "messagestream": self.message_stream,
        }
        response = request(self.client, self.name, "GET", "/messages/outbound", params=params)
        if response.status_code >= 400:  # unknown is not "not sent": never guess here
            raise DeliveryError(f"postmark: search failed with HTTP {response.status_code}")
        message_id = _found(json_body(response))
        if message_id is None:  # a proxy's page, a redirect: not an answer "none sent"
            raise DeliveryError(
                f"postmark: search answered HTTP {response.status_code} without "
                "Postmark's list of Messages"
            )
        return message_id

    def close(self) -> None:
        self.client.close()


def sender(from_email: str) -> str:
    """``[esp] from_email`` as Postmark's From, its name quoted when it holds a special of
    RFC 5322 (the settings let only "." through, as in "Shop Inc."): a phrase with an
    unquoted "." is obsolete syntax, which RFC 5322 §3.2.5 forbids generating (Python's
    parser reports "period in 'phrase'"), and Postmark asks for names with punctuation to
    be quoted, else it often refuses the address ("What does Error Code 300 mean"). Any
    other From is sent as written."""
    name, address = parseaddr(from_email)
    if not name or not SPECIALS.search(name):
        return from_email
    quoted = ESCAPED.sub(r"\\\g<0>", name)  # a backslash or a quote, escaped
    return f'"{quoted}" <{address}>'


def _maybe_taken(exc: TransientDeliveryError) -> TransientDeliveryError:
    """A 500 made ambiguous: Postmark documents it as "an issue with Postmark's servers
    processing your request. In most cases the message is lost" — not in all: part of a
    batch may have gone out, and sending it all again sent those twice. Looked up first."""
    if exc.status != SERVER_ERROR or exc.ambiguous:
        return exc
    return TransientDeliveryError(
        f"{exc} (Postmark may have sent part of the batch: looked up)",
        retry_after=exc.retry_after,
        ambiguous=True,
        status=exc.status,
    )


def _refusal(status: int, body: dict[str, Any]) -> DeliveryError:
    """The error of a 4xx for the whole request, by Postmark's ``ErrorCode`` (see the module
    docstring): about the account, the batch's size, maintenance, else the messages."""
    code = body.get("ErrorCode")
    detail = mask_addresses(str(body.get("Message", ""))[:500])
    said = f"postmark: HTTP {status}, ErrorCode {code}: {detail}"
    if code in ACCOUNT_CODES:
        return DeliveryError(f"{said} (the account may not send now: nothing was sent)")
    if code in SETTINGS_CODES:
        return DeliveryError(f"{said} ({SETTINGS_CODES[code]}: nothing was sent)")
    if code == TOO_MANY_BATCH_MESSAGES:
        return BatchTooLargeError(said)
    if code == MAINTENANCE:
        return TransientDeliveryError(said)
    return PermanentDeliveryError(f"postmark: HTTP {status}: {detail}")


def _found(body: Any) -> str | None:
    """The MessageID of the first message a search answer lists, "" when it lists none, and
    None when the answer is not a search answer at all (no ``Messages`` list, a listed
    message without its id): only Postmark's own "none" may send a message again."""
    messages = body.get("Messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return None
    if not messages:
        return ""
    first = messages[0]
    message_id = first.get("MessageID") if isinstance(first, dict) else None
    return message_id if isinstance(message_id, str) and message_id else None


def _postmarks(answer: Any) -> bool:
    """Whether one entry of a batch answer has Postmark's shape: an integer ``ErrorCode``,
    and a ``MessageID`` when it is 0. Another entry (a string, a code ``"zero"``, an
    acceptance without its id) says nothing sure about its message: it was queued again
    unasked (code -1, sent twice if it had gone out) or stopped the drain (ValueError,
    KeyError)."""
    if not isinstance(answer, dict):
        return False
    code = answer.get("ErrorCode")
    if not isinstance(code, int) or isinstance(code, bool):
        return False
    message_id = answer.get("MessageID")
    return code != 0 or (isinstance(message_id, str) and message_id != "")


def _result(send_key: str, answer: dict[str, Any]) -> SendResult:
    code = answer["ErrorCode"]
    if code == 0:
        return SendResult(send_key, SendStatus.ACCEPTED, message_id=answer["MessageID"])
    said = str(answer.get("Message", ""))
    error = f"postmark {code}: {said}"
    if (code == INVALID_REQUEST and "'To'" not in said) or code in SETTINGS_CODES:
        return SendResult(send_key, SendStatus.FAILED, error=error[:500])
    status = SendStatus.REJECTED if code in PERMANENT_CODES else SendStatus.RETRY
    return SendResult(send_key, status, error=error[:500])
