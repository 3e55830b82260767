"""Campaign commands: ``recocamp check``, ``plan`` and ``preview`` (nothing is sent)."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from recocamp.campaigns import audience, compose, planner, predictive, render, run, segments
from recocamp.campaigns import check as checks
from recocamp.campaigns.files import FORECAST_KEYS, Campaign, caps_defaults
from recocamp.campaigns.run import load_snapshot
from recocamp.cli.common import (
    MAX_ROWS,
    CampaignsDir,
    Output,
    TemplatesDir,
    app,
    clock,
    console,
    current_settings,
    engine_for,
    errors_to_exit,
    one_campaign,
    parse_as_of,
    print_error,
    print_json,
    print_warning,
    show,
    tombstone_key_problem,
    warn_no_campaigns,
    warn_weak_secrets,
    within,
    write_output,
)
from recocamp.domain import Item, composed
from recocamp.errors import ConfigError, Problem, RecocampError
from recocamp.settings import Settings
from recocamp.store import queries
from recocamp.store.engine import exists


@app.command("check")
def check(
    campaigns: CampaignsDir = Path("campaigns"),
    templates: TemplatesDir = Path("templates"),
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Warnings (a filter naming a category no item has) fail too."
        ),
    ] = False,
) -> None:
    """Validate settings, every campaign, every template and their cross-references; with a
    database, the campaigns' filters against its catalogue (warnings)."""
    with errors_to_exit():
        settings = current_settings()
        loaded, failures = checks.campaign_problems(settings, campaigns, templates)
    warn_no_campaigns(campaigns)
    warned = warn_weak_secrets(settings)
    for failure in failures:
        print_error(str(failure))
    unknown = tombstone_key_problem(settings, adopt=False)
    if unknown:
        print_error(unknown)
    warned += _catalogue_warnings(settings, loaded, campaigns)
    warned += _language_warnings(settings, loaded, campaigns)
    warned += _opt_out_warnings(settings, loaded, templates)
    if failures or unknown or (strict and warned):
        raise typer.Exit(2)
    console.print(f"ok: settings, {len(loaded)} campaign(s) and their templates are valid")


def _catalogue_warnings(settings: Settings, loaded: list[Campaign], campaigns: Path) -> int:
    """Prints a warning per filter value no item in the catalogue has; returns how many. A
    missing, unmigrated or unreachable database, or an empty catalogue, is a note: check
    works without a database (and never creates one)."""
    catalogue, why = _catalogue(settings, loaded)
    if catalogue is None:
        console.print(f"note: filters not checked against the catalogue: {why}")
        return 0
    warned = 0
    for campaign in loaded:
        path = campaigns / f"{campaign.name}.toml"
        text = checks.campaign_text(campaigns, campaign)
        for problem in checks.catalogue_problems(campaign, text, catalogue):
            print_warning(f"{path}: {problem}")
            warned += 1
    return warned


def _language_warnings(settings: Settings, loaded: list[Campaign], campaigns: Path) -> int:
    """Prints a warning per subject line missing in the shop's language; returns how many."""
    warned = 0
    for campaign in loaded:
        path = campaigns / f"{campaign.name}.toml"
        text = checks.campaign_text(campaigns, campaign)
        for problem in checks.language_problems(campaign, text, settings.shop.default_locale):
            print_warning(f"{path}: {problem}")
            warned += 1
    return warned


def _opt_out_warnings(settings: Settings, loaded: list[Campaign], templates: Path) -> int:
    """Prints a warning per template without the unsubscribe link or the existing
    customers' notice (``checks.opt_out_problems``); returns how many."""
    warned = 0
    for campaign in loaded:
        for name, problem in checks.opt_out_problems(campaign, templates, settings.templates):
            print_warning(f"{templates / name}: {problem}")
            warned += 1
    return warned


def _catalogue(settings: Settings, loaded: list[Campaign]) -> tuple[checks.Catalogue | None, str]:
    if not exists(settings.database_url):
        return None, "no database"
    try:
        with engine_for(settings).connect() as connection:
            categories = queries.item_categories(connection)
            known = queries.known_items(connection, checks.named_items(loaded))
    except RecocampError as exc:
        return None, str(exc)
    if not categories:
        return None, "the catalogue has no items"
    return checks.Catalogue(frozenset(categories), known), ""


def _planning(
    settings: Settings, as_of: str | None, campaign: Campaign
) -> tuple[audience.Snapshot, planner.Context]:
    end = parse_as_of(as_of, settings.shop.zone) if as_of else clock.now()
    days = planner.history_days(campaign, caps_defaults(settings))
    with engine_for(settings).connect() as connection:
        snapshot = load_snapshot(connection, settings, end, history_days=days)
    context = planner.context_for(
        settings, end, snapshot.items, snapshot.popular, snapshot.forecast
    )
    return snapshot, context


