"""Next-best offers and similar items through the real app, on a really trained shop (SQLite
and PostgreSQL): cached lists, popularity for the cold and the objecting, filters, stock,
re-scoring after a purchase event, erasure, the e-mail/widget agreement, and the lean
route's parameter rules against FastAPI's own."""

from __future__ import annotations

import itertools
import time
from datetime import timedelta
from pathlib import Path
from typing import TypedDict

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.routing import APIRoute
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from recocamp.campaigns import offers as offer_rules
from recocamp.campaigns import planner
from recocamp.campaigns.audience import Snapshot, history_of
from recocamp.campaigns.files import Campaign, load_all
from recocamp.campaigns.run import load_snapshot
from recocamp.cli import app as cli
from recocamp.clock import FixedClock
from recocamp.domain import Customer, Purchase
from recocamp.recommender import models, serving
from recocamp.recommender.ranking import Mode
from recocamp.settings import Settings
from recocamp.store import queries, registry, views
from recocamp.store.schema import customers, items, recommendations
from tests.api_shop import (
    NOW,
    OBJECTOR,
    Closing,
    bearer,
    call,
    engine_of,
    listening,
    make_app,
    second_model,
    settings_for,
    wait_until,
)
from tests.conftest import ROOT

NBO = "/v1/customers/{}/next-best-offer"


class OfferJson(TypedDict):
    """One offer as the API writes it (``api.offers.OfferOut``)."""

    item_id: str
    title: str
    category: str
    price: float
    url: str | None
    image_url: str | None
    score: float
    reason: str
    source: str


class OffersJson(TypedDict):
    """The next-best-offer answer as the API writes it (``api.offers.OffersOut``)."""

    customer_id: str
    mode: str
    personalised: bool
    basis: str
    basis_reason: str
    model_version: str | None
    items: list[OfferJson]


def offers(app: FastAPI, customer: str, query: str = "", key: str = "shop") -> OffersJson:
    reply = call(
        app, "GET", NBO.format(customer) + (f"?{query}" if query else ""), headers=bearer(key)
    )
    assert reply.status == 200, reply.text
    document: OffersJson = reply.json()
    return document


def ids(document: OffersJson) -> list[str]:
    return [entry["item_id"] for entry in document["items"]]


