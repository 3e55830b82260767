"""Signed link tokens: bound to customer, campaign and purpose; tampering and reuse fail."""

from __future__ import annotations

import base64
import json
import string
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
    verify_any,
)
from tests.token_forms import decodings, opened, v1_token

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


def test_every_byte_of_a_token_is_bound_and_anything_else_is_refused() -> None:
    """Each character of a token changed to another (the nonce, the sealed claims, the tag or
    the version), a token cut or lengthened, or one that is no token: not valid."""
    token = sign(KEY, "12748", "winback", "unsubscribe", NOW, mailbox="m" * 16)
    assert verify(KEY, token, "unsubscribe", NOW).customer_id == "12748"
    alphabet = string.ascii_letters + string.digits + "-_"
    for at, char in enumerate(token):
        for other in (alphabet[(alphabet.index(char) + 1) % 64], "v", "."):
            if other != char:
                with pytest.raises(TokenError):
                    verify(KEY, token[:at] + other + token[at + 1 :], "unsubscribe", NOW)
    for bad in (token[:-1], token[:-4], token + "A", token + "AAAA", "2", "", "garbage", "2" * 40):
        with pytest.raises(TokenError):
            verify(KEY, bad, "unsubscribe", NOW)


def test_a_token_is_valid_in_the_one_spelling_it_was_signed_in() -> None:
    """A lenient decoder reads the same bytes from a token with padding, characters outside
    base64url or a last character's spare bits changed: only the spelling signed is valid.
    Ids of 1 to 3 characters give tokens with 4, 2 and no spare bits."""
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    spare = set()
    for customer in ("1", "12", "123"):
        token = sign(KEY, customer, "winback", "unsubscribe", NOW)
        spare.add(len(token[1:]) % 4)
        respelt = [token + "=", token + "==", token[:1] + "<b>" + token[1:], " " + token]
        if len(token[1:]) % 4:  # the last character's lowest bit is a spare one
            respelt.append(token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1])
        for text in respelt:
            with pytest.raises(TokenError, match="malformed"):
                verify(KEY, text, "unsubscribe", NOW)
    assert spare == {0, 2, 3}


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
        lambda t: t + ".x",
        lambda t: "2" + t[3:],
    ],
)
def test_tampered_tokens_of_the_first_format_are_rejected(mutate: Callable[[str], str]) -> None:
    token = v1_token(KEY, {"c": "12748", "k": "winback", "p": "unsubscribe", "i": 1717200000})
    assert verify(KEY, token, "unsubscribe", NOW).customer_id == "12748"
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


def test_a_link_mailed_before_tokens_were_encrypted_still_verifies_under_each_key() -> None:
    """Links already in inboxes carry tokens of the first form (``v1``: compact JSON claims,
    readable, and their HMAC-SHA256 under the key, both URL-safe base64, made here by hand):
    they keep every claim and every check, under the signing key and a retired one alike."""
    claims: dict[str, object] = {"c": "12748", "k": "winback", "p": "unsubscribe", "i": 1717200000}
    other = b"o" * 32
    for key in (KEY, other, KEY):
        found = verify(key, v1_token(key, claims), "unsubscribe", NOW)
        assert found == Claims("12748", "winback", "unsubscribe", NOW)
    old = v1_token(other, claims)
    found, position = verify_any((KEY, other), old, "unsubscribe", NOW)
    assert (found, position) == (verify(other, old, "unsubscribe", NOW), 1)
    with pytest.raises(TokenError, match="invalid signature"):
        verify(KEY, old, "unsubscribe", NOW)
    tagged = {"c": "Jörg", "k": "winback", "p": "feedback", "i": 1717200000}
    tagged |= {"m": "t" * 16, "s": "s/1"}
    assert verify(KEY, v1_token(KEY, tagged), "feedback", NOW) == Claims(
        "Jörg", "winback", "feedback", NOW, "s/1", "t" * 16
    )
    with pytest.raises(TokenError, match="another purpose"):
        verify(KEY, v1_token(KEY, tagged), "preferences", NOW)
    with pytest.raises(TokenError, match="future"):
        verify(KEY, v1_token(KEY, claims), "unsubscribe", NOW - timedelta(minutes=6))


