"""The httpx edge shared by the providers: one client, errors mapped to recocamp's tree.

Mapping (DESIGN.md §Conventions 1):

- connection refused / connect timeout / a proxy refusing the tunnel →
  ``TransientDeliveryError`` (nothing was sent);
- read timeout, dropped connection, 502/504 from a proxy → ``TransientDeliveryError`` with
  ``ambiguous=True`` (the provider may have accepted the request);
- 429 and other 5xx → ``TransientDeliveryError`` with the provider's wait hint
  (``Retry-After`` in seconds or as an HTTP date, else a rate-limit reset header);
- 413 → ``BatchTooLargeError``; 401/403 → ``DeliveryError`` (the credentials are wrong:
  no retry helps, the run stops with a message naming ``RECOCAMP_ESP_TOKEN``);
- 3xx → ``DeliveryError`` naming ``[esp] base_url``: redirects are not followed (the token
  would travel with them), and a redirect is no answer of the API: nothing was sent, the
  claims go back (SendGrid and Brevo had failed every message of the run over it);
- 404/405 → ``DeliveryError`` naming ``[esp] base_url``: the address has no such endpoint
  (a path typed wrong, another provider's address). That is about the request, never about
  one message: each provider had failed every message of the run permanently over it;
- a 4xx whose body is not a JSON object (``error_body``: a proxy's HTML page) → the same
  ``DeliveryError`` (Postmark, SendGrid, Brevo: their errors are JSON objects);
- other 4xx are returned to the provider module, which knows its error bodies;
- an answer whose body does not end within ``timeout_s`` of the request, or grows past
  ``MAX_ANSWER_BYTES`` → ``TransientDeliveryError`` with ``ambiguous=True``: httpx's timeout
  bounds each read, not the whole answer, so a body trickling a byte per read (a broken
  proxy) held the deliverer, and its claims, for as long as it lasted.
"""

from __future__ import annotations

import math
import time
from datetime import UTC
from email.utils import parsedate_to_datetime
from time import monotonic  # (tests freeze ``time.time`` through the module)
from typing import Any

import httpx
import orjson

from recocamp.domain import SEND_KEY_HEADER, OutgoingEmail
from recocamp.errors import BatchTooLargeError, DeliveryError, TransientDeliveryError

RATE_RESET_HEADERS = ("x-ratelimit-reset", "ratelimit-reset", "x-sib-ratelimit-reset")
# failures before the request left: a proxy's refused tunnel (CONNECT answered 407 or 5xx,
# a SOCKS refusal) too, which was taken for a lost answer (SendGrid, which cannot be asked,
# then spent an attempt of every message on it: a proxy down for a while failed the mail)
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.ProxyError)
# the largest answer read: Postmark's to a batch of 500 is about 100 KB, every other a few
MAX_ANSWER_BYTES = 8 * 1024 * 1024
# headers that describe the body as it came over the wire, not as it was read (decoded)
_WIRE_HEADERS = (b"content-encoding", b"content-length", b"transfer-encoding")


