"""Addresses are matched by privacy requests in any case of any letter, on both backends:
SQLite's built-in ``lower()`` folds ASCII only, so the store also asks for each form with its
other letters in either case (``store.privacy.cased_forms``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from recocamp.store.privacy import CASED_LETTERS, Subject, Ties, cased_forms, sharers
from recocamp.store.schema import customers

NOW = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
CUSTOMERS = Ties(customers, (customers.c.id,), (customers.c.email,))


@pytest.mark.parametrize(
    "stored",
    [
        "J\u00dcRGEN.Family@example.test",  # Ü: not ASCII
        "ju\u0308rgen.family@EXAMPLE.TEST",  # decomposed ü, capital domain
        "\u00c5SA@example.test",  # Å
    ],
)
def test_an_account_holding_the_address_in_capitals_shares_it(
    engine: sa.Engine, stored: str
) -> None:
    asked = stored.lower()
    with engine.begin() as connection:
        connection.execute(
            sa.insert(customers),
            [
                {"id": "bob", "email": stored, "updated_at": NOW},
                {"id": "eve", "email": "someone.else@example.test", "updated_at": NOW},
            ],
        )
        assert sharers(connection, [CUSTOMERS], Subject.of("ann", asked)) == {"bob"}
        assert sharers(connection, [CUSTOMERS], Subject.of("ann", "juergen@x.test")) == set()


def test_the_forms_asked_for_cover_every_case_of_six_letters_and_no_more() -> None:
    assert cased_forms(("ß@x.test",)) == ("ß@x.test",)  # its capital is SS: one form
    assert set(cased_forms(("éa@x.test",))) == {"éa@x.test", "Éa@x.test"}
    assert len(cased_forms(("åäöüéèàç@x.test",))) == 2**CASED_LETTERS
