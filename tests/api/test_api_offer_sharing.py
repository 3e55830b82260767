"""A purchase is folded in once: the serving process that re-scores the buyer's history
writes the list to the store (``offer_lists``, off the request path), and another process
(an app on its own engine, as a second ``serve``) reads it instead of re-scoring, for the
same model and the same history only; SQLite and PostgreSQL. Both answer the purchase at
once; a later purchase, a new model, an objection or an erasure is never answered from an
old shared list. Re-scorings are counted (``OfferService.tally``, ``Live.scores`` calls),
never timed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from recocamp import privacy
from recocamp.api.offer_cache import MAX_N
from recocamp.recommender.serving import Live
from recocamp.store import serving as store
from recocamp.store.schema import customers, offer_lists
from tests.api.test_api_offer_changes import buy, pair, two_customers
from tests.api.test_api_offers import OffersJson, ids, offers
from tests.api_shop import (
    NOW,
    bearer,
    call,
    engine_of,
    second_model,
    settings_for,
    wait_until,
)

__all__ = ["pair"]  # the fixture, used by name
# lists that need no padding from the model's whole ranking (which re-scores: see Basis.padded)
QUERIES = ["n=5&mode=discover", "n=5", "n=5&mode=replenish"]


def answers(app: FastAPI, customer: str) -> list[OffersJson]:
    return [offers(app, customer, query) for query in QUERIES]


def shared(engine: sa.Engine, customer: str) -> store.SharedList | None:
    with engine.connect() as connection:
        return store.shared_list(connection, customer)


@pytest.fixture
def scorings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The versions of the models that re-scored a history, call by call."""
    calls: list[str] = []
    original: Callable[..., Any] = Live.scores

    def counted(self: Live, *args: Any) -> Any:
        calls.append(self.version)
        return original(self, *args)

    monkeypatch.setattr(Live, "scores", counted)
    return calls


def warm_and_buy(one: FastAPI, two: FastAPI, buyer: str, order_id: str) -> str:
    """Both processes hold the buyer's answers; the buyer buys through ``one``, which
    answers first (and shares its re-scored list). The item bought."""
    for app in (one, two):
        answers(app, buyer)
    bought = ids(offers(two, buyer, "n=5"))[0]
    buy(one, two, buyer, bought, order_id)
    return bought


def test_the_other_process_serves_the_takers_fold_in_without_rescoring(
    pair: tuple[FastAPI, FastAPI], scorings: list[str]
) -> None:
    one, two = pair
    buyer, bystander = two_customers(engine_of(one))
    bought = warm_and_buy(one, two, buyer, "share-1")
    first = answers(one, buyer)
    one.state.service.flush()
    assert len(scorings) == 1 and one.state.service.tally.shares == 1
    row = shared(engine_of(one), buyer)
    assert row is not None and row.model_version == first[0]["model_version"]
    second = answers(two, buyer)
    assert len(scorings) == 1 and two.state.service.tally.shared == 1  # read, not re-scored
    assert second == first  # the same answers, the purchase in both
    assert bought not in ids(second[0])
    assert all(a["basis_reason"] == "recalculated: changed since training" for a in second)
    assert shared(engine_of(one), bystander) is None  # nobody else's list was written


def test_a_shared_list_serves_only_its_own_history(
    pair: tuple[FastAPI, FastAPI], scorings: list[str]
) -> None:
    """A list shared before the buyer's next purchase is not taken for the history after it:
    the process that hears it first re-scores (and shares anew), the other reads that."""
    one, two = pair
    buyer, _ = two_customers(engine_of(one))
    warm_and_buy(one, two, buyer, "share-2")
    answers(one, buyer)
    one.state.service.flush()
    answers(two, buyer)
    again = ids(offers(two, buyer, "n=5"))[0]
    buy(two, one, buyer, again, "share-3")
    after = answers(two, buyer)  # the old shared list is for one line fewer: re-scored
    assert len(scorings) == 2 and two.state.service.tally.shared == 1
    two.state.service.flush()
    assert answers(one, buyer) == after
    assert len(scorings) == 2 and one.state.service.tally.shared == 1
    assert again not in ids(after[0])


def test_a_new_model_is_not_answered_from_the_old_models_shared_list(
    pair: tuple[FastAPI, FastAPI], scorings: list[str]
) -> None:
    one, two = pair
    buyer, _ = two_customers(engine_of(one))
    warm_and_buy(one, two, buyer, "share-4")
    old = answers(one, buyer)[0]["model_version"]
    one.state.service.flush()
    service = two.state.service
    cleared = service.tally.cleared
    version = second_model(
        engine_of(one), settings_for(Path(service.settings.recommender.artifacts_dir))
    )
    assert version != old
    if engine_of(one).dialect.name == "postgresql":
        wait_until(lambda: service.tally.cleared > cleared)
    after = answers(two, buyer)
    assert {a["model_version"] for a in after} == {version}
    assert service.tally.shared == 0 and scorings[-1] == version