def cached_customer(engine: sa.Engine) -> tuple[str, list[list[object]]]:
    """A customer with a cached list and at least three orders (a real history)."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(recommendations).order_by(recommendations.c.customer_id)
        ).all()
        for row in rows:
            history = history_of(views.customer_orders(connection, row.customer_id, NOW), {})
            if history.count >= 3:
                return str(row.customer_id), list(row.items)
    raise AssertionError("no customer with a history in the cache")


def live(engine: sa.Engine) -> sa.Row[object]:
    with engine.connect() as connection:
        row = registry.live(connection)
    assert row is not None
    return row


def test_a_known_customer_gets_the_cached_list_with_reasons(app: FastAPI) -> None:
    engine = engine_of(app)
    customer, cached = cached_customer(engine)
    answer = offers(app, customer, "n=5")
    assert answer["basis"] == "personal" and answer["personalised"] is True
    assert answer["model_version"] == live(engine).version
    with engine.connect() as connection:
        catalogue = views.catalogue(connection)
    expected = [
        str(i) for i, _ in cached if catalogue[str(i)].in_stock and not catalogue[str(i)].is_service
    ][:5]
    assert ids(answer) == expected  # the cache's order, nothing invented
    scores = {item: score for item, score in cached}
    for entry in answer["items"]:
        assert entry["reason"] and entry["title"] == catalogue[entry["item_id"]].title
        assert entry["score"] == pytest.approx(scores[entry["item_id"]])


def test_discover_explains_with_a_bought_item(app: FastAPI) -> None:
    customer, _ = cached_customer(engine_of(app))
    answer = offers(app, customer, "n=6&mode=discover")
    reasons = [entry["reason"] for entry in answer["items"]]
    assert len(reasons) == 6
    assert any(reason.startswith("because you bought ") for reason in reasons), reasons
    with engine_of(app).connect() as connection:
        owned = history_of(views.customer_orders(connection, customer, NOW), {}).items
    assert not owned & set(ids(answer))


def test_an_answer_of_popular_items_alone_says_so(app: FastAPI) -> None:
    """Discover mode over a personal list the rules leave nothing of (all bought, or excluded
    by the shop's page) falls back to recent popularity: every item's ``source`` is
    ``popular``, and the answer said ``"basis": "personal", "personalised": true`` (a widget
    headed "picked for you" over the shop's best sellers). It says ``popular`` and why."""
    customer, cached = cached_customer(engine_of(app))
    listed = [str(item) for item, _ in cached][:100]
    query = "n=3&mode=discover&" + "&".join(f"exclude={item}" for item in listed)
    answer = offers(app, customer, query)
    assert len(answer["items"]) == 3
    assert {entry["source"] for entry in answer["items"]} == {"popular"}
    assert (answer["basis"], answer["personalised"]) == ("popular", False)
    assert answer["basis_reason"] == "popular: nothing of the personal list fits the request"
    mixed = offers(app, customer, "n=3")
    assert (mixed["basis"], mixed["personalised"]) == ("personal", True)


def cached_customers(app: FastAPI, count: int) -> list[str]:
    """The first ``count`` customers of the cached top-N, by id."""
    with engine_of(app).connect() as connection:
        buyers = connection.execute(
            sa.select(recommendations.c.customer_id).order_by(recommendations.c.customer_id)
        ).scalars()
        return [str(c) for c in buyers][:count]


def test_each_offer_has_the_reason_the_whole_lists_give_it(app: FastAPI) -> None:
    """Only the offers shown are explained, not every item of the personal list and of the
    padding ranking: an offer's reason is still the one explaining those whole lists gives
    it (each item's reason depends on nothing but the item and the history)."""
    service = app.state.service
    customers = cached_customers(app, 8)
    half_life = service.settings.recommender.time_decay_half_life_days
    padded = 0
    for customer in customers:
        snapshot = service.snapshot()
        basis = service.basis(customer, snapshot)
        for mode in ("discover", "mixed"):
            answer = offers(app, customer, f"n=50&mode={mode}")
            ranking = basis.padded(snapshot.live, mode == "discover", half_life)
            whole = [*(basis.personal.items or []), *ranking]
            explained = serving.explained(snapshot.live, snapshot.catalogue, whole, basis.owned)
            listed = {str(item) for item, _ in basis.personal.items or []}
            for entry in answer["items"]:
                item = entry["item_id"]
                if entry["source"] != "personal" or item in basis.owned:
                    continue
                padded += item not in listed
                assert entry["reason"] == (
                    f"because you bought {explained[item]}"
                    if item in explained
                    else f"picked for you: you like {entry['category'].replace('_', ' ')}"
                    if entry["category"] in basis.categories
                    else "picked for you"
                )
    assert padded, "no answer was padded: the test shows nothing of the padding's reasons"


def test_a_padded_answer_is_one_selection_over_its_lists_and_the_padding(app: FastAPI) -> None:
    """The padding is selected from where the other lists ended (they were read to their
    end), and the reasons are set on the offers chosen (which offers does not depend on
    them): the same offers, in the same order, with the same reasons, as one selection of
    the planner's rules over every list and the padding, every reason known; in each mode."""
    service = app.state.service
    customers = cached_customers(app, 8)
    half_life = service.settings.recommender.time_decay_half_life_days
    padded = 0
    for customer, mode, n in itertools.product(customers, Mode, (5, 50)):
        answer = offers(app, customer, f"n={n}&mode={mode.value}")
        snapshot = service.snapshot()
        live, catalogue, basis = snapshot.live, snapshot.catalogue, service.cache.bases[customer]
        ranking = basis.padded(live, mode is Mode.DISCOVER, half_life)
        personal = basis.personal.items
        reasons = serving.explained(live, catalogue, [*(personal or []), *ranking], basis.owned)
        due = basis.kept.repurchases().due(service.clock.now()) if mode is Mode.REPLENISH else []
        lists = offer_rules.sources_for(mode, personal, snapshot.popular, basis.owned, due, reasons)
        rules = offer_rules.Rules(mode=mode, count=n)
        owned, categories, returned = basis.owned, basis.categories, basis.history.returned
        expected = offer_rules.select(lists, catalogue, rules, owned, categories, returned)
        if len(expected) < n and personal:
            lists.append(offer_rules.Candidates(ranking, "personal", reasons))
            expected = offer_rules.select(lists, catalogue, rules, owned, categories, returned)
            padded += 1
        assert [
            (entry["item_id"], entry["reason"], entry["source"], entry["score"])
            for entry in answer["items"]
        ] == [(o.item_id, o.why, o.source, round(o.score, 6)) for o in expected]
    assert padded, "no answer was padded: the test shows nothing of the padding"


def test_unknown_customers_get_recent_popularity(app: FastAPI) -> None:
    answer = offers(app, "nobody-we-know", "n=4")
    assert (answer["basis"], answer["basis_reason"]) == ("popular", "popular: unknown customer")
    assert answer["personalised"] is False
    assert ids(answer) == [str(item) for item, _ in live(engine_of(app)).popular][:4]
    assert {e["reason"] for e in answer["items"]} == {"popular with other customers"}


@pytest.mark.parametrize("customer", ["nobody-we-know", OBJECTOR])
def test_popularity_answers_n_beyond_the_models_top_n(app: FastAPI, customer: str) -> None:
    """``n`` may be up to 50, but the popular list held was the live model's stored one,
    ``top_n`` long (10 here): a cold-start or objecting customer asking for 30 got 10
    without a word, while a personal answer is padded to ``n``. The list is now taken
    from the loaded model's popularity as long as ``n`` may ask; its first ``top_n`` are
    the stored list (what an e-mail offers)."""
    stored = [str(item) for item, _ in live(engine_of(app)).popular]
    top_n = app.state.service.settings.recommender.top_n
    assert len(stored) == top_n
    answer = offers(app, customer, "n=30&mode=mixed")
    got = ids(answer)
    assert len(got) == 30, got
    if customer != OBJECTOR:  # an objector's own items come first (source "history")
        assert got[:top_n] == stored


def test_an_objector_gets_popularity_and_no_explanations(app: FastAPI) -> None:
    answer = offers(app, OBJECTOR, "n=5&mode=mixed")
    assert answer["basis_reason"] == "popular: objected to profiling"
    for entry in answer["items"]:
        assert entry["source"] in ("popular", "history", "due")
        assert not entry["reason"].startswith("because")


def test_category_and_exclude_filters(app: FastAPI) -> None:
    customer, _ = cached_customer(engine_of(app))
    everything = offers(app, customer, "n=10&mode=discover")
    first = ids(everything)[0]
    without = offers(app, customer, f"n=10&mode=discover&exclude={first},nothing")
    assert first not in ids(without)
    category = everything["items"][0]["category"]
    only = offers(app, customer, f"n=3&mode=discover&category={category}")
    assert only["items"] and {e["category"] for e in only["items"]} == {category}


def test_items_out_of_stock_are_never_offered(app: FastAPI) -> None:
    engine = engine_of(app)
    customer, _ = cached_customer(engine)
    first = ids(offers(app, customer, "n=5"))[0]
    with engine.begin() as connection:
        connection.execute(
            sa.update(items)
            .where(items.c.id == first)
            .values(in_stock=False, updated_at=NOW + timedelta(minutes=1))
        )
    app.state.service.snapshot(force=True)  # what the refresh every [api] refresh_s does
    assert first not in ids(offers(app, customer, "n=5"))


def test_a_purchase_event_is_visible_to_the_next_request(app: FastAPI) -> None:
    customer, _ = cached_customer(engine_of(app))
    before = offers(app, customer, "n=5&mode=discover")
    bought = ids(before)[0]
    order = {
        "order_id": "live-1",
        "customer_id": customer,
        "ordered_at": (NOW - timedelta(hours=1)).isoformat(),
        "lines": [{"item_id": bought, "quantity": 2, "unit_price": 3.5}],
    }
    posted = call(app, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
    assert posted.status == 200, posted.text
    after = offers(app, customer, "n=5&mode=discover")
    assert bought not in ids(after)
    assert after["basis_reason"] == "popular: nothing of the recalculated list fits the request"
    assert bought in ids(offers(app, customer, "n=20&mode=replenish"))


def test_a_new_customer_is_scored_from_their_first_order(app: FastAPI) -> None:
    popular = [str(i) for i, _ in live(engine_of(app)).popular]
    order = {
        "order_id": "first-1",
        "customer_id": "brand-new",
        "ordered_at": (NOW - timedelta(minutes=5)).isoformat(),
        "lines": [{"item_id": popular[0], "quantity": 1, "unit_price": 9.0}],
    }
    assert (
        call(app, "POST", "/v1/events/purchases", json=order, headers=bearer("shop")).status == 200
    )
    answer = offers(app, "brand-new", "n=5&mode=discover")
    assert answer["basis"] == "recalculated" and answer["personalised"] is True
    assert popular[0] not in ids(answer)


def test_a_cached_buy_again_answer_follows_the_clock(
    shop: tuple[sa.Engine, Path], closing: Closing
) -> None:
    """Which of a customer's items are due, and in which order, changes with time alone, no
    data changing: a cached "buy again" answer holds until then (not recomputed), no longer.
    Soap every 10 days, last 30 days ago (×3, +0.1 a day); milk every 2 days, last 4 days
    ago (×2, +0.5 a day): milk overtakes soap 2.5 days later."""
    engine, artifacts = shop
    clock = FixedClock(NOW)
    app = closing(make_app(engine, artifacts, clock))
    soap, milk = (str(item) for item, _ in live(engine).popular[:2])
    bought = [(soap, days) for days in (50, 40, 30)] + [(milk, days) for days in (8, 6, 4)]
    for number, (item, days) in enumerate(bought):
        order = {
            "order_id": f"due-{number}",
            "customer_id": "regular",
            "ordered_at": (NOW - timedelta(days=days)).isoformat(),
            "lines": [{"item_id": item, "quantity": 1, "unit_price": 2.0}],
        }
        posted = call(app, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
        assert posted.status == 200, posted.text

    def due() -> list[str]:
        answer = offers(app, "regular", "n=2&mode=replenish")
        return [o["item_id"] for o in answer["items"] if o["source"] == "due"]

    service = app.state.service
    assert due() == [soap, milk]
    computed = service.tally.computed
    clock.advance(timedelta(days=2.5, seconds=-1))
    assert due() == [soap, milk] and service.tally.computed == computed  # served from cache
    clock.advance(timedelta(seconds=2))
    assert due() == [milk, soap] and service.tally.computed == computed + 1
    clock.advance(timedelta(days=30))  # milk stays ahead: nothing to recompute for
    assert due() == [milk, soap] and service.tally.computed == computed + 1


def test_an_objection_and_an_erasure_apply_at_once(app: FastAPI) -> None:
    engine = engine_of(app)
    customer, _ = cached_customer(engine)
    assert offers(app, customer)["basis"] == "personal"
    change = {"source": "account page", "objected_to_profiling": True}
    assert (
        call(app, "PUT", f"/v1/customers/{customer}", json=change, headers=bearer("shop")).status
        == 200
    )
    assert offers(app, customer)["basis_reason"] == "popular: objected to profiling"
    with engine.connect() as connection:
        assert registry.cached(connection, customer) is None

    other, _ = cached_customer_after(engine, customer)
    assert offers(app, other)["basis"] == "personal"
    erased = call(app, "DELETE", f"/v1/privacy/customers/{other}", headers=bearer("dpo"))
    assert erased.status == 200, erased.text
    assert offers(app, other)["basis_reason"] == "popular: unknown customer"
    with engine.connect() as connection:
        assert registry.cached(connection, other) is None


def cached_customer_after(engine: sa.Engine, skip: str) -> tuple[str, list[list[object]]]:
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(recommendations)
            .where(recommendations.c.customer_id > skip)
            .order_by(recommendations.c.customer_id)
        ).first()
    assert row is not None
    return str(row.customer_id), list(row.items)


def widget_campaign(
    app: FastAPI, campaign_name: str, mode: Mode
) -> tuple[Campaign, Snapshot, planner.Context]:
    """The shipped campaign ``campaign_name`` with the widget's offer rules (``mode``, four
    items, no filters, every customer in its audience), the app's store as the planner reads
    it now and the planner's context: what the widget's answers are compared with."""
    engine = engine_of(app)
    settings: Settings = app.state.service.settings
    loaded, failures = load_all(ROOT / "campaigns", settings, ROOT / "templates")
    assert failures == []
    campaign = next(c for c in loaded if c.name == campaign_name)
    rules = campaign.offer.model_copy(
        update={
            "mode": mode,
            "items": 4,
            "categories": (),
            "min_price": None,
            "max_price": None,
            "exclude_items": (),
            "exclude_categories": (),
        }
    )
    campaign = campaign.model_copy(
        update={
            "offer": rules,
            "audience": campaign.audience.model_copy(update={"replenishment_due": False}),
        }
    )
    with engine.connect() as connection:
        snapshot = load_snapshot(connection, settings, NOW)
    return campaign, snapshot, planner.context_for(settings, NOW, snapshot.items, snapshot.popular)


@pytest.mark.parametrize(
    ("campaign_name", "mode"),
    [("cross_sell", Mode.DISCOVER), ("replenish", Mode.REPLENISH), ("winback", Mode.MIXED)],
)
def test_widget_and_email_offer_the_same_items(
    app: FastAPI, campaign_name: str, mode: Mode
) -> None:
    """For every double opt-in customer, the API's list starts with exactly the items the
    planner would put into a campaign e-mail with the same offer rules."""
    campaign, snapshot, context = widget_campaign(app, campaign_name, mode)
    compared = 0
    for view in snapshot.views:
        if view.customer.consent_basis.value != "double_opt_in" or compared >= 25:
            continue
        email = [offer.item_id for offer in planner.offers_for(campaign, view, context)]
        widget = ids(offers(app, view.customer.id, f"n=4&mode={mode.value}"))
        assert widget[: len(email)] == email, view.customer.id
        compared += 1
    assert compared == 25


@pytest.mark.parametrize(
    ("campaign_name", "mode"),
    [("winback", Mode.MIXED), ("cross_sell", Mode.DISCOVER), ("replenish", Mode.REPLENISH)],
)
def test_widget_and_email_agree_for_a_customer_who_bought_since_training(
    app: FastAPI, campaign_name: str, mode: Mode
) -> None:
    """A customer who ordered after the model's data cutoff (last night's training, this
    morning's order) is re-scored from their history by the widget: the e-mail's offers are
    chosen from the same re-scored list, not from the cached one the training left."""
    _, before, _ = widget_campaign(app, campaign_name, mode)
    customer = next(  # an existing customer's e-mail offers only the categories they bought
        v.customer.id
        for v in before.views
        if v.customer.consent_basis.value == "double_opt_in" and v.personal and v.history.count > 2
    )
    [view] = [v for v in before.views if v.customer.id == customer]
    # a taste they never showed: a category they never bought, five of its items at once
    category = next(
        item.category
        for item in before.items.values()
        if item.category not in view.history.categories and item.in_stock
    )
    bought = [i.id for i in before.items.values() if i.category == category and i.in_stock][:5]
    order = {
        "order_id": "since-training",
        "customer_id": customer,
        "ordered_at": (NOW - timedelta(hours=1)).isoformat(),
        "lines": [{"item_id": item, "quantity": 1, "unit_price": 4.0} for item in bought],
    }
    posted = call(app, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
    assert posted.status == 200, posted.text
    campaign, snapshot, context = widget_campaign(app, campaign_name, mode)
    campaign = campaign.model_copy(  # the whole list: the order past the first few counts too
        update={"offer": campaign.offer.model_copy(update={"items": 10})}
    )
    [view] = [v for v in snapshot.views if v.customer.id == customer]
    email = [offer.item_id for offer in planner.offers_for(campaign, view, context)]
    answer = offers(app, customer, f"n=10&mode={mode.value}")
    assert "recalculated" in answer["basis_reason"]
    service = app.state.service
    served = service.basis(customer, service.snapshot()).personal.items or []
    assert [str(e[0]) for e in view.personal or []] == [str(e[0]) for e in served]
    assert email and ids(answer)[: len(email)] == email


def test_similar_items(app: FastAPI) -> None:
    engine = engine_of(app)
    _, cached = cached_customer(engine)
    item = str(cached[0][0])
    reply = call(app, "GET", f"/v1/items/{item}/similar?n=3", headers=bearer("reader"))
    assert reply.status == 200, reply.text
    found = reply.json()
    assert found["model_version"] == live(engine).version
    assert 0 < len(found["items"]) <= 3 and item not in [e["item_id"] for e in found["items"]]
    unknown = call(app, "GET", "/v1/items/NO-SUCH-ITEM/similar", headers=bearer("reader"))
    assert unknown.status == 404 and "NO-SUCH-ITEM" in unknown.json()["detail"]


def answers(outcome: str) -> float:
    value = REGISTRY.get_sample_value("recocamp_api_next_best_offer_total", {"outcome": outcome})
    return value or 0.0


def test_answers_are_cached_and_kept_when_somebody_else_changes(app: FastAPI) -> None:
    engine = engine_of(app)
    service = app.state.service
    customer, _ = cached_customer(engine)
    first = offers(app, customer, "n=3")
    computed, cached = service.tally.computed, answers("cached")
    assert offers(app, customer, "n=3") == first
    assert answers("cached") == cached + 1 and service.tally.computed == computed
    change = {"source": "account page", "objected_to_profiling": False}  # withdrawn
    reply = call(app, "PUT", f"/v1/customers/{OBJECTOR}", json=change, headers=bearer("shop"))
    assert reply.status == 200
    assert offers(app, customer, "n=3") == first
    assert service.tally.computed == computed  # somebody else's change: not recomputed


def test_many_filter_values_are_refused_or_answered_without_being_kept(app: FastAPI) -> None:
    """Each kept answer holds its query: 100,000 of them with 3,000 made-up exclusions each
    took ~38 GB of one serving process (measured: 385 KB an answer). Past 100 values a
    filter is a 422 like FastAPI's for a long list; past 20 in all the answer is computed
    each time, not kept."""
    engine = engine_of(app)
    service = app.state.service
    customer, _ = cached_customer(engine)
    many = "&".join(f"exclude=x{i}" for i in range(101))
    reply = call(app, "GET", NBO.format(customer) + "?" + many, headers=bearer("shop"))
    assert reply.status == 422, reply.text
    assert reply.json()["detail"] == [
        {
            "type": "too_long",
            "loc": ["query", "exclude"],
            "msg": "List should have at most 100 items after validation, not 101",
        }
    ]
    big = "n=3&" + "&".join(f"exclude=x{i}" for i in range(21))
    first = offers(app, customer, big)
    computed, kept = service.tally.computed, service.cache.count
    assert offers(app, customer, big) == first
    assert service.tally.computed == computed + 1 and service.cache.count == kept
    small = "n=3&" + "&".join(f"exclude=x{i}" for i in range(20))
    offers(app, customer, small)
    assert offers(app, customer, small) == offers(app, customer, small)
    assert service.tally.computed == computed + 2 and service.cache.count == kept + 1


def test_a_new_live_model_is_served_without_a_restart(app: FastAPI, tmp_path: Path) -> None:
    engine = engine_of(app)
    service = app.state.service
    listening(app)
    customer, _ = cached_customer(engine)
    old = offers(app, customer)["model_version"]
    cleared = service.tally.cleared
    version = second_model(engine, settings_for(Path(service.settings.recommender.artifacts_dir)))
    assert version != old
    if engine.dialect.name == "postgresql":  # another writer: known once notified
        wait_until(lambda: service.tally.cleared > cleared)
    assert offers(app, customer)["model_version"] == version


# -- the lean route's parameters follow the same rules as FastAPI's own ----------------------


def fastapi_twin(app: FastAPI) -> FastAPI:
    """The same endpoint behind a plain APIRoute (FastAPI parses and validates), answered by
    the same error handlers."""
    lean = next(
        r for r in app.router.routes if getattr(r, "path_format", "") == NBO.format("{customer_id}")
    )
    assert isinstance(lean, APIRoute)
    twin = FastAPI()
    twin.state.authenticator = app.state.authenticator
    twin.exception_handlers.update(app.exception_handlers)
    twin.router.routes.append(APIRoute(lean.path, lean.endpoint, methods=["GET"]))
    return twin


@pytest.mark.parametrize(
    "query",
    [
        "n=0",
        "n=51",
        "n=abc",
        "n=2.5",
        "mode=sometimes",
        "n=0&mode=x",
        "n=-3&mode=MIXED",
        "category=" + "c" * 201,
        "exclude=" + "e" * 201,
        "&".join(f"exclude=e{i}" for i in range(101)),
        "&".join(f"category=c{i}" for i in range(101)),
        "&".join(f"exclude=e{i}" for i in range(100)),
        "n=50&mode=replenish",
        "n=&mode=",
        # hostile numbers: other scripts' digits, signs, whitespace, separators, bounds
        "n=%D9%A3",  # Arabic-Indic 3: int() reads it, pydantic does not
        "n=%EF%BC%93",  # fullwidth 3
        "n=%E0%A5%A9",  # Devanagari 3
        "n=%C2%B3",  # superscript 3
        "n=+3",
        "n=-0",
        "n=--3",
        "n=%2B%2B3",
        "n=%203%20",
        "n=%093%0A",
        "n=%C2%A03",  # no-break space
        "n=%E2%80%833",  # em space
        "n=3%00",
        "n=1_0",
        "n=_10",
        "n=10_",
        "n=3.0",
        "n=3.",
        "n=3e0",
        "n=0x3",
        "n=0b11",
        "n=03",
        "n=inf",
        "n=nan",
        "n=true",
        "n=" + "9" * 5000,
        "n=50",
        "n=1",
        "n=0&n=3",
        "n=3&n=0",
        "mode=Mixed",
        "mode=%20mixed",
        "mode=mixed%00",
        "mode=m%C4%B1xed",  # dotless i
    ],
)
def test_lean_parameters_are_validated_like_fastapi(app: FastAPI, query: str) -> None:
    path = NBO.format("12345") + "?" + query
    lean = call(app, "GET", path, headers=bearer("shop"))
    plain = call(fastapi_twin(app), "GET", path, headers=bearer("shop"))
    assert lean.status == plain.status
    assert lean.status in (200, 422)
    if plain.status == 422:
        assert lean.json() == plain.json()


@pytest.mark.parametrize("customer", ["x" * 65, "a%00b", "tab%09", "del%7F", "bidi%E2%80%AE"])
def test_customer_ids_the_store_cannot_hold_are_422(app: FastAPI, customer: str) -> None:
    path = NBO.format(customer)
    reply = call(app, "GET", path, headers=bearer("shop"))
    assert reply.status == 422
    assert reply.json()["detail"][0]["loc"] == ["path", "customer_id"]
    plain = call(fastapi_twin(app), "GET", path, headers=bearer("shop"))
    assert reply.json() == plain.json()


def test_a_commit_is_seen_by_every_request_that_arrives_after_it(app: FastAPI) -> None:
    """Requests that were already inside the app share the last look at the change log; one
    that arrives after a commit always looks again (SQLite's PRAGMA data_version)."""
    service = app.state.service
    engine = engine_of(app)
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's change log (PostgreSQL: test_api_offer_changes)")
    customer, _ = cached_customer(engine)
    queued = time.perf_counter()
    offers(app, customer, "n=3")
    forgotten = service.tally.forgotten
    with engine.begin() as connection:  # another connection commits a change of the customer
        connection.execute(
            sa.update(customers)
            .where(customers.c.id == customer)
            .values(objected_to_profiling=True)
        )
    service.catch_up(queued)  # entered before the last look: shares it
    assert service.tally.forgotten == forgotten
    service.catch_up(time.perf_counter())  # arrived after the commit
    assert service.tally.forgotten == forgotten + 1
    assert offers(app, customer, "n=3")["basis_reason"] == "popular: objected to profiling"


def test_the_cli_and_the_api_apply_one_objection_rule(
    app: FastAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer who objected keeps a cached list until the next training (an import sets
    the flag, nothing else): ``recocamp recommend`` and the API both ignore it."""
    engine = engine_of(app)
    customer, _ = cached_customer(engine)
    with engine.begin() as connection:
        connection.execute(
            sa.update(customers)
            .where(customers.c.id == customer)
            .values(objected_to_profiling=True)
        )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    shown = CliRunner().invoke(cli, ["recommend", customer, "--n", "5"])
    answer = offers(app, customer, "n=5")
    assert shown.exit_code == 0, shown.output
    assert f"customer {customer}: popular: objected to profiling" in shown.stdout
    assert answer["basis_reason"] == "popular: objected to profiling"
    assert answer["basis"] == "popular" and answer["personalised"] is False
    assert str(live(engine).popular[0][0]) in shown.stdout  # the popularity list, not the cache
    sources = {entry["source"] for entry in answer["items"]}
    assert sources <= {"popular", "history", "due"}


def test_the_cli_and_the_api_take_an_objection_under_another_form_of_the_id(
    app: FastAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``José`` (composed) objected; another system's orders name him decomposed. Asked
    for the decomposed id, ``recocamp recommend`` found no record under it and ranked his
    history personally; it goes by every form of the id, as the API does."""
    engine = engine_of(app)
    composed, decomposed = "Jos\u00e9-cli", "Jose\u0301-cli"
    bought = [str(entry[0]) for entry in live(engine).popular[:3]]
    with engine.begin() as connection:
        queries.upsert_customers(
            connection, [Customer(composed, None, objected_to_profiling=True)], NOW
        )
        queries.store_orders(
            connection,
            [
                Purchase("J-cli", n, decomposed, item, 1, 2.5, NOW - timedelta(days=2))
                for n, item in enumerate(bought, 1)
            ],
            None,
        )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    for given in (decomposed, composed):
        shown = CliRunner().invoke(cli, ["recommend", given, "--n", "5"])
        assert shown.exit_code == 0, shown.output
        assert "popular: objected to profiling" in shown.stdout, shown.stdout
    answer = offers(app, "Jose%CC%81-cli", "n=5")
    assert answer["basis_reason"] == "popular: objected to profiling"


def test_the_cli_and_the_api_recalculate_a_customer_the_model_and_cache_leave_out(
    app: FastAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer with orders who objected (out of the cache and of every saved model) and
    withdrew the objection: ``recocamp recommend`` computes their list from the live model,
    as the API does (``serving.personal_list``), instead of calling them history-less."""
    engine = engine_of(app)
    customer, _ = cached_customer(engine)
    with engine.begin() as connection:  # what the objection left: no cached row, no model row
        connection.execute(
            sa.delete(recommendations).where(recommendations.c.customer_id == customer)
        )
        row = registry.live(connection)
    assert row is not None
    assert models.drop_customers(Path(row.path), {customer}) == 1
    with engine.connect() as connection:
        row = registry.live(connection)
        history = history_of(views.customer_orders(connection, customer, NOW), {})
    assert row is not None and history.count >= 3
    settings = app.state.service.settings
    fitted, data, _ = models.load(Path(row.path), settings.recommender)
    assert customer not in set(data.customers.tolist())
    expected = serving.Live.of(row.version, fitted, data, row.data_cutoff).rescore(
        history, 5, settings.recommender.time_decay_half_life_days
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    shown = CliRunner().invoke(cli, ["recommend", customer, "--n", "5"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    reason = "recalculated: not in the cached lists"
    assert f"customer {customer}: {reason} (model {row.version})" in shown.stdout
    assert offers(app, customer, "n=5")["basis_reason"] == reason
    rows = [line.split("│")[2].strip() for line in shown.stdout.splitlines() if "│" in line]
    assert rows == [str(item) for item, _ in expected]  # the heading has its own bars
