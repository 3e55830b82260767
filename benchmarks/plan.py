"""Planning and rendering speed for campaigns on synthetic customers.

    .venv/bin/python benchmarks/plan.py [--customers 1000000] [--renders 20000]

Targets (issue #4): planning >= 20,000 decisions/s (render excluded), rendering >= 5,000
e-mails/s, printed next to Jinja's own speed on the same template and contexts (an
unsandboxed ``jinja2.Environment`` rendering pre-built contexts: the ratio is our overhead
for sandboxing, strict undefined, CSS-inlined sources and context building).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from jinja2 import Environment, FileSystemLoader

from recocamp.campaigns import caps, render
from recocamp.campaigns.files import load_all
from recocamp.campaigns.loyalty import Standing
from recocamp.campaigns.planner import Context, CustomerView, Outcome, plan
from recocamp.campaigns.segments import History, Order
from recocamp.domain import ConsentBasis, Customer, Item
from recocamp.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2024, 6, 4, 10, 0, tzinfo=UTC)
ZONES = ("Europe/Berlin", "Europe/London", "America/New_York", "Australia/Sydney", None)


def synthetic_views(
    n: int, n_items: int = 5000, seed: int = 1
) -> tuple[list[CustomerView], dict[str, Item]]:
    rng = np.random.default_rng(seed)
    categories = [f"cat{c}" for c in range(20)]
    items = {
        f"i{k}": Item(f"i{k}", f"Item {k}", categories[k % 20], float(1 + k % 50))
        for k in range(n_items)
    }
    ids = list(items)
    popularity = 1 / np.arange(1, n_items + 1) ** 1.1
    popularity /= popularity.sum()
    orders_per = rng.integers(1, 8, n)
    picks = rng.choice(n_items, size=(n, 12), p=popularity)
    ages = rng.uniform(1, 400, size=(n, 8))
    kinds = (ConsentBasis.DOUBLE_OPT_IN, ConsentBasis.EXISTING_CUSTOMER, ConsentBasis.NONE)
    bases = [kinds[k] for k in rng.choice(3, n, p=[0.55, 0.3, 0.15])]
    views = []
    for c in range(n):
        bought = [ids[k] for k in picks[c]]
        orders = tuple(
            sorted(
                (
                    Order(
                        NOW - timedelta(days=float(ages[c, o])),
                        25.0,
                        frozenset(bought[o : o + 3]),
                        frozenset(items[i].category for i in bought[o : o + 3]),
                    )
                    for o in range(orders_per[c])
                ),
                key=lambda order: order.at,
            )
        )
        customer = Customer(
            str(c),
            f"customer-{c}@example.test",
            "Anna",
            "en",
            ZONES[c % 5],
            birthday=date(1980, 1, 1) + timedelta(days=c % 366),
            consent_basis=bases[c],
            consent_at=NOW - timedelta(days=500),
        )
        personal = [[ids[k], 1.0 - 0.01 * r] for r, k in enumerate(picks[c])]
        tier = ("silver", "gold", "platinum")[c % 3]
        standing = Standing(100, tier, None, None)
        views.append(CustomerView(customer, History(orders), personal=personal, standing=standing))
    return views, items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--renders", type=int, default=20_000)
    args = parser.parse_args()
    settings = Settings()
    started = time.perf_counter()
    views, items = synthetic_views(args.customers)
    setup_s = time.perf_counter() - started
    print(f"{args.customers:,} synthetic customers built in {setup_s:.0f} s (setup)")
    campaigns, failures = load_all(ROOT / "campaigns", settings, ROOT / "templates")
    assert not failures, failures
    popular = [[f"i{k}", 1.0 - k / 100] for k in range(60)]
    context = Context(NOW, items, popular, caps.CapPolicy(), ZoneInfo("Europe/London"))
    sends = {}
    for campaign in campaigns:
        started = time.perf_counter()
        decisions = plan(campaign, views, context)
        seconds = time.perf_counter() - started
        sends[campaign.name] = [d for d in decisions if d.outcome is Outcome.SEND]
        rate, to_send = len(decisions) / seconds, len(sends[campaign.name])
        print(
            f"plan {campaign.name:10}: {rate:10,.0f} decisions/s ({seconds:.1f} s; "
            f"{to_send:,} to send; target >= 20,000/s)"
        )
    winback = next(c for c in campaigns if c.name == "winback")
    chosen = sends["winback"][: args.renders]
    by_id = {v.customer.id: v for v in views}
    links = ("https://shop.example.test/u/token", "https://shop.example.test/p/token")
    renderer = render.Renderer(ROOT / "templates")
    subject = winback.template.subject["en"]
    started = time.perf_counter()
    for decision in chosen:
        view = by_id[decision.customer_id]
        context_ = render.context_for(decision, view, winback, settings.shop, links, "reason")
        renderer.render(subject, "winback.html", "winback.txt", context_)
    ours = len(chosen) / (time.perf_counter() - started)
    contexts = [
        render.context_for(d, by_id[d.customer_id], winback, settings.shop, links, "reason")
        for d in chosen
    ]
    plain = Environment(loader=FileSystemLoader(str(ROOT / "templates")), autoescape=True)
    html, text, subject_t = (
        plain.get_template("winback.html"),
        plain.get_template("winback.txt"),
        plain.from_string(subject),
    )
    started = time.perf_counter()
    for context_ in contexts:
        subject_t.render(context_), html.render(context_), text.render(context_)
    jinja = len(contexts) / (time.perf_counter() - started)
    print(f"render winback (subject + HTML + text): {ours:,.0f} e-mails/s (target >= 5,000/s)")
    print(f"plain Jinja, same template and contexts: {jinja:,.0f}/s; ratio {ours / jinja:.2f}")


if __name__ == "__main__":
    main()
