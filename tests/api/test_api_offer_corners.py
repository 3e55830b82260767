"""Next-best offers in corners: a purchase dated a little past the server's clock (accepted:
clocks drift), whose line the history leaves out until its time comes; query values the
route's own parser (``api.lean``) must read as its schema says."""

from __future__ import annotations

import gc
import tracemalloc
import urllib.parse
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client import REGISTRY

from recocamp.clock import FixedClock
from recocamp.data.synthetic import END
from recocamp.domain import Item, Purchase
from recocamp.recommender import training
from recocamp.store import queries, registry, views
from recocamp.store.engine import make_engine
from recocamp.store.schema import items, models
from tests.api.test_api_offers import NBO, cached_customer, fastapi_twin, ids, live, offers
from tests.api.test_preferences import page, someone
from tests.api_shop import (
    NOW,
    Closing,
    bearer,
    call,
    engine_of,
    listening,
    make_app,
    settings_for,
    wait_until,
)
from tests.privacy.test_privacy import popular_items


def test_a_purchase_dated_a_little_ahead_shows_once_its_time_has_come(
    shop: tuple[sa.Engine, Path], closing: Closing
) -> None:
    """An order dated two minutes past the server's clock is accepted (up to five are) and
    left out of the history until then; the answer computed meanwhile must not be served
    after that, when nothing else changes to drop it."""
    clock = FixedClock(NOW)
    app = closing(make_app(*shop, clock=clock))
    buyer, _ = cached_customer(shop[0])
    bought = ids(offers(app, buyer, "n=5&mode=discover"))[0]
    order = {
        "order_id": "ahead-1",
        "customer_id": buyer,
        "ordered_at": (NOW + timedelta(minutes=2)).isoformat(),
        "lines": [{"item_id": bought, "quantity": 1, "unit_price": 3.5}],
    }
    posted = call(app, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
    assert posted.status == 200, posted.text
    offers(app, buyer, "n=5&mode=discover")  # before its time: may or may not show it
    clock.advance(timedelta(minutes=3))
    after = offers(app, buyer, "n=5&mode=discover")
    assert bought not in ids(after)
    assert after["basis_reason"] == "popular: nothing of the recalculated list fits the request"


def test_a_category_whose_name_holds_a_comma_filters_by_that_category(
    shop: tuple[sa.Engine, Path], closing: Closing
) -> None:
    """``category`` is a list of whole names, repeated (the schema says so); only
    ``exclude`` also takes ids separated by commas. A shop's category may well be
    "Toys, games": split at the comma it matched no item, and the widget showed nothing."""
    engine = shop[0]
    buyer, _ = cached_customer(engine)
    with engine.begin() as connection:
        first = connection.execute(sa.select(items.c.category).order_by(items.c.id)).scalar()
        connection.execute(
            sa.update(items).where(items.c.category == first).values(category="Toys, games")
        )
    app = closing(make_app(*shop))
    found = offers(app, buyer, f"n=3&category={urllib.parse.quote('Toys, games')}")
    assert found["items"]
    assert {entry["category"] for entry in found["items"]} == {"Toys, games"}


def test_an_erasure_right_after_a_purchase_reaches_the_other_process(
    shop: tuple[sa.Engine, Path], closing: Closing
) -> None:
    """The erasure deletes the change log's rows that name the customer, the newest (the
    purchase the other process has read) among them; its "everything" row must still come
    after what that process read, or it never sees it and serves the erased customer's
    personal list on."""
    engine, artifacts = shop
    other = make_engine(engine.url.render_as_string(hide_password=False))
    try:
        one, two = closing(make_app(engine, artifacts)), closing(make_app(other, artifacts))
        listening(one, two)
        buyer, _ = cached_customer(engine)
        bought = ids(offers(two, buyer, "n=5&mode=discover"))[0]
        order = {
            "order_id": "then-erased",
            "customer_id": buyer,
            "ordered_at": (NOW - timedelta(hours=1)).isoformat(),
            "lines": [{"item_id": bought, "quantity": 1, "unit_price": 3.5}],
        }
        posted = call(one, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
        assert posted.status == 200, posted.text
        if engine.dialect.name == "postgresql":
            wait_until(lambda: two.state.service.tally.heard >= 1)
        assert offers(two, buyer, "n=5&mode=discover")["basis_reason"] == (
            "popular: nothing of the recalculated list fits the request"
        )
        path = f"/v1/privacy/customers/{buyer}"
        erased = call(one, "DELETE", path, headers=bearer("dpo"))
        assert erased.status == 200, erased.text
        if engine.dialect.name == "postgresql":
            wait_until(lambda: two.state.service.tally.heard >= 2)
        assert offers(two, buyer, "n=5&mode=discover")["basis"] == "popular"
    finally:
        other.dispose()


@pytest.mark.parametrize("query", ["n=0", "n=0&mode=x", "category=" + "c" * 201])
def test_a_bad_id_and_bad_parameters_are_listed_in_fastapis_order(app: FastAPI, query: str) -> None:
    """FastAPI lists the path's errors before the query's; clients read ``detail[0]``."""
    path = NBO.format("x" * 65) + "?" + query
    lean = call(app, "GET", path, headers=bearer("shop"))
    plain = call(fastapi_twin(app), "GET", path, headers=bearer("shop"))
    assert lean.status == plain.status == 422
    assert lean.json() == plain.json()


def test_long_query_strings_are_not_remembered(app: FastAPI) -> None:
    """The route remembers the arguments of the query strings it saw (widgets repeat a
    few), up to 1,024 of them; a server takes query strings of some 64 KB, thousands of
    values each (a parse of 40 KB holds 0.2 MB), and a key holder sending distinct ones
    kept 1,024 such parses, a few hundred MB per process. Only short ones are remembered."""
    offers(app, "12345", "n=3")  # the app's own start-up allocations, done
    gc.collect()
    tracemalloc.start()
    try:
        held = tracemalloc.get_traced_memory()[0]
        for number in range(20):
            query = "&".join(f"exclude={number}-{i}" for i in range(2500))
            assert (
                call(app, "GET", NBO.format("12345") + "?" + query, headers=bearer("shop")).status
                == 422
            )
        urllib.parse.clear_cache()  # type: ignore[attr-defined]  # the test client's URL parses
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - held
    finally:
        tracemalloc.stop()
    assert grown < 1_000_000, grown  # remembered: about 20 × 0.2 MB


def test_an_erased_id_signed_up_again_gets_nothing_of_the_erased_profile(
    shop: tuple[sa.Engine, Path], closing: Closing
) -> None:
    """The erasure takes the customer out of the saved model; a process that loaded the
    model before must not go on using the erased person's row of it for whoever signs up
    under the id again (with an order dated before the model's data cutoff, the rules take
    the model's own list of a trained customer the cache leaves out). Its answer is that of
    a process started after the erasure."""
    engine, artifacts = shop
    clock = FixedClock(NOW)
    app = closing(make_app(engine, artifacts, clock))
    customer, _ = cached_customer(engine)
    assert offers(app, customer, "n=5")["basis"] == "personal"
    cleared = app.state.service.tally.cleared
    erased = call(app, "DELETE", f"/v1/privacy/customers/{customer}", headers=bearer("dpo"))
    assert erased.status == 200, erased.text
    if engine.dialect.name == "postgresql":  # told by the listener's "everything"
        wait_until(lambda: app.state.service.tally.cleared > cleared)
    clock.advance(timedelta(minutes=1))
    signup = {
        "source": "signup",
        "email": "again@example.test",
        "consent_basis": "double_opt_in",
        "consent_at": clock.now().isoformat(),
        "new_sign_up": True,
    }
    back = call(app, "PUT", f"/v1/customers/{customer}", json=signup, headers=bearer("shop"))
    assert back.status == 200, back.text
    order = {
        "order_id": "after-sign-up",
        "customer_id": customer,
        "ordered_at": (END - timedelta(days=20)).isoformat(),
        "lines": [{"item_id": "20001", "quantity": 1, "unit_price": 3.5}],
    }
    posted = call(app, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
    assert posted.status == 200, posted.text
    started_after = closing(make_app(engine, artifacts, clock))
    assert offers(app, customer, "n=5") == offers(started_after, customer, "n=5")


def test_an_objection_on_the_preferences_page_drops_the_answers_before_the_page_answers(
    app: FastAPI,
) -> None:
    """As the purchase events, customer changes and erasures of the API do: the process that
    takes the change drops the customer's answers before it answers (on PostgreSQL the others
    hear it by notification, this one would have served the old list until its own came)."""
    engine, service = engine_of(app), app.state.service
    person = someone(engine, "en")
    assert offers(app, person.id, "n=3")["personalised"] is True
    forgotten = service.tally.forgotten
    form = {"action": "save", "objected": "on"}
    assert call(app, "POST", page(person.id), data=form).status == 303
    assert service.tally.forgotten == forgotten + 1  # before any request looked at the store
    assert offers(app, person.id, "n=3")["basis_reason"] == "popular: objected to profiling"


@pytest.mark.parametrize("connected", [True, False])
def test_the_listener_reconnecting_trusts_the_cache_only_once_it_is_cleared(
    app: FastAPI, connected: bool
) -> None:
    """PostgreSQL's listener (re)connecting: answers computed while it was away may have missed
    notifications. Trusted before the cache was cleared, one finishing in between was kept
    under the old epoch; losing the connection distrusts before it clears."""
    service = app.state.service
    seen: list[bool] = []
    clear = service.cache.clear

    def clearing() -> None:
        seen.append(service.trusted)
        clear()

    service.cache.clear = clearing
    service._trusted = not connected
    service._connected(connected)
    assert seen == [False] and service.trusted is connected


def test_an_id_holding_a_slash_is_served_like_any_other(app: FastAPI) -> None:
    """An id is any printable text (``domain.id_problem``): the imports and the purchase
    events take ``DE/1001``. Sent as ``DE%2F1001``, the server decodes the path before
    routing, and the old routes' ``{customer_id}`` stops at a slash: the customer whose
    purchases were just stored got 404 "Not Found", as did the similar items of an item id
    holding one."""
    _, cached = cached_customer(engine_of(app))
    bought = [str(entry[0]) for entry in cached[:2]]
    order = {
        "order_id": "slash-1",
        "customer_id": "DE/1001",
        "ordered_at": (NOW - timedelta(days=1)).isoformat(),
        "lines": [{"item_id": item, "quantity": 1, "unit_price": 3.5} for item in bought],
    }
    posted = call(app, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
    assert posted.status == 200, posted.text
    labels = {"method": "GET", "route": NBO.format("{customer_id}"), "status": "200"}
    before = REGISTRY.get_sample_value("recocamp_http_requests_total", labels) or 0.0
    found = offers(app, urllib.parse.quote("DE/1001", safe=""), "n=3&mode=discover")
    assert REGISTRY.get_sample_value("recocamp_http_requests_total", labels) == before + 1
    assert found["customer_id"] == "DE/1001"
    assert found["basis"] == "recalculated" and found["personalised"]
    assert not set(ids(found)) & set(bought)
    similar = call(app, "GET", "/v1/items/A%2F1/similar", headers=bearer("shop"))
    assert similar.status == 404
    assert similar.json()["detail"].startswith("no similar items for 'A/1'")


def test_an_item_without_a_price_is_never_offered(app: FastAPI) -> None:
    """A catalogue item at price 0: an items file may say so (its price column takes 0), and
    an online-retail import gives an item no sale in the file priced it (only returns or
    free lines) price 0. A line at price 0 is an adjustment, not a purchase: the item cannot
    be sold as offered. The widget (and an e-mail, by the same rule) showed it at 0.00."""
    engine = engine_of(app)
    popular = [str(item) for item, _ in live(engine).popular]
    with engine.begin() as connection:
        free = views.catalogue_items(connection, popular[:1])[popular[0]]
        queries.upsert_items(connection, [replace(free, price=0.0)], NOW)
    shown = ids(offers(app, "nobody-we-know", "n=4"))
    assert popular[0] not in shown
    assert shown == [item for item in popular if item != popular[0]][:4]
    similar = call(app, "GET", f"/v1/items/{popular[1]}/similar?n=50", headers=bearer("shop"))
    assert popular[0] not in [entry["item_id"] for entry in similar.json()["items"]]


def test_an_order_dated_before_the_models_cutoff_but_stored_after_its_training_is_reflected(
    app: FastAPI,
) -> None:
    """The nightly training reads the lines before its cutoff; orders dated before it but
    stored after that read (yesterday's orders imported in the morning, an event retried
    after an outage) are in the history and not in the model. The old rule re-scored only
    customers with an order after the cutoff: such a buyer got the model's list without
    that purchase all day, and after the training went live, an answer that had reflected
    the purchase stopped reflecting it."""
    engine = engine_of(app)
    buyer, _ = cached_customer(engine)
    before = offers(app, buyer, "n=5")
    assert before["basis"] == "personal"
    fresh = ids(offers(app, buyer, "n=3&mode=discover"))
    order = {
        "order_id": "late-1",
        "customer_id": buyer,
        "ordered_at": (END - timedelta(days=2)).isoformat(),
        "lines": [{"item_id": item, "quantity": 1, "unit_price": 3.5} for item in fresh],
    }
    posted = call(app, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
    assert posted.status == 200, posted.text
    after = offers(app, buyer, "n=5")
    assert after["basis_reason"] == "recalculated: changed since training"
    assert not set(fresh) & set(ids(offers(app, buyer, "n=5&mode=discover")))


def test_an_item_id_holding_a_comma_can_be_excluded(
    shop: tuple[sa.Engine, Path], closing: Closing
) -> None:
    """``exclude`` also takes ids separated by commas, and an item id is any printable text:
    the cart's item ``A,1`` sent as ``exclude=A%2C1`` was split into ``A`` and ``1``, and the
    widget offered the very item in the cart. A value with a comma excludes its parts and
    itself."""
    engine = shop[0]
    row = live(engine)
    first = str(row.popular[0][0])
    popular = [["A,1" if str(item) == first else item, score] for item, score in row.popular]
    with engine.begin() as connection:
        connection.execute(sa.update(items).where(items.c.id == first).values(id="A,1"))
        connection.execute(
            sa.update(models).where(models.c.version == row.version).values(popular=popular)
        )
    app = closing(make_app(*shop))
    assert ids(offers(app, "nobody-we-know", "n=3"))[0] == "A,1"
    shown = ids(offers(app, "nobody-we-know", "n=3&exclude=" + urllib.parse.quote("A,1")))
    assert "A,1" not in shown and len(shown) == 3


def test_an_empty_id_is_refused_as_fastapi_refuses_it(app: FastAPI) -> None:
    """The route takes an id holding a slash, so ``/v1/customers//next-best-offer`` reaches
    it (404 before): its 422 is FastAPI's own, ``string_too_short`` first."""
    path = NBO.format("")
    lean = call(app, "GET", path, headers=bearer("shop"))
    plain = call(fastapi_twin(app), "GET", path, headers=bearer("shop"))
    assert lean.status == plain.status == 422
    assert lean.json() == plain.json()


def test_similar_items_of_an_item_an_older_version_stored_decomposed(
    shop: tuple[sa.Engine, Path], closing: Closing
) -> None:
    """Paths are composed (Unicode NFC) as files read ids; lines that versions taking API
    ids as given stored under ``To`` + U+0308 ``pfchen`` taught the model that form, and
    the composed path still finds it (the decomposed one too)."""
    engine, artifacts = shop
    decomposed = "To\u0308pfchen"
    popular = popular_items(engine)[:3]
    rows = [
        Purchase(f"T{n}", line, f"t-{n}", item, 1, 2.5, END - timedelta(days=n % 20 + 1))
        for n in range(40)
        for line, item in enumerate((decomposed, popular[n % 3]), 1)
    ]
    with engine.begin() as connection:
        queries.upsert_items(connection, [Item(decomposed, "Pot", "tea", 2.5)], NOW)
        queries.store_orders(connection, rows, None)
    trained = training.train(
        engine,
        settings_for(artifacts).recommender,
        now=NOW,
        as_of=END + timedelta(days=1),
        name="item_knn",
    )
    assert trained.version is not None, trained.reason
    if trained.outcome != "promoted":
        with engine.begin() as connection:
            registry.make_live(connection, trained.version, NOW)
    app = closing(make_app(engine, artifacts))
    for given in ("T%C3%B6pfchen", "To%CC%88pfchen"):
        similar = call(app, "GET", f"/v1/items/{given}/similar", headers=bearer("shop"))
        assert similar.status == 200, similar.text
        assert similar.json()["items"], similar.text
