"""Which cached next-best offers a change drops, across two app instances (two ``serve``
processes) on one store (SQLite and PostgreSQL): a purchase through one reaches the other's
next answer for that customer and no other answer is recomputed; a model going live drops
everything; a lost listener connection drops everything; an answer computed while its
customer changed is not kept. Recomputations are counted (``OfferService.tally``), never
timed; on PostgreSQL, notifications arrive asynchronously, so the tests wait for them (a
condition, with a generous timeout)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from recocamp.api import offer_cache
from recocamp.api.offer_cache import MAX_N, OfferService
from recocamp.clock import FixedClock
from recocamp.recommender import serving, training
from recocamp.store import notifications, registry
from recocamp.store.engine import make_engine
from recocamp.store.schema import customers, recommendations
from tests.api.test_api_offers import cached_customer, cached_customer_after, ids, offers
from tests.api_shop import (
    NOW,
    bearer,
    call,
    engine_of,
    listening,
    make_app,
    second_model,
    settings_for,
    wait_until,
)


@pytest.fixture
def pair(shop: tuple[sa.Engine, Path]) -> Iterator[tuple[FastAPI, FastAPI]]:
    """Two apps on one store, each with its own engine (connections), like two processes."""
    engine, artifacts = shop
    other = make_engine(engine.url.render_as_string(hide_password=False))
    first, second = make_app(engine, artifacts), make_app(other, artifacts)
    listening(first, second)
    yield first, second
    for app in (first, second):
        app.state.service.close()
    other.dispose()


def two_customers(engine: sa.Engine) -> tuple[str, str]:
    customer, _ = cached_customer(engine)
    other, _ = cached_customer_after(engine, customer)
    return customer, other


def buy(one: FastAPI, two: FastAPI, buyer: str, item: str, order_id: str) -> None:
    """``buyer`` buys ``item`` through ``one``; on PostgreSQL, wait until both have heard of
    it (notifications are delivered on commit, on the listener's own thread; SQLite's next
    request reads the change log itself): ``two`` by the notification, ``one`` by the event
    and by its own notification too, which arriving late would drop an answer computed after
    the event (a test's race: counted as a second read or computation)."""
    order = {
        "order_id": order_id,
        "customer_id": buyer,
        "ordered_at": (NOW - timedelta(hours=1)).isoformat(),
        "lines": [{"item_id": item, "quantity": 1, "unit_price": 3.5}],
    }
    # the process that takes the event forgets the buyer at once and hears the notification
    # later too: a late one would drop the answer computed after the event (a test's race)
    expected = two.state.service.tally.heard + (2 if one is two else 1)
    taker = one.state.service.tally.heard + 2
    posted = call(one, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
    assert posted.status == 200, posted.text
    if engine_of(one).dialect.name == "postgresql":
        wait_until(
            lambda: (
                two.state.service.tally.heard >= expected and one.state.service.tally.heard >= taker
            )
        )


def test_a_purchase_through_one_process_reaches_the_other_for_that_customer_only(
    pair: tuple[FastAPI, FastAPI],
) -> None:
    one, two = pair
    service = two.state.service
    buyer, bystander = two_customers(engine_of(one))
    before = offers(two, buyer, "n=5&mode=discover")
    untouched = offers(two, bystander, "n=5")
    computed, forgotten = service.tally.computed, service.tally.forgotten
    assert offers(two, buyer, "n=5&mode=discover") == before
    assert service.tally.computed == computed  # served from the cache
    bought = ids(before)[0]
    buy(one, two, buyer, bought, "live-2")
    after = offers(two, buyer, "n=5&mode=discover")  # SQLite: at once, no waiting
    assert bought not in ids(after)
    assert after["basis_reason"] == "popular: nothing of the recalculated list fits the request"
    assert offers(two, bystander, "n=5") == untouched
    assert service.tally.computed == computed + 1  # the buyer's answer only
    assert service.tally.forgotten == forgotten + 1


def test_a_purchase_reads_the_customers_history_once_for_all_their_queries(
    pair: tuple[FastAPI, FastAPI],
) -> None:
    """A shop shows one customer several lists (home page, "new for you", "buy again"); the
    costly part of an answer, the history read and re-scored, is shared by them."""
    one, two = pair
    service = two.state.service
    buyer, _ = two_customers(engine_of(one))
    queries = ["n=5", "n=10&mode=discover", "n=5&mode=replenish"]
    for query in queries:
        offers(two, buyer, query)
    bases = service.tally.bases
    bought = ids(offers(two, buyer, "n=10&mode=discover"))[0]
    buy(one, two, buyer, bought, "live-3")
    computed = service.tally.computed
    after = [offers(two, buyer, query) for query in queries]
    assert service.tally.computed == computed + 3  # each list anew …
    assert service.tally.bases == bases + 1  # … on one reading of the new history
    assert all(a["basis_reason"] == "recalculated: changed since training" for a in after)
    assert bought not in ids(after[1])


def test_after_a_purchase_the_buyers_answers_extend_their_history_as_a_full_read_would(
    pair: tuple[FastAPI, FastAPI],
) -> None:
    """The answers after a purchase come from the kept history plus the new lines (the big
    buyer's thousands of lines are not read again) and are those of a process computing
    everything afresh, on the trained hybrid; then an objection still turns them popular."""
    one, two = pair
    service = two.state.service
    buyer, _ = two_customers(engine_of(one))
    queries = ["n=5", "n=10&mode=discover", "n=5&mode=replenish", f"n={MAX_N}&mode=discover"]
    for query in queries:
        offers(two, buyer, query)
    extended = service.tally.extended
    bought = ids(offers(two, buyer, "n=10&mode=discover"))[:2]
    buy(one, two, buyer, bought[0], "live-5")
    buy(one, two, buyer, bought[1], "live-6")
    after = [offers(two, buyer, query) for query in queries]
    assert service.tally.extended == extended + 1
    assert all(a["basis_reason"] == "recalculated: changed since training" for a in after)
    assert not set(bought) & set(ids(after[1]))
    assert len(ids(after[3])) > 20  # padded from the model's whole ranking of the history
    artifacts = Path(service.settings.recommender.artifacts_dir)
    fresh = make_app(engine_of(two), artifacts)
    try:
        assert after == [offers(fresh, buyer, query) for query in queries]
    finally:
        fresh.state.service.close()
    heard = service.tally.heard
    with engine_of(one).begin() as connection:
        connection.execute(
            sa.update(customers).where(customers.c.id == buyer).values(objected_to_profiling=True)
        )
    if engine_of(one).dialect.name == "postgresql":
        wait_until(lambda: service.tally.heard > heard)
    objected = offers(two, buyer, "n=5")
    assert objected["basis_reason"] == "popular: objected to profiling"
    assert service.tally.extended == extended + 2  # the history extended; the flags read anew


def test_only_the_latest_rescored_bases_hold_every_items_score(
    app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-scored basis keeps one score per item for its longer lists while it is among the
    latest SCORES_HELD (memory); an older one computes them again, to the same answers."""
    monkeypatch.setattr(offer_cache, "SCORES_HELD", 1)
    service = app.state.service
    first, second = two_customers(engine_of(app))
    for n, customer in enumerate((first, second)):
        buy(app, app, customer, ids(offers(app, customer))[0], f"held-{n}")
        offers(app, customer, f"n={MAX_N}&mode=discover")
    assert not service.cache.bases[first].held and len(service.cache.bases[second].held) == 1
    artifacts = Path(service.settings.recommender.artifacts_dir)
    fresh = make_app(engine_of(app), artifacts)
    try:
        for customer in (first, second):
            assert offers(app, customer, f"n={MAX_N}") == offers(fresh, customer, f"n={MAX_N}")
    finally:
        fresh.state.service.close()


def test_a_model_going_live_drops_every_answer_in_every_process(
    pair: tuple[FastAPI, FastAPI], tmp_path: Path
) -> None:
    one, two = pair
    service = two.state.service
    first, second = two_customers(engine_of(one))
    old = offers(two, first)["model_version"]
    offers(two, second)
    computed, cleared = service.tally.computed, service.tally.cleared
    settings = settings_for(Path(service.settings.recommender.artifacts_dir))
    version = second_model(engine_of(one), settings)
    assert version != old
    if engine_of(one).dialect.name == "postgresql":
        wait_until(lambda: service.tally.cleared > cleared)
    assert offers(two, first)["model_version"] == version
    assert service.tally.cleared > cleared
    offers(two, second)
    assert service.tally.computed == computed + 2  # both recomputed, with the new model


def test_a_lost_listener_connection_drops_every_answer(app: FastAPI) -> None:
    engine = engine_of(app)
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's listener (SQLite reads a change log)")
    service = app.state.service
    listening(app)
    customer, _ = cached_customer(engine)
    offers(app, customer)
    offers(app, customer)
    computed, cleared = service.tally.computed, service.tally.cleared
    listener = service.listener
    old_pid = listener.backend_pid
    assert old_pid is not None and notifications.end_session(engine, old_pid)
    wait_until(
        lambda: (
            listener.backend_pid not in (None, old_pid)
            and service.trusted
            and service.tally.cleared >= cleared + 2
        )  # lost, then reconnected
    )
    offers(app, customer)
    assert service.tally.computed == computed + 1  # dropped: notifications may have been lost


def test_an_answer_computed_while_its_customer_changed_is_not_kept(app: FastAPI) -> None:
    service = app.state.service
    listening(app)
    customer, _ = cached_customer(engine_of(app))
    compute = service.basis

    def racing(*args: object, **kwargs: object) -> object:
        found = compute(*args, **kwargs)
        service.forget([customer])  # a purchase committed while the answer was computed
        return found

    service.basis = racing
    offers(app, customer)
    service.basis = compute
    computed = service.tally.computed
    offers(app, customer)
    assert service.tally.computed == computed + 1  # not kept: computed again
    offers(app, customer)
    assert service.tally.computed == computed + 1  # this one is kept


def test_a_background_look_for_a_new_model_survives_a_missing_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The look runs on its own thread after "everything changed": a database that went away
    (a restart, a dropped test database) is logged, and the next request looks again."""
    engine = make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    service = OfferService(engine, settings_for(tmp_path), FixedClock(NOW))
    with caplog.at_level("WARNING", logger="recocamp.api.offer_cache"):
        service._refresh_quietly(force=True)  # no tables: the look fails
    assert "could not look for a new model" in caplog.text
    assert not service.ready()
    engine.dispose()


def test_the_first_answer_after_a_promote_or_rollback_comes_from_the_new_model(
    shop: tuple[sa.Engine, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a customer without a cached row too, whose list is computed from the model held
    in memory: the request that hears "a model went live" must not answer with the model it
    held before (the background look may not have finished, or may have begun before the
    change; here it never runs, and ``refresh_s`` is an hour)."""
    engine, artifacts = shop
    settings = settings_for(artifacts)
    with engine.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    first = str(live.version)
    second = second_model(engine, settings, live=False)
    training.promote(engine, settings.recommender, first, NOW)
    customer, _ = cached_customer(engine)

    def uncached() -> None:
        with engine.begin() as connection:
            connection.execute(
                sa.delete(recommendations).where(recommendations.c.customer_id == customer)
            )

    uncached()
    app = make_app(engine, artifacts, refresh_s=3600.0)
    try:
        service = app.state.service
        assert offers(app, customer)["model_version"] == first
        monkeypatch.setattr(service, "_refresh_soon", lambda force=False: None)

        def heard(cleared: int) -> None:  # PostgreSQL: the notification comes on its thread
            if engine.dialect.name == "postgresql":
                wait_until(lambda: service.tally.cleared > cleared)

        cleared = service.tally.cleared
        training.promote(engine, settings.recommender, str(second), NOW)
        uncached()
        heard(cleared)
        assert offers(app, customer)["model_version"] == second
        cleared = service.tally.cleared
        assert training.rollback(engine, settings.recommender, NOW) == first
        uncached()
        heard(cleared)
        assert offers(app, customer)["model_version"] == first
    finally:
        app.state.service.close()


def test_a_purchase_of_an_item_bought_before_keeps_the_offers_reasons(
    pair: tuple[FastAPI, FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An offer's reason ("because you bought …") depends on the live model, the catalogue
    and the items the customer bought, nothing else: after a purchase of an item bought
    before, the next basis takes the reasons over (none is worked out twice), and the
    answers are those of a process computing everything afresh. A purchase of a new item
    has them worked out again."""
    one, two = pair
    asked: list[str] = []
    explained = serving.explained

    def counted(live: Any, catalogue: Any, ranked: Any, owned: frozenset[str]) -> dict[str, str]:
        asked.extend(str(entry[0]) for entry in ranked)
        return explained(live, catalogue, ranked, owned)

    monkeypatch.setattr(serving, "explained", counted)
    buyer, _ = two_customers(engine_of(one))
    queries = ["n=5", "n=10&mode=discover", "n=5&mode=replenish", f"n={MAX_N}&mode=discover"]
    before = [offers(two, buyer, query) for query in queries]
    buy(one, two, buyer, ids(before[2])[0], "again-1")  # bought before: "buy again"
    after = [offers(two, buyer, query) for query in queries]
    assert asked and len(asked) == len(set(asked))
    artifacts = Path(two.state.service.settings.recommender.artifacts_dir)
    fresh = make_app(engine_of(two), artifacts)
    try:
        assert after == [offers(fresh, buyer, query) for query in queries]
        buy(one, two, buyer, ids(after[1])[0], "again-2")  # new to the customer
        asked.clear()
        latest = [offers(two, buyer, query) for query in queries]
        assert set(asked) & {item for answer in after for item in ids(answer)}
        fresh.state.service.forget([buyer])
        assert latest == [offers(fresh, buyer, query) for query in queries]
    finally:
        fresh.state.service.close()