def test_an_objection_or_an_erasure_takes_the_shared_list_away(
    pair: tuple[FastAPI, FastAPI],
) -> None:
    """Written by the objection's and the erasure's own transactions; answers turn popular
    at once in both processes, and a list re-scored before is not written after them."""
    one, two = pair
    engine = engine_of(one)
    objector, erased = two_customers(engine)
    for customer, order_id in ((objector, "share-5"), (erased, "share-6")):
        warm_and_buy(one, two, customer, order_id)
        answers(one, customer)
    one.state.service.flush()
    late, gone = shared(engine, objector), shared(engine, erased)
    assert late is not None and gone is not None
    heard = two.state.service.tally.heard
    put = {"source": "account page", "objected_to_profiling": True}
    reply = call(one, "PUT", f"/v1/customers/{objector}", json=put, headers=bearer("shop"))
    assert reply.status == 200, reply.text
    assert shared(engine, objector) is None
    with engine.begin() as connection:  # a list re-scored before the objection, written late
        assert not store.share_list(connection, objector, late, NOW)
    assert shared(engine, objector) is None
    settings = one.state.service.settings
    privacy.erase(engine, settings, erased, NOW, "test")
    assert shared(engine, erased) is None
    with engine.begin() as connection:  # re-scored before the erasure, written after it
        assert not store.share_list(connection, erased, gone, NOW)
    if engine.dialect.name == "postgresql":
        wait_until(lambda: two.state.service.tally.heard >= heard + 2)
    for app in (one, two):
        assert offers(app, objector, "n=5")["basis_reason"] == "popular: objected to profiling"
        assert not offers(app, erased, "n=5")["personalised"]
    with engine.connect() as connection:
        flags = connection.execute(
            sa.select(customers.c.objected_to_profiling).where(customers.c.id == objector)
        ).scalar_one()
        assert flags is True
        assert connection.execute(sa.select(sa.func.count()).select_from(offer_lists)).scalar() == 0


def test_a_process_configured_otherwise_does_not_take_the_shared_list(
    pair: tuple[FastAPI, FastAPI], scorings: list[str]
) -> None:
    """During a rolling change of ``top_n`` or the time decay, two processes shape a list
    differently from the same model and history: neither takes the other's."""
    one, two = pair
    buyer, _ = two_customers(engine_of(one))
    warm_and_buy(one, two, buyer, "share-7")
    answers(one, buyer)
    one.state.service.flush()
    row = shared(engine_of(one), buyer)
    assert row is not None and row.shaped_by == "top_n=10 half_life=None padding=200"
    service = two.state.service
    recommender = service.settings.recommender.model_copy(update={"top_n": 5})
    service.settings = service.settings.model_copy(update={"recommender": recommender})
    answers(two, buyer)
    assert len(scorings) == 2 and service.tally.shared == 0  # re-scored, not taken


def test_the_discover_padding_is_shared_once_the_taker_padded(
    pair: tuple[FastAPI, FastAPI], scorings: list[str]
) -> None:
    """A big buyer's long discover list is padded from the model's ranking without their
    items (``Basis.padded``): once the taker padded an answer of its own, it writes that
    ranking to the list it shared (not before: most buyers never need it), and the other
    process pads from it rather than re-scoring, to the answers the taker gives. A row
    rewritten without it (a process that does not know the column, in a rolling upgrade)
    leaves it unused: re-scored there, to the same answers."""
    one, two = pair
    buyer, _ = two_customers(engine_of(one))
    long = f"n={MAX_N}&mode=discover"
    offers(one, buyer, long)
    offers(two, buyer, long)
    warm_and_buy(one, two, buyer, "share-pad-1")
    scorings.clear()  # the warm answers were padded from a re-scoring each
    offers(one, buyer, "n=5")
    one.state.service.flush()
    row = shared(engine_of(one), buyer)
    assert row is not None and row.padding is None  # not padded yet: the list alone
    first = offers(one, buyer, long)
    one.state.service.flush()
    assert len(ids(first)) > 20 and len(scorings) == 1  # padded, from the scores at hand
    row = shared(engine_of(one), buyer)
    assert row is not None and row.padding is not None and len(row.padding) > 20
    assert one.state.service.tally.shares == 1  # one list, written twice
    assert offers(two, buyer, long) == first
    assert len(scorings) == 1 and two.state.service.tally.shared == 1  # not re-scored
    earlier = [row.model_version, row.shaped_by, row.lines - 1, row.id_sum, row.last_id]
    with engine_of(one).begin() as connection:  # the row rewritten by an older process
        padding = json.dumps({"of": earlier, "ranked": row.padding})
        connection.execute(
            sa.update(offer_lists).where(offer_lists.c.customer_id == buyer).values(padding=padding)
        )
    assert shared(engine_of(one), buyer) == row._replace(padding=None)
    two.state.service.forget([buyer])  # its answer computed anew
    assert offers(two, buyer, long) == first and len(scorings) == 2  # re-scored to pad
