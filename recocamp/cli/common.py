"""What every command shares: the one typer app, settings and engines, errors → exit codes,
progress bars, the consoles, the clock and the parsing of ``--as-of``.

Every command reads settings the same way (``--settings`` / ``$RECOCAMP_SETTINGS`` /
``./settings.toml``), prints errors a person can act on (file, line/key, value; exit 2 for
bad input, 1 for other failures) and never a traceback for an expected problem. The command
modules import from here and never from each other's commands, so none calls another.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from recocamp import logs
from recocamp.campaigns import check as checks
from recocamp.campaigns.files import Campaign
from recocamp.clock import SystemClock
from recocamp.domain import MAX_DAYS, YEAR_MAX, YEAR_MIN
from recocamp.errors import (
    ConfigError,
    CoverageCountError,
    DataImportError,
    Problem,
    RecocampError,
    SharedAddressError,
    StoreError,
    mask_addresses,
)
from recocamp.forecast.history import day_number, day_of
from recocamp.forecast.outlook import closed, data_reaches
from recocamp.settings import Settings, check_zone, load_settings, weak_secrets
from recocamp.store import queries, tombstones
from recocamp.store.engine import (
    Engine,
    OperationalError,
    exists,
    make_engine,
    missing_file,
    refusal,
    require_current,
)

app = typer.Typer(
    help="recocamp: a retention engine for online shops.",
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts name settings as [section] key: not markup
)

# piped output (files, CI logs) is not squeezed into 80 columns. Markup is off: what we print
# carries the shop's data and people's files (a title "[/] KIT", a quantity "[bold]x"), which
# rich would read as tags (crash, or lose the brackets); styled labels go through ``flagged``.
console = Console(markup=False) if sys.stdout.isatty() else Console(markup=False, width=140)
errors = (
    Console(stderr=True, markup=False)
    if sys.stderr.isatty()
    else Console(stderr=True, markup=False, width=140)
)
clock = SystemClock()  # the command line's only reader of the time


def a_folder(value: Path | None) -> Path | None:
    """A folder option (``--campaigns``, ``--templates``) that names a file is a typo: exit 2
    naming option and path, before any work (a file has no ``*.toml`` in it: no campaign
    would be read, silently). A missing folder is left to the command (see
    :func:`warn_no_campaigns`)."""
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file; name a folder")
    return value


CampaignsDir = Annotated[
    Path, typer.Option("--campaigns", help="Campaign files.", callback=a_folder)
]
TemplatesDir = Annotated[
    Path, typer.Option("--templates", help="Template files.", callback=a_folder)
]


def warn_no_campaigns(campaigns: Path) -> None:
    """``check`` and ``worker`` with no campaigns folder (a typo, the wrong working
    directory) would say "ok: 0 campaign(s)" or run no campaign without a word."""
    if not campaigns.is_dir():
        print_warning(f"there is no folder {campaigns} (--campaigns): no campaign is read")


def warn_weak_secrets(settings: Settings) -> int:
    """A warning per secret shorter than ``settings.MIN_SECRET_BYTES`` (``check``, ``worker``
    and ``serve`` at start), naming the setting, never its value; returns how many. Not
    refused: a short key already in use signs the links mailed and keys the tombstones."""
    found = weak_secrets(settings)
    for warning in found:
        print_warning(warning)
    return len(found)


def tombstone_key_problem(settings: Settings, *, adopt: bool) -> str | None:
    """Why this store's erasure tombstones cannot be checked under the keys configured
    (``tombstones.KeyUnknown``: made under a key that is neither the signing key nor a
    retired one), None when they can, or when there is no key, no store or no tombstone to
    ask (the commands that need them say so). ``check`` reads; the worker and ``serve``
    at start ``adopt`` (record the configured keys as those of tombstones older than the
    fingerprints)."""
    key = tombstones.key_of(settings)
    if key is None or not exists(settings.database_url):
        return None
    try:
        with engine_for(settings).begin() as connection:
            tombstones.check_keys(connection, key, IMPORTS, adopt=adopt)
    except tombstones.KeyUnknown as problem:
        return str(problem)
    except (RecocampError, OperationalError):  # no store to ask: its commands say so
        return None
    return None


IMPORTS = "every import, event and customer change"
SHARED_ADDRESS_HINT = (
    "Say whom it covers: --all-matching (every one of these customer ids, as one person: "
    "duplicate accounts) or --only-this-id (this id alone: the others keep their rows and "
    "the address)"
)
COUNT_HINT = (
    "To erase every one of them, say how many: --all-matching --expect N (N the number "
    "above); or --only-this-id for this id alone"
)
MAX_ROWS = 1_000_000  # rows a table shows (--limit)
MAX_TOP = 1000  # recommendations asked for (--n, --k): [recommender] top_n's bound


class State:
    settings_path: Path | None = None
    engines: list[Engine] = []  # noqa: RUF012 — disposed when the command ends


def dispose_engines() -> None:
    while State.engines:
        State.engines.pop().dispose()


class Output(StrEnum):
    table = "table"
    json = "json"


@app.callback()
def main(
    ctx: typer.Context,
    settings: Annotated[
        Path | None,
        typer.Option(
            "--settings",
            help="Settings file (default: $RECOCAMP_SETTINGS, else ./settings.toml).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    State.settings_path = settings
    ctx.call_on_close(dispose_engines)
    logs.configure(logging.INFO if verbose else logging.WARNING)  # addresses masked


@contextmanager
def log_levels(levels: Mapping[str, int]) -> Iterator[None]:
    """Loggers' levels for one command, put back after it: the CLI runs in-process too (tests,
    a script that imports it), and a level left behind would hide later log records."""
    loggers = {name: logging.getLogger(name) for name in levels}
    before = {name: logger.level for name, logger in loggers.items()}
    for name, logger in loggers.items():
        logger.setLevel(levels[name])
    try:
        yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(before[name])


def in_help_order(commands: Sequence[str], groups: Sequence[str]) -> None:
    """List the commands and groups in this order in ``recocamp --help`` (typer lists them
    as they were registered, which is the order Python happened to import their modules);
    any not named follow, as registered."""
    app.registered_commands.sort(key=lambda c: _rank(commands, c.name))
    app.registered_groups.sort(key=lambda g: _rank(groups, g.name))


def _rank(order: Sequence[str], name: str | None) -> int:
    return order.index(name) if name in order else len(order)


@contextmanager
def errors_to_exit() -> Iterator[None]:
    """Expected problems become one readable message and an exit code, not a traceback."""
    try:
        yield
    except (ConfigError, DataImportError) as exc:
        print_error(str(exc))
        raise typer.Exit(2) from None
    except CoverageCountError as exc:
        print_error(f"{exc}. {COUNT_HINT}")
        raise typer.Exit(2) from None
    except SharedAddressError as exc:
        print_error(f"{exc}. {SHARED_ADDRESS_HINT}")
        raise typer.Exit(2) from None
    except RecocampError as exc:
        print_error(str(exc))
        raise typer.Exit(1) from None
    except OperationalError as exc:  # locked past the busy timeout, read-only, disk full
        print_error(refusal(exc, State.engines[-1] if State.engines else None))
        raise typer.Exit(1) from None


def flagged(label: str, style: str, message: str) -> Text:
    """A styled label before a message printed as it is: the message holds values from files
    and data, which must never be read as rich markup."""
    return Text.assemble((label, style), " ", message)


def print_error(message: str) -> None:
    """``error: message`` on stderr, the message verbatim (brackets and all) but for e-mail
    addresses, masked as the API masks them: stderr ends up in logs and CI output, and a
    message may quote a customer given by address or a value from a file."""
    errors.print(
        flagged("error:", "bold red", mask_addresses(message)), highlight=False, soft_wrap=True
    )


def print_warning(message: str) -> None:
    """``warning: message`` on stderr, verbatim but for masked e-mail addresses (as
    :func:`print_error`): something that may be wrong, which does not change the exit code
    by itself."""
    errors.print(
        flagged("warning:", "bold yellow", mask_addresses(message)),
        highlight=False,
        soft_wrap=True,
    )


def write_output(path: Path, text: str, option: str, *, private: bool = False) -> None:
    """``text`` into the file an option names (``--html``, ``--output``), whole or not at all:
    into a new file beside it, renamed over it, so a failure (no such folder, a folder named,
    a full disk) leaves no half-written file. A ``private`` file (a customer's data) is
    created readable by its owner alone, never world-readable for a moment as a chmod after
    the write would leave it. A path that cannot be written is bad input: exit 2 naming the
    option, the path and why, and callers write the file before they record anything."""
    try:
        _write_whole(path, text, 0o600 if private else 0o666)
    except OSError as exc:
        print_error(f"cannot write {option} {path}: {_why_unwritable(path, exc)}")
        raise typer.Exit(2) from None


def ensure_folder(path: Path, option: str) -> None:
    """The folder an option names (``--demo-dir``, ``--data-dir``), made if missing, before
    any work: one that cannot be made is bad input (exit 2 naming option, path and why),
    not a traceback halfway through building the demo shop."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "it is a file; name a folder" if path.exists() else exc.strerror or str(exc)
        print_error(f"cannot write {option} {path}: {why}")
        raise typer.Exit(2) from None


def _write_whole(path: Path, text: str, mode: int) -> None:
    if path.is_dir():  # os.replace would swap an empty folder for the file
        raise IsADirectoryError(f"{path} is a folder")
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # less the umask
    try:
        with open(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _why_unwritable(path: Path, exc: OSError) -> str:
    """The reason in words a person can act on (the OS's ``[Errno 2]`` names no folder)."""
    if isinstance(exc, IsADirectoryError):
        return "it is a folder; name a file"
    if not path.parent.is_dir():
        return f"there is no folder {path.parent}"
    return exc.strerror or str(exc)


def show(table: Table) -> None:
    """A table on stdout as it is where its narrowest layout fits the terminal; where it
    does not (80 columns, a table of many columns, a model version that is never wrapped),
    one block per row, each value after its column's name, folded but whole. Squeezed, rich
    cut values short (``162,4…`` for 162,431.52) or gave whole columns no width at all (the
    metrics of ``models list``), and a number or a version cut short is a wrong one."""
    if table.row_count == 0 or _narrowest(table) <= console.width:
        console.print(table)
        return
    if table.title:
        console.print(table.title, style="italic")
    names = [str(column.header) for column in table.columns]
    cells = [[str(cell) for cell in column.cells] for column in table.columns]
    for row in range(table.row_count):
        record = Table.grid(padding=(0, 2))
        record.add_column(style="bold", max_width=max(10, console.width // 3))
        record.add_column(overflow="fold")
        for name, column in zip(names, cells, strict=True):
            record.add_row(name, column[row])
        console.print(f"— {row + 1} —", style="dim")
        console.print(record)
    if table.caption:
        console.print(table.caption, style="dim")


def _narrowest(table: Table) -> int:
    """The table's width with every column at its narrowest: its longest word (a column that
    is never wrapped: its longest value), headers included; borders and padding around."""
    widest = 0
    for column in table.columns:
        texts = [str(column.header), *(str(cell) for cell in column.cells)]
        parts = texts if column.no_wrap else [w for text in texts for w in text.split()]
        widest += max((cell_len(part) for part in parts), default=0)
    columns = len(table.columns)
    return widest + 3 * columns + 1  # a border before each column and after, padding 1 + 1


def print_json(document: object, *, indent: int) -> None:
    """Standard JSON on stdout, never ``NaN`` or ``Infinity`` (Python's extensions, which
    JSON parsers refuse): such a number is a clear error (exit 1), not broken output."""
    try:
        text = json.dumps(document, indent=indent, allow_nan=False)
    except ValueError as exc:
        print_error(f"cannot write JSON: {exc}")
        raise typer.Exit(1) from None
    sys.stdout.write(text + "\n")


def current_settings() -> Settings:
    """The settings the command was given (``--settings``), or the default ones."""
    return load_settings(State.settings_path)


def engine_for(settings: Settings, *, migrated: bool = True) -> Engine:
    """The database's engine, disposed when the command ends; ``migrated`` refuses a
    database that is missing migrations, and a SQLite file that is not there before
    connecting (which would leave an empty file behind): only the commands that build the
    database (``db upgrade``, the demo's) create it."""
    missing = missing_file(settings.database_url) if migrated else None
    if missing is not None:
        raise StoreError(f"there is no database {missing}: run `recocamp db upgrade`")
    made = make_engine(settings.database_url)
    State.engines.append(made)
    if migrated:
        require_current(made)
    return made


class RichProgress:
    """The importer's progress sink as a rich progress bar."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def phase(self, label: str, total: int | None) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(label, total=total)

    def advance(self, amount: int) -> None:
        self.progress.advance(self.task, amount)


@contextmanager
def progress_bars() -> Iterator[RichProgress]:
    """Progress bars on stderr, gone when done (stdout stays the command's output)."""
    columns = (
        TextColumn("{task.description}", markup=False),  # a file name is not markup
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=errors, transient=True) as bars:
        yield RichProgress(bars)


def parse_as_of(value: str | None, zone: ZoneInfo, option: str = "--as-of") -> datetime:
    """``YYYY-MM-DD`` is midnight at the start of that day in the shop's zone; a year outside
    ``domain.YEAR_MIN``-``YEAR_MAX`` (the importer's bounds) is refused, as the arithmetic on it
    (a window before it, the UTC offset) would overflow."""
    if value is None:
        return clock.now()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD) or date-time", param_hint=option
        ) from None
    check_year(parsed.year, value, option)
    if len(value) == 10:
        parsed = datetime.combine(date.fromisoformat(value), time(), tzinfo=zone)
    elif parsed.tzinfo is None:
        parsed = _one_instant(parsed.replace(tzinfo=zone), value, option)
    return parsed.astimezone(UTC)


def not_to_come(moment: datetime, zone: ZoneInfo, option: str, why: str) -> None:
    """Exit 2 for an ``--as-of`` after now (a typo of the year) where the command records
    something as of it (``train``, ``send``, ``demo``): ``why`` says what would be kept.
    ``--as-of`` there is for the past (a demo shop's 2011); ``plan``, ``preview``, ``kpis``
    and ``forecast`` only read, and may look ahead."""
    now = clock.now()
    if moment > now:
        print_error(
            f"{option} {moment.astimezone(zone):%Y-%m-%d %H:%M} is after now "
            f"({now.astimezone(zone):%Y-%m-%d %H:%M}, {zone.key}): {why}"
        )
        raise typer.Exit(2)


def _one_instant(local: datetime, value: str, option: str) -> datetime:
    """A shop-local wall time that names exactly one instant; else exit 2 naming the option,
    the value and the zone. On the night the clocks go back a wall time happens twice
    (``fold`` silently took the first), and on the night they go forward an hour of wall
    times never happens at all (it was read as an instant an hour away): a plan or a report
    "as of" either would silently be another instant than the one the user meant.
    A day alone is its first instant (``local_midnight``), which always exists."""
    first, second = local.replace(fold=0), local.replace(fold=1)
    if first.utcoffset() == second.utcoffset():
        return local
    zone = local.tzinfo
    offsets = " or ".join(_offset(t) for t in (first, second))
    back = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back == local.replace(tzinfo=None):
        raise typer.BadParameter(
            f"{value!r} happens twice in {zone} (the clocks go back): add the offset, {offsets}",
            param_hint=option,
        )
    raise typer.BadParameter(
        f"{value!r} does not exist in {zone} (the clocks go forward over it)",
        param_hint=option,
    )


def _offset(moment: datetime) -> str:
    """``+02:00``: a UTC offset as ``--as-of`` takes it."""
    return moment.isoformat()[-6:]


def check_year(year: int, value: str, option: str) -> None:
    """A date option within the years the data may hold (exit 2 naming option and value)."""
    if not YEAR_MIN <= year <= YEAR_MAX:
        raise typer.BadParameter(
            f"{value!r} is out of range (years {YEAR_MIN}–{YEAR_MAX})", param_hint=option
        )


Number = TypeVar("Number", int, float)


def within(low: Number, high: Number) -> Callable[[Number | None], Number | None]:
    """An option's callback: a number from ``low`` to ``high``, else exit 2 naming the option
    and the value given (``Invalid value for '--k': 5000 is out of range (1 to 1,000)``).
    Not typer's ``min=``/``max=``: its error names the bound, not the value. ``nan`` is in no
    range; a bound keeps ``--k 10**12`` from allocating for a trillion results."""

    def check(value: Number | None) -> Number | None:
        if value is not None and not low <= value <= high:
            raise typer.BadParameter(f"{value} is out of range ({low:,} to {high:,})")
        return value

    return check


def time_zone(value: str | None) -> str | None:
    """An option's callback: an IANA time zone this machine loads (``settings.check_zone``,
    the settings' own rule), else exit 2 naming the option and the value. ``ZoneInfo`` given
    ``Mars/Base`` (or ``Europe``, a folder) raised a traceback out of the command."""
    if value is None:
        return None
    try:
        return check_zone(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r}: {exc}") from None


day_count = within(1, MAX_DAYS)  # a day count beyond a hundred years is a typo (and overflows)


def fmt(value: object) -> str:
    """A table cell: floats to four places, counts grouped as the figures are (6,626 orders
    beside a CLV of 3,857.3366), a missing value as a dash."""
    if isinstance(value, float):
        return f"{value:,.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "—" if value is None else str(value)


def one_campaign(settings: Settings, name: str, campaigns: Path, templates: Path) -> Campaign:
    """The valid campaign ``name``; its file's problems, or the known names, if it is not."""
    loaded, failures = checks.campaign_problems(settings, campaigns, templates)
    broken = [f for f in failures if f.path.stem == name]
    if broken:
        raise broken[0]
    chosen = [c for c in loaded if c.name == name]
    if not chosen:
        known = ", ".join(c.name for c in loaded) or "none"
        raise ConfigError(
            campaigns / f"{name}.toml", [Problem(f"no such campaign (known: {known})")]
        )
    return chosen[0]


OpenHorizon = Annotated[
    bool,
    typer.Option(
        "--open-horizon",
        help="Measure a horizon the data does not reach the end of yet: the figures count "
        "only the purchases seen so far (a warning says so). Refused without it (exit 2).",
    ),
]


def check_horizon(
    engine: Engine, cutoff: datetime, horizon_days: int, zone: ZoneInfo, open_horizon: bool
) -> None:
    """An evaluation's split must be one the data can measure (``evaluate`` and
    ``forecast-evaluate`` alike): exit 2 with one line for a cutoff before the store's first
    purchase (nobody to evaluate), and for a horizon ``[cutoff, cutoff + H)`` that is not
    closed, unless ``open_horizon`` (then a warning). Closed means the data covers the
    horizon's last shop-local day (:func:`recocamp.forecast.closed`, the live forecaster's
    rule too): the newest purchase line reaches it, or the clock's yesterday does within a
    quiet week after that line (``forecast.data_reaches``). The clock alone cannot say it: a
    demo shop's data ends years before now, and every horizon past it would score zeros."""
    with engine.connect() as connection:
        first = queries.first_purchase_time(connection)  # returns and guests: nobody to measure
        newest = queries.latest_order_time(connection)
    local = cutoff.astimezone(zone)
    if first is None or newest is None or first >= cutoff:
        held = "none" if first is None else f"the first is on {first.astimezone(zone).date()}"
        print_error(f"no purchase before the cutoff {local.date()} ({held}): nothing to evaluate")
        raise typer.Exit(2)
    last = (local + timedelta(days=horizon_days) - timedelta(microseconds=1)).date()
    today = day_number(clock.now().astimezone(zone).date())
    reach = data_reaches(day_number(newest.astimezone(zone).date()), today)
    if closed(day_number(last) + 1, reach):
        return
    covered = day_of(reach)
    text = (
        f"the horizon of cutoff {local.date()} runs to {last}, past the last day the data "
        f"covers ({covered}): it is not closed"
    )
    if not open_horizon:
        print_error(f"{text} (--open-horizon measures the days seen so far)")
        raise typer.Exit(2)
    print_warning(f"{text}; the figures count only the purchases seen so far, up to {covered}")