@app.command("plan")
def plan_campaign(
    campaign: str,
    as_of: Annotated[
        str | None, typer.Option(help="Plan as if it were this time (default: now).")
    ] = None,
    format: Annotated[Output, typer.Option("--format")] = Output.table,
    campaigns: CampaignsDir = Path("campaigns"),
    templates: TemplatesDir = Path("templates"),
    limit: Annotated[
        int, typer.Option(callback=within(0, MAX_ROWS), help="Decisions shown in the table.")
    ] = 20,
) -> None:
    """Dry run: who would get what, who is skipped by which rule. Writes nothing."""
    with errors_to_exit():
        settings = current_settings()
        chosen = one_campaign(settings, campaign, campaigns, templates)
        snapshot, context = _planning(settings, as_of, chosen)
        decisions, unrendered = run.unrendered_as_skips(
            chosen,
            planner.plan(chosen, snapshot.views, context),
            snapshot.views,
            settings,
            render.Renderer(templates, limits=settings.templates),
            settings.signing_key_bytes() or _EPHEMERAL,
            context.now,
        )
    tally = planner.counts(decisions)
    # why a filter matches nobody: a value no item in the catalogue has
    path = campaigns / f"{chosen.name}.toml"
    text = checks.campaign_text(campaigns, chosen)
    catalogue = checks.Catalogue.of(snapshot.items)
    warnings = [f"{path}: {p}" for p in checks.catalogue_problems(chosen, text, catalogue)]
    warnings += _unrendered_warning(path, unrendered)
    if format is Output.json:
        document = {
            "campaign": chosen.name,
            "as_of": context.now.isoformat(),
            "decisions": [_decision_json(d) for d in decisions],
            "counts": tally,
            "warnings": warnings,
        }
        print_json(document, indent=1)
        return
    for warning in warnings:
        print_warning(warning)
    table = Table(
        title=f"plan {chosen.name} at {context.now.isoformat()}: {len(decisions):,} customers"
    )
    table.add_column("reason")
    table.add_column("customers", justify="right")
    for reason, number in tally.items():
        table.add_row(reason, f"{number:,}")
    show(table)
    sample = Table(title=f"first {limit} decisions that contact or defer")
    shown = [d for d in decisions if d.outcome in (planner.Outcome.SEND, planner.Outcome.DEFER)][
        :limit
    ]
    # a predictive campaign's words: which forecast (or fallback) chose each customer
    said = [d.reason.partition(planner.DETAIL)[2] for d in shown]
    columns = ("customer", "outcome", "variant", "send at", "offers")
    for column in (*columns, "why") if any(said) else columns:
        sample.add_column(column)
    items = context.items
    for d, why in zip(shown, said, strict=True):
        send_at = d.send_at.isoformat() if d.send_at else ""
        offered = "; ".join(f"{_title(items, o.item_id)} ({o.why})" for o in d.offers)
        cells = (d.customer_id, d.outcome.value, d.variant or "", send_at, offered)
        sample.add_row(*cells, *((why,) if any(said) else ()))
    show(sample)


def _unrendered_warning(path: Path, failed: Mapping[str, str], shown: int = 3) -> list[str]:
    """One line on the customers whose subject fails on their data (the run skips them as
    ``not_rendered``), naming the first few with the error."""
    if not failed:
        return []
    first = "; ".join(f"customer {c}: {failed[c]}" for c in sorted(failed)[:shown])
    more = f" (and {len(failed) - shown:,} more)" if len(failed) > shown else ""
    return [
        f"{path}: the subject fails to render for {len(failed):,} customers, who are "
        f"skipped as not_rendered: {first}{more}"
    ]


def _title(items: Mapping[str, Item], item_id: str) -> str:
    item = items.get(item_id)
    return f"{item.title} [{item_id}]" if item is not None and item.title else item_id


def _decision_json(decision: planner.Decision) -> dict[str, Any]:
    return {
        "customer_id": decision.customer_id,
        "outcome": decision.outcome.value,
        "reason": decision.reason,
        "variant": decision.variant,
        "send_at": decision.send_at.isoformat() if decision.send_at else None,
        "offers": [
            {"item_id": o.item_id, "score": round(o.score, 6), "why": o.why}
            for o in decision.offers
        ],
    }


