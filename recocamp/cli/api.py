"""Shop API and privacy commands: ``recocamp serve``, ``recocamp privacy …``, ``recocamp
api-key new``."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from recocamp import logs, privacy
from recocamp.api import auth as api_auth
from recocamp.cli.common import (
    State,
    app,
    clock,
    console,
    current_settings,
    engine_for,
    errors_to_exit,
    print_error,
    print_warning,
    show,
    tombstone_key_problem,
    warn_weak_secrets,
    within,
    write_output,
)
from recocamp.errors import RecocampError, SharedAddressError
from recocamp.settings import Settings
from recocamp.store import tombstones
from recocamp.store.engine import Engine
from recocamp.store.queries import audit

privacy_app = typer.Typer(help="Privacy: export, erase, retention purge.", no_args_is_help=True)
key_app = typer.Typer(help="Shop API keys.", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")
app.add_typer(key_app, name="api-key")


class NothingHeld(RecocampError):
    """We hold no data about that customer."""


AllMatching = Annotated[
    bool,
    typer.Option(
        "--all-matching",
        help="The customer's address is shared: cover every customer id holding it, as one "
        "person (duplicate accounts).",
    ),
]
OnlyThisId = Annotated[
    bool,
    typer.Option(
        "--only-this-id",
        help="The customer's address is shared: cover this customer id alone (rows naming "
        "the others stay theirs).",
    ),
]


def _scope(all_matching: bool, only_this_id: bool, expect: int | None = None) -> privacy.Scope:
    """Whom the request covers when other customer ids hold the address (neither flag: it
    is refused then, exit 2, naming them); ``expect``, the count, goes with --all-matching."""
    if all_matching and only_this_id:
        print_error("--all-matching and --only-this-id exclude each other; nothing was done")
        raise typer.Exit(2)
    if expect is not None and not all_matching:
        print_error("--expect goes with --all-matching; nothing was done")
        raise typer.Exit(2)
    if all_matching:
        return privacy.Scope.ALL_MATCHING
    return privacy.Scope.ID if only_this_id else privacy.Scope.UNSHARED


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Default: [api] host.")] = None,
    port: Annotated[
        int | None, typer.Option(callback=within(1, 65535), help="Default: [api] port.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(callback=within(1, 64), help="Processes, 1 to 64 (default: [api] workers)."),
    ] = None,
) -> None:
    """Run the shop API: next-best offers, events, preferences and privacy pages, webhooks."""
    import uvicorn

    from recocamp.api import protocol as api_protocol

    with errors_to_exit():
        settings = current_settings()
        engine_for(settings)  # refuses a database that is missing migrations
        keys = api_auth.parse_keys(
            settings.api_keys.get_secret_value() if settings.api_keys else None
        )
    warn_weak_secrets(settings)
    unknown = tombstone_key_problem(settings, adopt=True)
    if unknown:  # the events and customer changes answer 503 until the key is back
        print_warning(unknown)
    if not keys:  # a key minted but not configured got 401 "unknown API key", no more said
        print_warning(
            "RECOCAMP_API_KEYS is not set (or holds no entry): every route that takes a key "
            "(offers, events, privacy, reports) answers 401 to every request. Mint one with "
            "`recocamp api-key new NAME --scope SCOPE` and set its entry before `serve`"
        )
    processes = workers or settings.api.workers
    # every worker process reads the same settings, and shares out the rate limit
    if State.settings_path is not None:
        os.environ["RECOCAMP_SETTINGS"] = str(State.settings_path.resolve())
    os.environ["RECOCAMP_API__WORKERS"] = str(processes)
    if processes > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # the workers' metrics are summed from files in here (prometheus-client's way)
        shared = tempfile.mkdtemp(prefix="recocamp-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared
        atexit.register(shutil.rmtree, shared, True)
    console.print(
        f"shop API on http://{host or settings.api.host}:{port or settings.api.port} "
        f"({processes} process{'es' if processes > 1 else ''}; docs at /docs)"
    )
    uvicorn.run(
        "recocamp.api:app_from_environment",
        factory=True,
        host=host or settings.api.host,
        port=port or settings.api.port,
        workers=processes,
        http=api_protocol.HTTP,  # requests stamped as they are parsed (see the module)
        access_log=False,  # paths carry link tokens, which are credentials
        log_config=_log_config(),
        timeout_worker_healthcheck=60,  # a worker loads the live model before it answers
    )


def _log_config() -> dict[str, Any]:
    """Compact log lines on stderr with e-mail addresses masked, in every worker process."""
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "recocamp.logs.EmailRedactor"}},
        "formatters": {"plain": {"format": logs.FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {"uvicorn": {"level": "INFO"}, "uvicorn.error": {"level": "INFO"}},
    }


@privacy_app.command("export")
def privacy_export(
    customer: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here.")] = None,
    all_matching: AllMatching = False,
    only_this_id: OnlyThisId = False,
) -> None:
    """Everything we hold about CUSTOMER as JSON (GDPR Art. 15/20). When other customer ids
    hold the same address, say whom it covers (--all-matching or --only-this-id)."""
    scope = _scope(all_matching, only_this_id)
    with errors_to_exit():
        settings = current_settings()
        engine = engine_for(settings)
        now = clock.now()
        document = privacy.export(engine, customer, now, scope=scope, settings=settings)
        if document is None:
            raise NothingHeld(f"we hold no data about customer {customer!r}")
        text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
        if output is None:
            _audit_export(engine, document, now)
            sys.stdout.write(text)
            return
        write_output(output, text, "--output", private=True)  # recorded once it is written
        try:
            _audit_export(engine, document, now)
        except BaseException:
            output.unlink(missing_ok=True)  # an export nobody recorded is not handed out
            raise
    console.print(f"written to {output} ({document['customers']} customer id(s))")


def _audit_export(engine: Engine, document: dict[str, Any], now: datetime) -> None:
    """One ``customer_exported`` audit row per customer id the export covers."""
    with engine.begin() as connection:
        for exported in document["customer_ids"]:
            audit(
                connection,
                at=now,
                actor="cli",
                action="customer_exported",
                subject_type="customer",
                subject_id=exported,
                details={"scope": document["scope"]},
            )


@privacy_app.command("erase")
def privacy_erase(
    customer: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
    all_matching: AllMatching = False,
    only_this_id: OnlyThisId = False,
    expect: Annotated[
        int | None,
        typer.Option(
            "--expect",
            min=1,
            help="With --all-matching: how many customer ids hold the address (needed when "
            "more than one; refused, nothing done, when the count differs).",
        ),
    ] = None,
) -> None:
    """Erase CUSTOMER everywhere (GDPR Art. 17); non-identifying aggregates stay. When other
    customer ids hold the same address, say whom it covers (--all-matching --expect N, or
    --only-this-id)."""
    scope = _scope(all_matching, only_this_id, expect)
    with errors_to_exit():  # who is covered, and refusals, before anything is asked
        settings = current_settings()
        engine = engine_for(settings)
        covered = _erasable(settings, engine, customer, scope, expect)
    if not yes:
        typer.confirm(_erase_question(customer, covered), abort=True)
    with errors_to_exit():
        now = clock.now()
        report = privacy.erase(engine, settings, customer, now, "cli", scope=scope, expect=expect)
        if report is None:
            raise NothingHeld(f"we hold no data about customer {customer!r}")
    erased = report.customer_ids
    whom = f"customer {customer}" if len(erased) == 1 else f"{len(erased)} customers"
    table = Table(title=f"erasure {report.erasure_id}: {whom}")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in sorted(report.rows.items()):
        table.add_row(name, f"{rows:,}")
    table.add_row("saved models", f"{report.artifacts:,}")
    table.add_row("files rewritten", f"{report.files:,}")
    show(table)
    if len(erased) > 1:
        console.print("customer ids erased: " + ", ".join(erased), soft_wrap=True, highlight=False)
    for path in report.files_left:
        console.print(f"NOT cleaned (remove the customer by hand): {path}")
    if not report.files_clean and not report.files_left:
        console.print(
            "the SQLite write-ahead log was busy: it is overwritten at the next checkpoint"
        )
    if report.address_kept_for:
        console.print(_address_open(report.address_kept_for), highlight=False)
    console.print("erasure cannot reach: " + "; ".join(report.not_covered))
    if report.files_left:
        raise typer.Exit(1)  # the erasure is not complete: a script must not take it as done


def _erasable(
    settings: Settings, engine: Engine, customer: str, scope: privacy.Scope, expect: int | None
) -> tuple[str, ...]:
    """Whom an erasure covers, or why it cannot be done, before the operator is asked: the
    key its tombstone needs (without it, "for good?" was asked and the yes then refused), an
    ambiguous or miscounted scope."""
    if tombstones.key_of(settings) is None:
        raise tombstones.KeyMissing("erasure", erasing=True)
    covered = privacy.covered(engine, customer, scope)
    # an id held by nobody is "we hold no data" (privacy.erase), not a miscount
    if scope is privacy.Scope.ALL_MATCHING and privacy.held(engine, settings, customer, scope):
        privacy.check_count(customer, covered, expect)
    return covered


def _address_open(others: int) -> str:
    """Why an id erased alone leaves its shared address usable (not tombstoned)."""
    whom = "other customer holds" if others == 1 else "other customers hold"
    return (
        f"the address stays open: {others} {whom} it (only the id is tombstoned; rows that "
        "hold the address but name no customer stay, as nobody's)"
    )


def _erase_question(customer: str, covered: tuple[str, ...]) -> str:
    """The confirmation, naming whom it erases: the count and the first ids."""
    if len(covered) == 1:
        return f"Erase customer {customer} for good?"
    shown = ", ".join(covered[: SharedAddressError.SHOWN])
    hidden = len(covered) - SharedAddressError.SHOWN
    more = f" and {hidden} more" if hidden > 0 else ""
    return f"Erase {len(covered)} customer ids ({shown}{more}) for good?"


@privacy_app.command("purge")
def privacy_purge() -> None:
    """Remove personal data past its retention period ([privacy] settings)."""
    with errors_to_exit():
        settings = current_settings()
        report = privacy.purge(engine_for(settings), settings, clock.now())
    table = Table(title="privacy purge")
    table.add_column("removed")
    table.add_column("", justify="right")
    for name, value in report.as_dict().items():
        if name != "kept":
            table.add_row(name.replace("_", " "), f"{value:,}")
    show(table)
    for what, how in report.kept.items():
        console.print(f"kept: {what}: {how}")


@key_app.command("new")
def api_key_new(
    name: str,
    scope: Annotated[list[str], typer.Option("--scope", help=f"One of {api_auth.SCOPES}.")],
) -> None:
    """Mint a key: prints it once (for the client) and its RECOCAMP_API_KEYS entry."""
    with errors_to_exit():
        key, entry = api_auth.mint(name, scope)
    console.print(f"key for the client (shown once): {key}", soft_wrap=True, highlight=False)
    console.print(f"add to {api_auth.ENV_NAME} (entries separated by ';'):", highlight=False)
    sys.stdout.write(entry + "\n")
