"""E-mail service providers behind one small protocol; httpx lives only in this package.

Each provider module turns :class:`~recocamp.domain.OutgoingEmail` values into its API's
requests and its answers back into :class:`~recocamp.domain.SendResult` values, one per
message. Failures of a whole request become the exceptions of ``recocamp.errors``
(``TransientDeliveryError``, ``PermanentDeliveryError``, ``BatchTooLargeError``); nothing
above this package sees an httpx type.

``lookup`` answers "did you already accept these send keys?" after a crash or an ambiguous
failure (read timeout, dropped connection). Postmark (and the fake ESP, which speaks its
contract) search by metadata; Brevo needs no lookup because its idempotency key makes a
resend harmless; SendGrid and Mailpit cannot answer, so a message whose fate is unknown is
resent there (at-least-once, documented in the README).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

from recocamp.domain import OutgoingEmail, SendResult
from recocamp.errors import ConfigError, Problem
from recocamp.settings import Settings


class Provider(Protocol):
    name: str
    batch_limit: int  # messages per request
    resend_is_safe: bool  # the provider deduplicates resends itself (idempotency keys)

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        """Send up to ``batch_limit`` messages; one result per message, in order."""
        ...

    def lookup(self, send_keys: Sequence[str]) -> dict[str, str] | None:
        """Provider message ids of the keys it already accepted; None if it cannot tell."""
        ...

    def close(self) -> None: ...


TOKENLESS = ("fake", "mailpit")  # the providers that send without a token


def check_provider(settings: Settings) -> None:
    """ConfigError if the provider ``[esp] provider`` names needs a token and the environment
    has none, or (every provider but the in-process fake) the signing key is not set:
    checked when a provider is made, and by the worker when it starts, so a worker that
    could never deliver refuses to start rather than fail its deliver job forever."""
    provider = settings.esp.provider
    token = settings.esp_token.get_secret_value() if settings.esp_token else ""
    if provider == "mailpit":  # optional, but then HTTP Basic's user:password
        from recocamp.delivery.esp.mailpit import basic_auth

        basic_auth(token)
    if provider not in TOKENLESS and not token:
        raise ConfigError(
            Path("settings.toml"),
            [
                Problem(
                    f"the {provider} provider needs a token: set RECOCAMP_ESP_TOKEN",
                    key="esp_token",
                )
            ],
        )
    if provider != "fake" and settings.signing_key_bytes() is None:
        # the send key reaches the provider as its digest under the key (tokens.provider_key):
        # unkeyed, a guessed customer id could be tested against it, and an e-mail taken
        # under the key before would be neither found (Postmark) nor deduplicated (Brevo)
        raise ConfigError(
            Path("settings.toml"),
            [
                Problem(
                    f"the {provider} provider needs RECOCAMP_SIGNING_KEY: each e-mail is "
                    "named to it by a digest keyed with it (and the mail queued was signed "
                    "with it). Nothing was sent",
                    key="signing_key",
                )
            ],
        )


def make_provider(settings: Settings, transport: Any = None) -> Provider:
    """The provider ``[esp] provider`` names, configured from settings and the environment.

    ``transport`` is an ``httpx.BaseTransport`` for tests (``httpx.MockTransport``).
    """
    esp = settings.esp
    if esp.provider == "fake":
        from recocamp.delivery.esp.fake import FakeProvider

        return FakeProvider(esp.batch_size)
    check_provider(settings)
    token = settings.esp_token.get_secret_value() if settings.esp_token else ""
    common = {
        "base_url": str(esp.base_url).rstrip("/"),
        "token": token,
        "from_email": esp.from_email,
        "timeout_s": esp.timeout_s,
        "transport": transport,
    }
    if esp.provider == "brevo":  # an e-mail queued before a rotation: its links' key
        from recocamp.delivery.esp.brevo import Brevo

        return Brevo(
            key=settings.signing_key_bytes(), retired=settings.retired_signing_keys(), **common
        )
    if esp.provider == "postmark":
        from recocamp.delivery.esp.postmark import Postmark

        return Postmark(
            message_stream=esp.message_stream,
            key=settings.signing_key_bytes(),
            retired=settings.retired_signing_keys(),
            **common,
        )
    module = import_module(f"recocamp.delivery.esp.{esp.provider}")
    cls = {"sendgrid": "SendGrid", "brevo": "Brevo", "mailpit": "Mailpit"}[esp.provider]
    # the signing key: the send key (which names a customer) reaches the provider digested
    provider: Provider = getattr(module, cls)(key=settings.signing_key_bytes(), **common)
    return provider