@pytest.mark.parametrize(
    "customer", ["shop-customer-0000012748", "kunde.10042@example.test", "Jörg Müller-Lüdenscheidt"]
)
def test_a_token_does_not_carry_the_customer_id_in_any_encoding(customer: str) -> None:
    """Whoever sees a link (the ESP's click tracking, the mailbox, whom it is forwarded to)
    must not read the shop's id of the customer from it: not as it is, not in base64 at any
    offset, not JSON-escaped; nor the campaign, survey or mailbox tag it names."""
    forms = {customer, json.dumps(customer)[1:-1], customer.lower()}
    secrets = [f.encode() for f in forms] + [b"winback_spring", b"winback_spring/2024-06-01"]
    secrets.append(b"tagtagtagtagtagt")
    for purpose, survey, mailbox in (
        ("unsubscribe", None, None),
        ("preferences", None, "tagtagtagtagtagt"),
        ("feedback", "winback_spring/2024-06-01", None),
    ):
        token = sign(KEY, customer, "winback_spring", purpose, NOW, survey, mailbox)
        assert verify(KEY, token, purpose, NOW).customer_id == customer
        readable = [token.encode(), *decodings(token)]
        for secret in secrets:
            assert not any(secret in text for text in readable), (secret, token)
    assert sign(KEY, customer, "winback_spring", "unsubscribe", NOW) != sign(
        KEY, customer, "winback_spring", "unsubscribe", NOW
    )  # a fresh nonce: two links of one customer are not the same string


def test_a_retired_keys_token_is_recognised_as_retired_in_either_format() -> None:
    """``verify_any`` says which key a token was signed under: 0 the signing key, more a
    retired one (whose preferences links the pages refuse)."""
    new, old = b"n" * 32, b"o" * 32
    claims: dict[str, object] = {"c": "c1", "k": "winback", "p": "preferences", "i": 1717200000}
    for token, position in (
        (sign(new, "c1", "winback", "preferences", NOW), 0),
        (sign(old, "c1", "winback", "preferences", NOW), 1),
        (v1_token(new, claims), 0),
        (v1_token(old, claims), 1),
    ):
        found, at = verify_any((new, b"x" * 32, old), token, "preferences", NOW)
        assert (found.customer_id, at) == ("c1", 2 if position else 0)
        with pytest.raises(TokenError, match="invalid signature"):
            verify_any((b"x" * 32,), token, "preferences", NOW)


@pytest.mark.parametrize(
    "text", ["12748", "", "a b~!", 'say "hi"', "back\\slash", "\x7f", "tab\t", "Jörg", "\u2028"]
)
def test_claims_are_the_json_encoders_bytes_for_any_string(text: str) -> None:
    """Plain strings are joined into the claims without the encoder: the bytes sealed must be
    the encoder's for every string, plain or not, in every field; and signing under two keys
    in turn must not mix their ciphers."""
    tag = mailbox_tag(KEY, "anna@example.test")
    other = b"o" * 32
    for survey, mailbox in ((None, None), ("s/1", None), (text, None), (None, tag), (text, tag)):
        for customer, campaign in ((text, "winback"), ("12748", text)):
            claims: dict[str, object] = {"c": customer, "k": campaign, "p": "feedback"}
            claims["i"] = 1717200000
            if mailbox is not None:
                claims["m"] = mailbox
            if survey is not None:
                claims["s"] = survey
            expected = json.dumps(claims, separators=(",", ":")).encode()
            for key in (KEY, other, KEY):
                token = sign(key, customer, campaign, "feedback", NOW, survey, mailbox)
                assert opened(key, token) == expected
                if not readable(customer, campaign, survey):
                    with pytest.raises(TokenError, match="malformed token"):
                        verify(key, token, "feedback", NOW)
                    continue
                found = verify(key, token, "feedback", NOW)
                assert (found.customer_id, found.mailbox) == (customer, mailbox)


def readable(customer: str, campaign: str, survey: str | None) -> bool:
    """Whether ``verify`` reads these claims: a campaign or survey holding a character that is
    not printable, or a customer holding a C0 control or DEL (no id ever did), is no claim
    ``sign`` writes for a real e-mail, and it would reach a log line (a line break forges the
    next line): the token is malformed."""
    control = any(ord(c) < 32 or c == "\x7f" for c in customer)
    return not control and campaign.isprintable() and (survey or "").isprintable()


def test_tokens_stay_url_safe_and_short() -> None:
    """A token is one URL path segment and fits a List-Unsubscribe header: base64url after
    its version character, no longer than the first format's (the 16-byte tag and 12-byte
    nonce replace a 32-byte HMAC)."""
    for customer in ("12748", "c" * 64):
        claims: dict[str, object] = {"c": customer, "k": "winback", "p": "unsubscribe"}
        claims["i"] = 1717200000
        token = sign(KEY, customer, "winback", "unsubscribe", NOW)
        base64url = set(string.ascii_letters + string.digits + "-_")
        assert token[0] == "2" and set(token[1:]) <= base64url
        assert len(token) <= len(v1_token(KEY, claims))


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
