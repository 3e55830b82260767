"""An order is written whole, once: two requests (or two imports) of the same new order at
the same time never mix their lines; one writes it, the other hears "already stored" (same
lines) or a conflict (other lines). On SQLite and PostgreSQL, with real concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from recocamp.clock import FixedClock
from recocamp.data.ingest import Importer, ImportReport
from recocamp.errors import DataImportError
from recocamp.store.engine import make_engine, upgrade
from recocamp.store.schema import orders, purchases
from tests.api_shop import Reply, bearer, call, engine_of, make_app
from tests.conftest import NOW, write_csv

EVENTS = "/v1/events/purchases"
ROUNDS = 25
HEADER = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at", "line_no"]


@pytest.fixture
def app(engine: sa.Engine, tmp_path: Path) -> FastAPI:
    return make_app(engine, tmp_path)


def at_once(*tasks: Callable[[], Any]) -> list[Any]:
    """Run the tasks in threads released together by a barrier; their results in order."""
    barrier = threading.Barrier(len(tasks))
    results: list[Any] = [None] * len(tasks)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = tasks[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(tasks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def order(order_id: str, items: list[str]) -> dict[str, Any]:
    lines = [{"item_id": item, "quantity": 1, "unit_price": 2.5} for item in items]
    return {
        "order_id": order_id,
        "customer_id": "c1",
        "ordered_at": "2012-01-04T18:30:00+00:00",
        "lines": lines,
    }


def stored_items(engine: sa.Engine) -> dict[str, list[str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(purchases.c.order_id, purchases.c.item_id).order_by(
                purchases.c.order_id, purchases.c.line_no
            )
        ).all()
    found: dict[str, list[str]] = {}
    for order_id, item_id in rows:
        found.setdefault(order_id, []).append(item_id)
    return found


def poster(app: FastAPI, body: dict[str, Any]) -> Callable[[], Reply]:
    return lambda: call(app, "POST", EVENTS, json=body, headers=bearer("shop"))


def test_two_posts_of_one_new_order_with_other_lines_never_mix(app: FastAPI) -> None:
    winners: dict[str, str] = {}
    for n in range(ROUNDS):
        order_id = f"R{n}"
        first = order(order_id, [f"a{n}-1", f"a{n}-2"])
        second = order(order_id, [f"b{n}-1", f"b{n}-2"])
        replies: list[Reply] = at_once(poster(app, first), poster(app, second))
        statuses = sorted(reply.status for reply in replies)
        assert statuses == [200, 409], [reply.text for reply in replies]
        won = next(reply for reply in replies if reply.status == 200)
        lost = next(reply for reply in replies if reply.status == 409)
        assert won.json()["new_orders"] == 1 and won.json()["lines_written"] == 2
        assert repr(order_id) in lost.json()["detail"]
        winners[order_id] = "a" if replies[0].status == 200 else "b"
    stored = stored_items(engine_of(app))
    assert stored == {
        order_id: [f"{side}{order_id[1:]}-1", f"{side}{order_id[1:]}-2"]
        for order_id, side in winners.items()
    }


def test_two_posts_of_one_new_order_with_the_same_lines_write_it_once(app: FastAPI) -> None:
    for n in range(ROUNDS):
        body = order(f"S{n}", ["i1", "i2", "i3"])
        replies: list[Reply] = at_once(poster(app, body), poster(app, body))
        assert [reply.status for reply in replies] == [200, 200]
        answers = sorted((r.json()["new_orders"], r.json()["duplicate_orders"]) for r in replies)
        assert answers == [(0, [f"S{n}"]), (1, [])]
    stored = stored_items(engine_of(app))
    assert stored == {f"S{n}": ["i1", "i2", "i3"] for n in range(ROUNDS)}


def _lines(order_ids: list[str]) -> list[list[object]]:
    return [
        [order_id, "c1", f"x-{order_id}-{line}", 1, 2.5, "2024-01-01T10:00:00+00:00", line]
        for order_id in order_ids
        for line in (1, 2)
    ]


def test_two_imports_of_overlapping_files_at_once_write_each_order_whole(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """Each round: two files share orders with the same lines, and one order has a third
    line in the right file only; imported at the same time, one import wins, the other is
    refused naming that order and the line it starts on, and shared orders are written once."""
    importer = Importer(engine, zone=ZoneInfo("UTC"), now=NOW)
    for n in range(6):
        shared = [f"F{n}-{k:02d}" for k in range(30)]
        left = write_csv(tmp_path / f"left{n}.csv", HEADER, _lines(shared))
        extra: list[object] = [shared[0], "c1", "other", 1, 2.5, "2024-01-01T10:00:00+00:00", 3]
        rows = _lines(shared)
        rows.insert(2, extra)
        right = write_csv(tmp_path / f"right{n}.csv", HEADER, rows)
        results = at_once(partial(importer.purchases, left), partial(importer.purchases, right))
        reports = [r for r in results if isinstance(r, ImportReport)]
        refused = [r for r in results if isinstance(r, DataImportError)]
        assert len(reports) == 1 and len(refused) == 1, results
        right_won = reports[0].file == str(right)
        assert reports[0].imported == 2 * len(shared) + right_won
        assert [(p.line, p.column, p.value) for p in refused[0].problems] == [
            (2, "order_id", shared[0])
        ]
        stored = stored_items(engine)
        first = [f"x-{shared[0]}-1", f"x-{shared[0]}-2"] + (["other"] if right_won else [])
        assert stored[shared[0]] == first
        assert all(stored[o] == [f"x-{o}-1", f"x-{o}-2"] for o in shared[1:])


def test_orders_stored_before_the_orders_table_are_backfilled(db_url: str) -> None:
    """Migration 0010 gives every stored order its digest: posting one again is a repeat,
    also for a price stored before prices were held to 4 decimals, which NUMERIC(14, 4)
    rounds (PostgreSQL keeps 2.00005 as 2.0001; posted now, the order says 2.0001)."""
    engine = make_engine(db_url)
    upgrade(engine, "0009")
    line = {
        "order_id": "old",
        "customer_id": "c1",
        "item_id": "i1",
        "quantity": 1,
        "unit_price": 2.5,
        "is_return": False,
    }
    with engine.begin() as connection:
        second = {"line_no": 2, "item_id": "i2", "unit_price": 2.00005}
        rows = [{**line, "line_no": 1, "ordered_at": NOW}, {**line, **second, "ordered_at": NOW}]
        connection.execute(sa.insert(purchases), rows)
    upgrade(engine)
    with engine.connect() as connection:
        assert connection.execute(sa.select(orders.c.order_id)).scalars().all() == ["old"]
    app = make_app(engine, Path("/nonexistent"), FixedClock(NOW))  # the orders' own clock
    same = {
        "order_id": "old",
        "customer_id": "c1",
        "ordered_at": NOW.isoformat(),
        "lines": [
            {"item_id": "i1", "quantity": 1, "unit_price": 2.5},
            {"item_id": "i2", "quantity": 1, "unit_price": 2.0001},
        ],
    }
    reply = call(app, "POST", EVENTS, json=same, headers=bearer("shop"))
    assert reply.status == 200 and reply.json()["duplicate_orders"] == ["old"], reply.text
    other = same | {"lines": same["lines"][:1]}
    assert call(app, "POST", EVENTS, json=other, headers=bearer("shop")).status == 409
    engine.dispose()