@app.command("preview")
def preview(
    campaign: str,
    customer: Annotated[str, typer.Option("--customer", help="Customer id.")],
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML part here.")] = None,
    as_of: Annotated[str | None, typer.Option(help="Decide as if it were this time.")] = None,
    campaigns: CampaignsDir = Path("campaigns"),
    templates: TemplatesDir = Path("templates"),
    anyway: Annotated[
        bool,
        typer.Option(
            "--anyway",
            help="Render even when the plan would not send this customer "
            "the e-mail (skipped or held out).",
        ),
    ] = False,
) -> None:
    """Render one customer's e-mail as the plan would send it. A customer the plan would not
    contact is not rendered (their e-mail would say things that are not true, e.g. "we have
    not seen you for a while" to a regular) unless --anyway is given: the reason is shown.
    The id is read in its composed Unicode form, as the store holds every id."""
    customer = composed(customer)
    with errors_to_exit():
        settings = current_settings()
        chosen = one_campaign(settings, campaign, campaigns, templates)
        snapshot, context = _planning(settings, as_of, chosen)
        view = next((v for v in snapshot.views if v.customer.id == customer), None)
        if view is None:
            raise ConfigError(
                Path("customers"), [Problem("no such customer", key="--customer", value=customer)]
            )
        decision = planner.decide(chosen, view, context, chosen.policy(context.policy))
        if decision.outcome not in _CONTACTED and not anyway:
            console.print(
                _not_contacted(decision, chosen, view, context), highlight=False, soft_wrap=True
            )
            console.print("nothing rendered; --anyway renders it regardless")
            return
        offers = None if decision.offers else tuple(planner.offers_for(chosen, view, context))
        key = settings.signing_key_bytes()
        link = compose.links(settings, key or _EPHEMERAL, customer, chosen.name, clock.now())
        renderer = render.Renderer(templates, limits=settings.templates)
        try:
            email = compose.render_for(decision, view, chosen, settings, renderer, link, offers)
        except render.RENDER_ERRORS as exc:  # the template, on this customer's data: no crash
            raise _not_rendered(
                exc, campaigns / f"{chosen.name}.toml", templates, customer
            ) from None
    if html is not None:  # first: a path it cannot write is refused before anything is shown
        write_output(html, email.html, "--html", private=True)  # their data, live links
    console.print(
        f"decision: {decision.outcome.value} ({decision.reason}); variant {decision.variant or '-'}"
    )
    console.print(f"subject: {email.subject}\n")
    sys.stdout.write(email.text + "\n")  # verbatim: links must not be wrapped
    if html is not None:
        console.print(f"HTML part written to {html}")


_CONTACTED = (planner.Outcome.SEND, planner.Outcome.DEFER)


def _not_rendered(exc: Exception, campaign: Path, templates: Path, customer: str) -> ConfigError:
    """A render that failed for this customer (a template that passed ``check`` on its
    sample): the template or the campaign's subject, the line, what failed and for whom,
    as ``check`` says it, where preview printed the exception's traceback."""
    problem = render.render_problem(exc, render.SUBJECT)
    message = f"{problem.message} (customer {customer})"
    if problem.key in (None, render.SUBJECT):
        return ConfigError(campaign, [Problem(f"subject: {message}")])
    return ConfigError(templates / problem.key, [Problem(message, line=problem.line)])


def _not_contacted(
    decision: planner.Decision,
    campaign: Campaign,
    view: planner.CustomerView,
    context: planner.Context,
) -> str:
    """Why the plan would not send this customer the e-mail, in words."""
    verb = (
        "held out (never contacted)" if decision.outcome is planner.Outcome.HOLDOUT else "skipped"
    )
    text = f"customer {decision.customer_id} would be {verb} by {campaign.name}: {decision.reason}"
    code = planner.reason_code(decision.reason)
    rule = code.removeprefix("not_in_audience:")
    if rule == code:
        return text
    rules = campaign.audience
    keys = _RULE_KEYS.get(rule, (rule,))
    given = [(key, getattr(rules, key, None)) for key in keys]
    wanted = ", ".join(
        f"{k} = {json.dumps(v, default=str)}" for k, v in given if v not in (None, ())
    )
    text += f" (the campaign's audience has {wanted or f'{rule} = null'}"
    history = view.history
    if rule in ("lapsed_days", "fallback_lapsed_days"):
        days = segments.days_since_last_order(
            history, context.now, context.zone(view.customer.time_zone)
        )
        bounds = getattr(rules, rule) or ()
        text += (
            ", the customer never ordered"
            if days is None
            else f", the customer's last order was {predictive.shown(days, 1, *bounds)} days ago"
        )
    elif rule == planner.AudienceRule.ORDERS:
        text += f", the customer has {history.count} order{'' if history.count == 1 else 's'}"
    elif rule == planner.AudienceRule.SPEND:
        spent = predictive.shown(history.spend, 2, rules.min_spend, rules.max_spend)
        text += f", the customer has spent {spent}"
    return text + ")"


# the audience keys behind a rule's code where they are not named alike
_RULE_KEYS = {
    planner.AudienceRule.ORDERS.value: ("min_orders", "max_orders"),
    planner.AudienceRule.SPEND.value: ("min_spend", "max_spend"),
    planner.AudienceRule.NO_FORECAST.value: FORECAST_KEYS,
}


_EPHEMERAL = secrets.token_bytes(32)  # previews without RECOCAMP_SIGNING_KEY: never verifiable
