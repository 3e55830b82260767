"""Errors cross process boundaries pickled (the delivering processes report theirs to the
caller): each comes back as itself, with its words and its fields."""

from __future__ import annotations

import pickle

import pytest

from recocamp.errors import (
    ConfigError,
    DataImportError,
    OrderConflictError,
    Problem,
    RecocampError,
    SharedAddressError,
    TemplateLimitError,
    TransientDeliveryError,
    mask_addresses,
)

ERRORS = [
    ConfigError("campaigns/a.toml", [Problem("not a number", key="cap.days", value="x")], more=2),
    TemplateLimitError("winback.html", [Problem("more than 100,000 loop iterations", line=3)]),
    DataImportError("orders.csv", [Problem("bad quantity", line=7, column="quantity")]),
    OrderConflictError(["o1", "o2"]),
    SharedAddressError("c-1", ["c-2", "c-3"]),
    TransientDeliveryError("HTTP 429", retry_after=30.0, ambiguous=True),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_an_error_survives_pickling(error: RecocampError) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
    assert vars(again) == vars(error)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            "schedule.cron: '@daily' is not five fields",
            "schedule.cron: '@daily' is not five fields",
        ),
        ("mention @shop or write to us", "mention @shop or write to us"),
        ("customer 'anna@example.test' unknown", "customer '<address>' unknown"),
        ("bob@localhost, x@[10.0.0.1] and o'brien@ex.com", "<address>, <address> and <address>"),
    ],
)
def test_only_addresses_are_masked_not_words_that_begin_with_an_at_sign(
    text: str, masked: str
) -> None:
    """An address has a local part: a cron's ``@daily`` in a `check` error was shown as
    ``<address>``, which told the marketer nothing."""
    assert mask_addresses(text) == masked
