"""Signed link tokens: bound to customer, campaign and purpose; tampering and reuse fail."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from recocamp.tokens import (
    Claims,
    TokenError,
    email_hashes,
    id_hashes,
    keyed_hash,
    mailbox_tag,
    sign,
    verify,
)

KEY = b"k" * 32
NOW = datetime(2024, 6, 1, tzinfo=UTC)


def test_round_trip_binds_customer_campaign_and_purpose() -> None:
    token = sign(KEY, "12748", "winback", "unsubscribe", NOW)
    claims = verify(KEY, token, "unsubscribe", NOW + timedelta(days=3))
    assert (claims.customer_id, claims.campaign, claims.purpose) == (
        "12748",
        "winback",
        "unsubscribe",
    )
    assert "12748@" not in token and "example.test" not in token


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature
        lambda t: t.replace(
            t.split(".")[1],
            base64.urlsafe_b64encode(b'{"c":"1","k":"winback","p":"unsubscribe","i":1717200000}')
            .decode()
            .rstrip("="),
        ),
        lambda t: "v2." + t.split(".", 1)[1],
        lambda t: "garbage",
        lambda t: t + ".x",
    ],
)
def test_tampered_tokens_are_rejected(mutate: Callable[[str], str]) -> None:
    token = sign(KEY, "12748", "winback", "unsubscribe", NOW)
    with pytest.raises(TokenError):
        verify(KEY, mutate(token), "unsubscribe", NOW)


def test_wrong_key_purpose_or_age() -> None:
    token = sign(KEY, "12748", "winback", "preferences", NOW)
    with pytest.raises(TokenError, match="invalid signature"):
        verify(b"other" * 8, token, "preferences", NOW)
    with pytest.raises(TokenError, match="another purpose"):
        verify(KEY, token, "unsubscribe", NOW)
    with pytest.raises(TokenError, match="expired"):
        verify(KEY, token, "preferences", NOW + timedelta(days=500))


def test_a_token_from_the_future_is_refused_beyond_the_clocks_skew() -> None:
    """A token issued past now would count as issued after an erasure that came before its
    time; up to the clocks' skew (as for consent times) it is a clock, not a forgery."""
    within = sign(KEY, "1", "winback", "preferences", NOW + timedelta(minutes=5))
    assert verify(KEY, within, "preferences", NOW).issued_at == NOW + timedelta(minutes=5)
    beyond = sign(KEY, "1", "winback", "preferences", NOW + timedelta(minutes=5, seconds=1))
    with pytest.raises(TokenError, match="future"):
        verify(KEY, beyond, "preferences", NOW)


def test_keyed_hashes_need_the_key_and_normalise_addresses_only() -> None:
    key, other = b"k" * 32, b"o" * 32
    assert keyed_hash(key, "email", " Erin@Example.TEST") == keyed_hash(
        key, "email", "erin@example.test"
    )
    assert keyed_hash(key, "customer", "C1") != keyed_hash(key, "customer", "c1")
    assert keyed_hash(key, "customer", "c1") != keyed_hash(other, "customer", "c1")
    assert keyed_hash(key, "customer", "x") != keyed_hash(key, "email", "x")
    assert len(keyed_hash(key, "customer", "10042")) == 64
    composed, decomposed = "J\u00fcrgen@example.test", "Ju\u0308rgen@Example.test"
    assert keyed_hash(key, "email", composed) == keyed_hash(key, "email", decomposed)
    assert keyed_hash(key, "email", composed) in email_hashes(key, decomposed)
    assert len(email_hashes(key, decomposed)) == 2  # composed, decomposed (as given)
    ascii_only = email_hashes(key, " Erin@Example.TEST")
    assert ascii_only == (keyed_hash(key, "email", "erin@example.test"),)


def test_a_token_is_the_same_bytes_as_ever_under_each_key() -> None:
    """Links already in inboxes carry tokens of this exact form: compact JSON claims (ASCII,
    keys in order) and their HMAC-SHA256 under the key, both URL-safe base64. Signing
    under two keys in turn must not mix their HMAC states."""
    payload = b'{"c":"12748","k":"winback","p":"unsubscribe","i":1717200000}'
    other = b"o" * 32
    for key in (KEY, other, KEY):
        mac = hmac.new(key, b"v1." + payload, hashlib.sha256).digest()
        expected = f"v1.{_b64(payload)}.{_b64(mac)}"
        assert sign(key, "12748", "winback", "unsubscribe", NOW) == expected
    accented = sign(KEY, "Jörg", "winback", "feedback", NOW, "s/1")
    assert accented.split(".")[1] == _b64(
        b'{"c":"J\\u00f6rg","k":"winback","p":"feedback","i":1717200000,"s":"s/1"}'
    )


@pytest.mark.parametrize(
    "text", ["12748", "", "a b~!", 'say "hi"', "back\\slash", "\x7f", "tab\t", "Jörg", "\u2028"]
)
def test_claims_are_the_json_encoders_bytes_for_any_string(text: str) -> None:
    """Plain strings are joined into the claims without the encoder: the bytes must be the
    encoder's for every string, plain or not, in every field."""
    tag = mailbox_tag(KEY, "anna@example.test")
    for survey, mailbox in ((None, None), ("s/1", None), (text, None), (None, tag), (text, tag)):
        for customer, campaign in ((text, "winback"), ("12748", text)):
            claims: dict[str, object] = {"c": customer, "k": campaign, "p": "feedback"}
            claims["i"] = 1717200000
            if mailbox is not None:
                claims["m"] = mailbox
            if survey is not None:
                claims["s"] = survey
            token = sign(KEY, customer, campaign, "feedback", NOW, survey, mailbox)
            assert token.split(".")[1] == _b64(json.dumps(claims, separators=(",", ":")).encode())
            found = verify(KEY, token, "feedback", NOW)
            assert (found.customer_id, found.mailbox) == (customer, mailbox)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_token_lives_max_age_days_whole_days_and_not_a_day_more() -> None:
    """400 days by default: a token of day 0 is valid through the last second before day 401."""
    token = sign(KEY, "1", "winback", "unsubscribe", NOW)
    last = NOW + timedelta(days=401) - timedelta(seconds=1)
    assert verify(KEY, token, "unsubscribe", last).issued_at == NOW
    with pytest.raises(TokenError, match="expired"):
        verify(KEY, token, "unsubscribe", NOW + timedelta(days=401))
    assert verify(KEY, token, "unsubscribe", NOW + timedelta(days=30), max_age_days=30)
    with pytest.raises(TokenError, match="expired"):
        verify(KEY, token, "unsubscribe", NOW + timedelta(days=31), max_age_days=30)


def test_verify_returns_every_claim_and_the_survey_only_when_signed() -> None:
    plain = verify(KEY, sign(KEY, "c1", "winback", "feedback", NOW), "feedback", NOW)
    assert plain == Claims("c1", "winback", "feedback", NOW, None)
    survey = sign(KEY, "c1", "nps", "feedback", NOW, "nps/2024-06-01")
    assert verify(KEY, survey, "feedback", NOW) == Claims(
        "c1", "nps", "feedback", NOW, "nps/2024-06-01"
    )


def test_id_hashes_cover_both_unicode_forms_of_an_id_and_ascii_ids_once() -> None:
    assert id_hashes(KEY, "10042") == (keyed_hash(KEY, "customer", "10042"),)
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    expected = (keyed_hash(KEY, "customer", composed), keyed_hash(KEY, "customer", decomposed))
    assert id_hashes(KEY, composed) == expected  # as given (composed), NFD
    assert id_hashes(KEY, decomposed) == (expected[1], expected[0])  # as given, NFC