def make_client(
    base_url: str,
    headers: dict[str, str],
    timeout_s: float,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Client:
    return httpx.Client(
        base_url=base_url,
        headers={"Accept": "application/json", "User-Agent": "recocamp", **headers},
        timeout=httpx.Timeout(timeout_s),
        transport=transport,
    )


def request(
    client: httpx.Client, provider: str, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    """Send one request; raise the mapped error or return a 2xx or a 4xx response.
    A ``json=`` body is encoded with orjson: a batch of 500 rendered e-mails (2 MB) costs
    httpx's ``json.dumps`` 21 ms and orjson 8 ms, per batch, on the sending core."""
    if "json" in kwargs:
        kwargs["content"] = orjson.dumps(kwargs.pop("json"))
        kwargs["headers"] = {**kwargs.get("headers", {}), "Content-Type": "application/json"}
    limit = client.timeout.read  # make_client's timeout_s
    deadline = monotonic() + (math.inf if limit is None else limit)
    try:
        streamed = client.send(client.build_request(method, url, **kwargs), stream=True)
        try:
            _raise_for_status(provider, streamed)  # these need no body: a 429's wait stays
            return _read_bounded(provider, streamed, deadline)
        finally:
            streamed.close()
    except NOT_SENT as exc:
        raise TransientDeliveryError(f"{provider}: cannot connect ({type(exc).__name__})") from None
    except (httpx.TransportError, httpx.DecodingError) as exc:  # a body cut off or undecodable
        raise TransientDeliveryError(
            f"{provider}: no answer ({type(exc).__name__})", ambiguous=True
        ) from None


def _read_bounded(provider: str, streamed: httpx.Response, deadline: float) -> httpx.Response:
    """The answer with its body read whole, if it ends by ``deadline`` (monotonic) and
    within ``MAX_ANSWER_BYTES`` once decoded; else an ambiguous failure (the status line
    came: the provider may have taken the request)."""
    chunks, size = [], 0
    for chunk in streamed.iter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise TransientDeliveryError(
                f"{provider}: HTTP {streamed.status_code} answer larger than "
                f"{MAX_ANSWER_BYTES:,} bytes",
                ambiguous=True,
            )
        if monotonic() > deadline:
            raise TransientDeliveryError(
                f"{provider}: HTTP {streamed.status_code} answer did not end in time",
                ambiguous=True,
            )
        chunks.append(chunk)
    headers = [(k, v) for k, v in streamed.headers.raw if k.lower() not in _WIRE_HEADERS]
    return httpx.Response(
        streamed.status_code,
        headers=headers,
        content=b"".join(chunks),
        request=streamed.request,
        extensions=streamed.extensions,
    )


def _raise_for_status(provider: str, response: httpx.Response) -> None:
    status = response.status_code
    if status == 429 or status >= 500:
        raise TransientDeliveryError(
            f"{provider}: HTTP {status}",
            retry_after=retry_after(response.headers),
            ambiguous=status in (502, 504),
            status=status,
        )
    if status == 413:
        raise BatchTooLargeError(f"{provider}: HTTP 413, the request is too large")
    if status in (401, 403):
        raise DeliveryError(
            f"{provider}: HTTP {status}, the credentials were refused: check RECOCAMP_ESP_TOKEN"
        )
    if status in (404, 405):
        raise DeliveryError(
            f"{provider}: HTTP {status}, the address has no such endpoint; check [esp] base_url"
        )
    if 300 <= status < 400:
        raise DeliveryError(
            f"{provider}: HTTP {status}, a redirect (not followed: the token would go with it); "
            "no provider API redirects: check [esp] base_url"
        )


def text_field(body: Any, key: str) -> str:
    """``body[key]`` when ``body`` is a JSON object and that is text, else "": a provider's
    message id read from an answer that may be a proxy's page (``str(None)`` was "None", an
    id that matched nothing)."""
    found = body.get(key) if isinstance(body, dict) else None
    return found if isinstance(found, str) else ""


def retry_after(headers: httpx.Headers, now: float | None = None) -> float | None:
    """Seconds to wait as the provider asks: Retry-After, else a rate-limit reset header."""
    now = time.time() if now is None else now
    value = headers.get("retry-after")
    if value is not None:
        return _seconds_or_date(value.strip(), now)
    for name in RATE_RESET_HEADERS:
        reset = headers.get(name)
        if reset is not None:
            try:
                number = float(reset)
            except ValueError:
                continue
            if not math.isfinite(number):
                continue
            return max(0.0, number - now) if number > 1e9 else max(0.0, number)  # epoch or delta
    return None


def _seconds_or_date(value: str, now: float) -> float | None:
    """RFC 9110: delay-seconds (ASCII digits; a number too long to be finite is no wait)
    or an HTTP date, which is GMT also in the obsolete asctime form that names no zone
    (read naive, it would be taken in the machine's local zone)."""
    if value.isascii() and value.isdigit():  # delay-seconds = 1*DIGIT
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


def without_id(provider: str, status: int, name: str, resend: str = "") -> TransientDeliveryError:
    """A 2xx that lacks the message id the provider always gives (``name``): another
    server's answer (a proxy's page), which may or may not have passed the mail on. It is
    ambiguous, so the message is tried again (``resend``: why that sends it once), not
    recorded sent: a mail the provider never had was lost."""
    return TransientDeliveryError(
        f"{provider}: HTTP {status} without {name} (another server's answer?){resend}",
        ambiguous=True,
        status=status,
    )


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def error_body(provider: str, response: httpx.Response) -> dict[str, Any]:
    """The JSON object of a provider's 4xx error answer (Postmark, SendGrid and Brevo answer
    every error so). A 4xx without one (a proxy's or a firewall's HTML page: "400 Bad
    Request, nginx") is not the API's word about the messages: ``DeliveryError``, whose
    claims go back and which stops the run, as for a 404. It failed each message for good."""
    body = json_body(response)
    if not isinstance(body, dict):
        raise DeliveryError(
            f"{provider}: HTTP {response.status_code} without the provider's JSON error "
            "(another server's page: a proxy?); check [esp] base_url and the proxy settings"
        )
    return body


_OURS = ("sender", "from", "reply")  # our own addresses' fields in the providers' words


def about_recipient(message: str) -> bool:
    """Whether a provider's 400 text blames the recipient's address ("email is not valid in
    to"), which suppresses the address for good; one about our sender, From or Reply-To
    ("valid sender email required") blames us, and must not suppress every customer of a
    run over a typo in ``from_email``."""
    text = message.lower()
    return "email" in text and not any(word in text for word in _OURS)


def headers_of(message: OutgoingEmail, reference: str) -> list[tuple[str, str]]:
    """The message's headers as they leave the shop: ``X-Recocamp-Send-Key`` holds
    ``reference`` (``tokens.provider_key`` of the send key), in its place, not the send key
    that ``compose`` (and an e-mail queued by an older version) put there. The send key names
    the shop's customer id, which the provider, the recipient's mailbox and anyone the mail
    is forwarded to kept; the digest counts duplicates as well."""
    named = SEND_KEY_HEADER.lower()
    return [
        (name, reference if name.lower() == named else value) for name, value in message.headers
    ]
