"""Import purchase, customer and item files: validated, all-or-nothing, idempotent.

A file is validated completely before anything is written. If any row is malformed, one
:class:`~recocamp.errors.DataImportError` lists the problems (file, line, column, value)
and the store is untouched. Otherwise its rows and its ``import_runs`` record are written in
one transaction. Importing the same file again (same SHA-256) changes nothing and says so
(a customers or items file is a snapshot: one is imported again once another file of its
kind was imported since, :meth:`Importer._seen`).
Overlapping files are safe too, also when imported at the same time: an order is written
whole by one import (claimed by its digest, as ``queries.store_orders`` does); another
holding the same order with the same lines under the same customer (or as a guest order
both times) counts them as duplicates, one holding it with other lines, or under another
customer, is refused, naming the order and the line it starts on (never the other
customer: ``staging.moved``), as the API refuses it.

A purchases file of any size is streamed (``store.staging``): the validating pass reads it
once, staging its good lines in chunks in a temporary table, and checks the repeats of the
whole file there; the writing pass digests and claims the orders in chunks and copies their
lines over in the one transaction. Memory holds one entry per customer, item and (without
``line_no``) order, never one per line. Customers and items files are read whole.

Erased customers stay erased (``store.tombstones``): a customers row whose id or address
was erased is skipped and counted as ``erased`` in the report (``skipped``), and order
lines of an erased customer are stored as guest lines — the shop's sales figures stay
right, the person is not brought back — counted as ``erased_customer_lines`` (``details``).
A new sign-up of the same person goes through ``PUT /v1/customers/{id}`` with
``new_sign_up`` and a fresh consent, never through a file.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import logging
import os
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from itertools import compress, groupby, islice, repeat
from operator import is_not, itemgetter, lt, not_
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from recocamp.data.catalog import CatalogBuilder
from recocamp.data.sources import csv as sources
from recocamp.domain import (
    FALLBACK_LOCALE,
    GZIP_RATIO_MAX,
    ConsentBasis,
    Customer,
    Item,
    Locale,
    OrderDigestParts,
    Purchase,
)
from recocamp.errors import DataImportError, Problem
from recocamp.store import outbox, profiles, queries, staging, tombstones, views
from recocamp.store.engine import Connection, Engine

log = logging.getLogger(__name__)
T = TypeVar("T")
STAGE_CHUNK = 1_000  # records read, validated and staged together (more: more garbage collection)
CLAIM_CHUNK = 5_000  # orders claimed per round
ERASED_CHUNK = 50_000  # customers checked against the tombstones per round


class ProgressSink(Protocol):
    """Where long imports report progress (a rich bar in the CLI, nothing in tests)."""

    def phase(self, label: str, total: int | None) -> None: ...

    def advance(self, amount: int) -> None: ...


class NoProgress:
    def phase(self, label: str, total: int | None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did, for the terminal and the ``import_runs`` table."""

    kind: str
    format: str
    file: str
    rows_read: int
    imported: int
    duplicates: int
    skipped: dict[str, int]
    already_imported: bool = False
    details: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def file_sha256(path: Path, *, follow_links: bool = True) -> str:
    """The file's SHA-256; ``follow_links`` False: neither a symbolic nor a hard link is read
    (``sources.open_text``)."""
    digest = hashlib.sha256()
    try:
        opening = sources.open_bytes(path, follow_links=follow_links, one_name=not follow_links)
        with opening as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataImportError(path, [Problem(f"cannot read file: {exc.strerror}")]) from None
    return digest.hexdigest()


def _parse(
    path: Path,
    columns: tuple[tuple[str, ...], tuple[str, ...]],
    parse: Callable[[dict[str, str]], T | sources.Skip],
    progress: ProgressSink,
    max_listed: int,
    key: Callable[[T], str],
    max_ratio: int = GZIP_RATIO_MAX,
    follow_links: bool = True,
) -> tuple[list[T], dict[str, int], int]:
    """Parse a whole file (customers, items: one row per customer or item, ``key`` its id,
    once per file); ``columns``: the required and the optional ones."""
    progress.phase(f"reading {path.name}", None)
    with sources.open_text(path, max_ratio, follow_links=follow_links) as handle:
        read = sources.read_rows(path, columns[0], handle, columns[1], max_listed)
        rows = _counted(read, progress)
        try:
            return sources.collect(path, rows, parse, max_listed=max_listed, key=key)
        except (UnicodeDecodeError, EOFError, OSError, csv.Error) as exc:
            raise DataImportError(path, [Problem(f"unreadable content: {exc}")]) from None


def _counted(
    rows: Iterator[tuple[int, dict[str, str]]], progress: ProgressSink
) -> Iterator[tuple[int, dict[str, str]]]:
    for number, pair in enumerate(rows, start=1):
        if number % 10000 == 0:
            progress.advance(10000)
        yield pair


LineParser = sources.StandardLines | sources.RetailLines


class _Staged:
    """What the validating pass of a purchases file found: counts, the first problems, and
    what the writing pass needs besides the staged lines (their customers; for the
    online-retail format the catalogue and each customer's country). It holds one entry
    per customer and per item, never one per line."""

    def __init__(
        self, catalog: CatalogBuilder | None, max_listed: int, stager: staging.Stager
    ) -> None:
        self.catalog, self.max_listed = catalog, max_listed
        self.bind_time, self.bind_times = stager.bind_time, stager.bind_times
        self.parts = OrderDigestParts()
        self.read = self.more = 0
        self.skipped: dict[str, int] = {}
        self.problems: list[Problem] = []
        self.customers: set[str] = set()
        self.countries: dict[str, str] = {}
        self.runs: _RunDigests | None = None  # the orders digested while staged

    def take(self, line: int, record: sources.Record, parse: LineParser) -> tuple[Any, ...] | None:
        """One record: its staging values, or None (a problem, or a skip)."""
        self.read += 1
        try:
            parsed = parse(record)
        except sources.RowProblem as exc:
            self._problem(Problem(exc.message, line=line, column=exc.column, value=exc.value))
            return None
        if isinstance(parsed, sources.Skip):
            self.skipped[parsed.reason] = self.skipped.get(parsed.reason, 0) + 1
            return None
        values = self._retail(parsed) if isinstance(parsed, sources.RetailLine) else parsed
        order_id, line_no, customer_id, item_id, quantity, price, at, is_return = values
        if customer_id is not None:
            self.customers.add(customer_id)
        part = self.parts.of(line_no, item_id, quantity, price, at, is_return)
        at_bound = self.bind_time(at)  # as the store keeps it: staging.Stager.bind_time
        staged = (order_id, line_no, customer_id, item_id, quantity, price, at_bound, is_return)
        return (line, *staged, part)  # staging.STAGED_COLUMNS

    def take_columns(self, read: int, lines: sources.LineColumns) -> list[tuple[Any, ...]]:
        """A batch of ``read`` records read column by column (``columns`` of the line
        parsers): what :meth:`take` does to each, their staging values as it gives them."""
        self.read += read
        if lines.adjustments:
            self.skipped["adjustment"] = self.skipped.get("adjustment", 0) + lines.adjustments
        customer_ids, ordered_at = lines.customer_ids, lines.ordered_at
        named = list(map(is_not, customer_ids, repeat(None)))  # not guest lines
        if lines.descriptions is not None and lines.countries is not None:
            assert self.catalog is not None
            is_purchases = list(map(not_, lines.is_returns))  # kept: a return or a purchase
            self.catalog.note_many(
                lines.item_ids, lines.descriptions, lines.unit_prices, ordered_at, is_purchases
            )
            pairs = zip(customer_ids, lines.countries, strict=True)
            self.countries.update(cast(Iterator[tuple[str, str]], compress(pairs, named)))
        self.customers.update(cast(Iterator[str], compress(customer_ids, named)))
        parts = self.parts.many(
            lines.line_nos,
            lines.item_ids,
            lines.quantities,
            lines.unit_prices,
            ordered_at,
            lines.is_returns,
        )
        return list(
            zip(
                lines.lines,
                lines.order_ids,
                lines.line_nos,
                customer_ids,
                lines.item_ids,
                lines.quantities,
                lines.unit_prices,
                self.bind_times(ordered_at),
                lines.is_returns,
                parts,
                strict=True,
            )
        )

    def _retail(self, line: sources.RetailLine) -> sources.PurchaseValues:
        """Note the catalogue's and the country's part of the line; its purchase's values."""
        assert self.catalog is not None
        _, _, customer_id, item_id, quantity, price, at, is_return = line.values
        is_purchase = not is_return and quantity > 0 and price > 0  # Purchase.is_purchase
        self.catalog.note(item_id, line.description, price, at, is_purchase)
        if customer_id is not None:
            self.countries[customer_id] = line.country
        return line.values

    def _problem(self, problem: Problem) -> None:
        self.problems.append(problem)
        if len(self.problems) > self.max_listed:
            self.problems.pop()
            self.more += 1

    def check_repeats(self, connection: Connection) -> None:
        """Each (order id, line number) once per file, across the whole file: a repeat with
        the same content is unstaged and counted as skipped, one with other content is a
        problem of its line (storing either would lose the other)."""
        again = array("q")  # file lines of repeats: 8 bytes each
        # the first problems, by -line (a max-heap): (-line, order id, line_no, first line)
        worst: list[tuple[int, str, int, int]] = []
        total = 0
        first: staging.StagedLine | None = None
        for staged in staging.repeats(connection):
            if first is None or (staged.order_id, staged.line_no) != (
                first.order_id,
                first.line_no,
            ):
                first = staged
            elif (staged.customer_id, staged.part) == (first.customer_id, first.part):
                again.append(staged.src_line)
            else:
                total += 1
                repeat = (-staged.src_line, staged.order_id, staged.line_no, first.src_line)
                heapq.heappush(worst, repeat)
                if len(worst) > self.max_listed:
                    heapq.heappop(worst)
        if again:
            staging.remove(connection, again.tolist())
            self.skipped["repeated line"] = self.skipped.get("repeated line", 0) + len(again)
        if total:
            found = [_repeat_problem(-at, order, no, seen) for at, order, no, seen in worst]
            self._merge(found, total)

    def check_customers(self, connection: Connection, column: str) -> None:
        """Every line of an order names the customer its first line names (or none, a
        guest order): a line naming another is a problem of its line. Stored, such an
        order counts once per customer (orders, frequency, attribution), and each customer
        gets the other's items."""
        worst: list[tuple[int, str, str | None, int, str | None]] = []  # -line first: max-heap
        total = 0
        first: staging.StagedLine | None = None
        for staged in staging.mixed_orders(connection):
            if first is None or staged.order_id != first.order_id:
                first = staged
            elif staged.customer_id != first.customer_id:
                total += 1
                mixed = (
                    -staged.src_line,
                    staged.order_id,
                    staged.customer_id,
                    first.src_line,
                    first.customer_id,
                )
                heapq.heappush(worst, mixed)
                if len(worst) > self.max_listed:
                    heapq.heappop(worst)
        if total:
            self._merge([_mixed_problem(column, *m) for m in worst], total)

    def _merge(self, found: list[Problem], total: int) -> None:
        """Add problems found after the reading (the first of ``total``), keeping the
        earliest lines of all."""
        count = len(self.problems) + self.more + total
        merged = sorted([*self.problems, *found], key=lambda problem: problem.line or 0)
        self.problems = merged[: self.max_listed]
        self.more = count - len(self.problems)


def _repeat_problem(line: int, order_id: str, line_no: int, first: int) -> Problem:
    """A line that repeats an order's line number with other content than ``first`` (the
    file line that gave it first): both lines named, and the order."""
    message = f"repeats line {line_no} of order {order_id!r} with other content than line {first}"
    return Problem(message, line=line, column="line_no", value=str(line_no))


def _mixed_problem(
    column: str, line: int, order_id: str, customer: str | None, first: int, other: str | None
) -> Problem:
    """A line of an order naming another customer than the order's first line (``first``);
    ``line`` is negated (:meth:`_Staged.check_customers` keeps a max-heap)."""

    def who(customer_id: str | None) -> str:
        return (
            "no customer (a guest line)"
            if customer_id is None
            else repr(sources.shown(customer_id))
        )

    message = (
        f"names {who(customer)} where line {first} of order {order_id!r} names {who(other)}: "
        "an order is one customer's"
    )
    return Problem(message, line=-line, column=column, value=sources.shown(customer or ""))


def _order_digests(parts: Iterator[tuple[str, str]]) -> Iterator[dict[str, tuple[str, int]]]:
    """Each order's digest (``domain.order_digest`` of its lines, from their parts in line
    order) and line count, in dicts of about CLAIM_CHUNK orders."""
    chunk: dict[str, tuple[str, int]] = {}
    current: str | None = None
    texts: list[str] = []
    for order_id, part in parts:
        if order_id != current:
            if current is not None:
                chunk[current] = (_digest(texts), len(texts))
                if len(chunk) >= CLAIM_CHUNK:
                    yield chunk
                    chunk = {}
            current, texts = order_id, []
        texts.append(part)
    if current is not None:
        chunk[current] = (_digest(texts), len(texts))
    if chunk:
        yield chunk


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("".join(parts).encode()).hexdigest()


class _RunDigests:
    """Orders digested as the validating pass stages them: an order whose lines come in
    one run, in line order, is digested from their parts as they come, so the staged parts
    need no second reading (``staging.order_parts``). The digests go to the staging tables
    ``CLAIM_CHUNK`` orders at a time (``staging.note_digests``). An order noted with fewer
    lines than are staged for it is digested again by the writing pass from its staged
    lines: one whose lines are not in line order (noted with none), one with lines in
    several runs (its first run kept). A line unstaged as a repeat (``check_repeats``)
    repeats an earlier one, so a first run in line order stays whole: an order noted with
    as many lines as are staged was noted with them all. SQLite only: claiming on
    PostgreSQL writes orders."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.current: str | None = None
        self.digest = hashlib.sha256()  # of the current order's parts so far
        self.lines = 0
        self.last = 0  # the current order's last line number
        self.in_order = True
        self.chunk: dict[str, tuple[str, int]] = {}

    def add(self, staged: list[tuple[Any, ...]]) -> None:
        """A batch of staged lines (staging.STAGED_COLUMNS), in file order."""
        for order_id, run in groupby(staged, key=itemgetter(1)):
            lines = list(run)
            numbers = list(map(itemgetter(2), lines))
            if order_id != self.current:
                self._close()
                self.current, self.in_order = order_id, True
                self.digest, self.lines = hashlib.sha256(), 0
            elif numbers[0] <= self.last:
                self.in_order = False
            if self.in_order and not all(map(lt, numbers, islice(numbers, 1, None))):
                self.in_order = False
            self.last = numbers[-1]
            self.digest.update("".join(map(itemgetter(9), lines)).encode())
            self.lines += len(lines)

    def finish(self) -> None:
        self._close()
        self._flush()

    def _close(self) -> None:
        if self.current is not None:
            noted = (self.digest.hexdigest(), self.lines) if self.in_order else ("", 0)
            self.chunk.setdefault(self.current, noted)
            if len(self.chunk) >= CLAIM_CHUNK:
                self._flush()

    def _flush(self) -> None:
        staging.note_digests(self.connection, self.chunk)
        self.chunk = {}


class Importer:
    """Runs imports against one engine with the shop's zone and a fixed ``now``."""

    def __init__(
        self,
        engine: Engine,
        *,
        zone: tzinfo,
        now: datetime,
        progress: ProgressSink | None = None,
        max_listed: int = 20,
        erasure_key: tombstones.Keys | None = None,
        max_gzip_ratio: int = GZIP_RATIO_MAX,
        default_locale: Locale = FALLBACK_LOCALE,
        follow_links: bool = True,
    ) -> None:
        self.engine, self.zone, self.now = engine, zone, now
        # False (the drop folder): never through a link (open_bytes; regular files either way)
        self.follow_links = follow_links
        self.default_locale = default_locale  # a customers row without a locale gets this
        self.progress = progress or NoProgress()
        self.max_listed = max_listed
        self.max_gzip_ratio = max_gzip_ratio  # sources.open_text
        self.erasure_key = erasure_key  # tombstones.key_of(settings)

    def purchases(self, path: Path, fmt: str = "standard") -> ImportReport:
        if fmt not in sources.PURCHASE_FORMATS:
            known = ", ".join(sources.PURCHASE_FORMATS)
            raise DataImportError(path, [Problem(f"unknown format (known: {known})", value=fmt)])
        return self._run(path, "purchases", fmt, self._write_purchases)

    def customers(self, path: Path) -> ImportReport:
        return self._run(path, "customers", "standard", self._write_customers)

    def items(self, path: Path) -> ImportReport:
        return self._run(path, "items", "standard", self._write_items)

    # --- one run: hash, skip if seen, parse, write in one transaction ----------------

    def _run(
        self, path: Path, kind: str, fmt: str, write: Callable[..., ImportReport]
    ) -> ImportReport:
        started = time.perf_counter()
        version = self._file_version(path)
        sha = file_sha256(path, follow_links=self.follow_links)
        with self.engine.connect() as connection:
            seen = self._seen(connection, kind, sha)
        if seen is not None:
            name = sources.printable(path.name)
            log.info("import %s %s: already imported as run %s", kind, name, seen.id)
            return ImportReport(kind, fmt, str(path), 0, 0, 0, {}, already_imported=True)
        report: ImportReport = write(path, fmt, sha, version)
        seconds = time.perf_counter() - started
        log.info(
            "import %s %s: read=%d imported=%d duplicates=%d skipped=%s in %.1fs",
            kind,
            sources.printable(path.name),
            report.rows_read,
            report.imported,
            report.duplicates,
            report.skipped,
            seconds,
        )
        return ImportReport(**{**_fields(report), "seconds": round(seconds, 3)})

    @staticmethod
    def _seen(connection: Connection, kind: str, sha: str) -> Any:
        """The run that imported this very file, if importing it again changes nothing: any
        run for purchases (orders are written once), the last run of its kind for customers
        and items. Those files are snapshots: a price feed back to last week's prices (a
        sale ended) is last week's file byte for byte, and was skipped as imported already,
        the sale's prices kept for good."""
        if kind == "purchases":
            return queries.find_import(connection, kind, sha)
        last = queries.last_import(connection, kind)
        return last if last is not None and last.file_sha256 == sha else None

    def _file_version(self, path: Path) -> tuple[int, ...] | None:
        """What tells one version of the file from the next (inode, size, modification
        time); None when it cannot be read (the hash then says why)."""
        try:
            found = os.stat(path, follow_symlinks=self.follow_links)
        except OSError:
            return None
        return found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns

    def _read_whole(self, path: Path, version: tuple[int, ...] | None) -> None:
        """After the file was read, before anything of it is written: the file read is the
        file hashed. A feed still writing it (appending after a pause, renaming its next
        export over it) changed it between the hash and the reading: the lines read, a cut
        order among them, were stored under the hash of what it held before, and the
        complete file, imported next, was refused for the orders stored cut."""
        if self._file_version(path) != version:
            raise DataImportError(
                path,
                [
                    Problem(
                        "the file changed while it was read (is it still being written?): "
                        "nothing was imported; import it once it is complete"
                    )
                ],
            )

    def _begin_run(
        self, connection: Connection, kind: str, fmt: str, path: Path, sha: str, read: int
    ) -> int:
        return queries.record_import(
            connection,
            kind=kind,
            format=fmt,
            file_name=path.name,
            file_sha256=sha,
            started_at=self.now,
            finished_at=self.now,
            rows_read=read,
            imported=0,
            duplicates=0,
            skipped={},
        )

    def _write_purchases(
        self, path: Path, fmt: str, sha: str, version: tuple[int, ...] | None
    ) -> ImportReport:
        """Two passes: the file is read once into the staging table (validating every line,
        no write lock held), then the staged lines are written in one transaction."""
        with self.engine.connect() as connection:
            try:
                staging.create(connection)
                found = self._stage(connection, path, fmt)
                self._read_whole(path, version)
                connection.commit()
                with connection.begin():
                    report = self._store_staged(connection, path, fmt, sha, found)
            finally:
                connection.rollback()
                staging.finish(connection)
        return report

    def _stage(self, connection: Connection, path: Path, fmt: str) -> _Staged:
        """The validating pass: every line parsed, the good ones staged in chunks; raises
        the file's problems (lines repeated with other content included)."""
        retail = fmt == "online-retail"
        stager = staging.Stager(connection)
        found = _Staged(CatalogBuilder() if retail else None, self.max_listed, stager)
        stamps = sources.Timestamps(self.zone, sources.RETAIL_TIME if retail else None, self.now)
        required = sources.ONLINE_RETAIL_COLUMNS if retail else sources.STANDARD_COLUMNS
        optional = () if retail else sources.STANDARD_OPTIONAL
        self.progress.phase(f"reading {path.name}", None)
        with sources.open_text(path, self.max_gzip_ratio, follow_links=self.follow_links) as handle:
            try:
                records = sources.Records(path, required, handle, optional, self.max_listed)
                parse = self._line_parser(records, retail, stamps, sources.LineNumbers())
                runs = None
                if connection.dialect.name == "sqlite":
                    runs = found.runs = _RunDigests(connection)
                for batch in records.batches(STAGE_CHUNK):
                    staged = self._staged(found, parse, batch)
                    stager.add(staged)
                    if runs is not None:
                        runs.add(staged)
                    self.progress.advance(len(batch.records))
            except (UnicodeDecodeError, EOFError, OSError, csv.Error) as exc:
                raise DataImportError(path, [Problem(f"unreadable content: {exc}")]) from None
        if runs is not None:
            runs.finish()
        staging.index(connection)
        if parse.numbers_from_file:  # else no (order id, line number) is staged twice
            found.check_repeats(connection)
        found.check_customers(connection, "CustomerID" if retail else "customer_id")
        if found.problems:
            raise DataImportError(path, found.problems, more=found.more)
        return found

    @staticmethod
    def _staged(found: _Staged, parse: LineParser, batch: sources.Batch) -> list[tuple[Any, ...]]:
        """The staging values of a batch of records: read column by column when the batch
        is clean and every line passes at once, else line by line (the same values, and
        the problems of the lines that have some)."""
        if batch.clean:
            columns = parse.columns(batch.lines, cast(list[list[str]], batch.records))
            if columns is not None:
                return found.take_columns(len(batch.records), columns)
        staged = (found.take(line, record, parse) for line, record in zip(*batch[:2], strict=True))
        return [values for values in staged if values is not None]

    @staticmethod
    def _line_parser(
        records: sources.Records,
        retail: bool,
        stamps: sources.Timestamps,
        lines: sources.LineNumbers,
    ) -> LineParser:
        if not retail:
            return sources.StandardLines(records.header, stamps, lines)
        return sources.RetailLines(records.header, stamps, lines)

    def _store_staged(
        self, connection: Connection, path: Path, fmt: str, sha: str, found: _Staged
    ) -> ImportReport:
        """The writing pass, in the caller's transaction: erased customers detached, the
        orders claimed by their digests, the lines of the orders won copied over."""
        queries.write_lock(connection)
        erased = self._erased(connection, found.customers)
        detached = staging.detach(connection, erased)
        run_id = self._begin_run(connection, "purchases", fmt, path, sha, found.read)
        total = staging.totals(connection)
        self.progress.phase(f"writing {total.lines:,} order lines", total.lines)
        if found.runs is None:
            self._claim_staged(connection)
        else:  # digested while staged
            if staging.digested_lines(connection) != total.lines:
                self._claim_split(connection)
            self.progress.advance(total.lines)
        claimed = staging.claimed(connection, self.max_listed)
        moved, moved_count = staging.moved(connection, self.max_listed)
        if claimed.conflicted or moved_count:
            retail = fmt == "online-retail"
            first = staging.first_lines(connection, [*claimed.conflicts, *moved])
            problems = [
                _problem(OTHER_LINES, "InvoiceNo" if retail else "order_id", order_id, first)
                for order_id in claimed.conflicts
            ]
            problems += [
                _problem(OTHER_CUSTOMER, "CustomerID" if retail else "customer_id", order_id, first)
                for order_id in moved
            ]
            raise _conflict(path, problems, claimed.conflicted + moved_count, self.max_listed)
        written, repeated = total.lines - claimed.repeated_lines, claimed.repeated_lines
        staging.copy_kept(connection, run_id, written)
        details = {
            "purchase_lines": total.lines - total.returns,
            "return_lines": total.returns,
            "guest_lines": total.guests,
        }
        if detached:
            details |= {"erased_customer_lines": detached}
        if found.catalog is not None:
            details |= self._catalogue_from_retail(connection, found, erased)
        report = ImportReport(
            "purchases",
            fmt,
            str(path),
            found.read,
            written,
            repeated,
            found.skipped,
            details=details,
        )
        self._finish(connection, run_id, report)
        return report

    def _erased(self, connection: Connection, customers: set[str]) -> set[str]:
        """Which of the file's customers are erased, asked ERASED_CHUNK ids at a time (the
        keyed hashes of a million customers at once would take a few hundred MB)."""
        ids, erased = sorted(customers), set()
        for start in range(0, max(1, len(ids)), ERASED_CHUNK):
            chunk = ids[start : start + ERASED_CHUNK]
            erased |= tombstones.erased_ids(
                connection, self.erasure_key, chunk, "importing purchases"
            )
        return erased

    def _claim_split(self, connection: Connection) -> None:
        """Some orders digested while staged have lines in more than one run (``_RunDigests``):
        those few digested again from their staged lines, or, if there are many, all."""
        split: list[str] | None = staging.split_orders(connection, CLAIM_CHUNK + 1)
        if split is not None and len(split) > CLAIM_CHUNK:
            split = None
        staging.forget_digests(connection, split)
        for digests in _order_digests(staging.order_parts(connection, split)):
            staging.claim(connection, digests)

    def _claim_staged(self, connection: Connection) -> None:
        """Digest the staged orders (in order id order) and claim them chunk by chunk."""
        for digests in _order_digests(staging.order_parts(connection)):
            staging.claim(connection, digests)
            self.progress.advance(sum(size for _, size in digests.values()))

    def _catalogue_from_retail(
        self, connection: Connection, found: _Staged, erased: set[str]
    ) -> dict[str, int]:
        """The online-retail file also tells us the items and each customer's country."""
        assert found.catalog is not None
        catalog = found.catalog.items()
        queries.add_missing_items(connection, catalog, self.now)
        countries = {key: value for key, value in found.countries.items() if key not in erased}
        known = queries.add_missing_customers(connection, countries, self.now, self.default_locale)
        return {"items_catalogued": len(catalog), "customers_added": known}

    def _write_customers(
        self, path: Path, fmt: str, sha: str, version: tuple[int, ...] | None
    ) -> ImportReport:
        stamps = sources.Timestamps(self.zone)
        columns: set[str] = set()

        def parse(row: dict[str, str]) -> Customer:
            columns.update(row)  # the header's names: every row holds them all
            return sources.customer_row(row, stamps, self.now, self.default_locale)

        rows: list[Customer]
        rows, skipped, read = _parse(
            path,
            (sources.CUSTOMER_COLUMNS, sources.CUSTOMER_OPTIONAL),
            parse,
            self.progress,
            self.max_listed,
            _customer_id,
            self.max_gzip_ratio,
            self.follow_links,
        )
        self._read_whole(path, version)
        with self.engine.begin() as connection:
            erased = tombstones.erased_ids(
                connection,
                self.erasure_key,
                [r.id for r in rows],
                "importing customers",
                [(r.id, r.email) for r in rows if r.email],
            )
            if erased:
                rows = [row for row in rows if row.id not in erased]
                skipped = {**skipped, "erased": len(erased)}
            # a record an older version stored decomposed is the one the row names: updated,
            # not joined by a second record of the same person (which kept the old consent)
            held = queries.held_decomposed(connection, [r.id for r in rows])
            if held:
                rows = [replace(row, id=held[row.id]) if row.id in held else row for row in rows]
            run_id = self._begin_run(connection, "customers", fmt, path, sha, read)
            # a column the file does not have changes nothing stored: a feed without consent
            # or birthday columns reset every customer's consent to "none" and birthday to none
            absent = [name for name in sources.CUSTOMER_OPTIONAL if name not in columns]
            # a feed sets an objection, never clears one (upsert_customers): the new objectors
            # are the rows objecting that did not before, from one read of those who did
            objecting = {r.id for r in rows if r.objected_to_profiling}
            objecting -= set(profiles.objected_ids(connection)) if objecting else set()
            queries.upsert_customers(connection, rows, self.now, keep=absent)
            if objecting or "consent_basis" not in absent:  # as data.profiles does
                views.lock_contacts(connection)  # a campaign run's chunk: before or after
            if objecting:
                outbox.cancel_profiled(connection, objecting, self.now)
            if "consent_basis" not in absent:
                existing = [r.id for r in rows if r.consent_basis is ConsentBasis.EXISTING_CUSTOMER]
                outbox.cancel_rebased(connection, existing, self.now)
            report = ImportReport("customers", fmt, str(path), read, len(rows), 0, skipped)
            self._finish(connection, run_id, report)
        return report

    def _write_items(
        self, path: Path, fmt: str, sha: str, version: tuple[int, ...] | None
    ) -> ImportReport:
        columns: set[str] = set()

        def parse(row: dict[str, str]) -> Item:
            columns.update(row)  # the header's names: every row holds them all
            return sources.item_row(row)

        rows, skipped, read = _parse(
            path,
            (sources.ITEM_COLUMNS, sources.ITEM_OPTIONAL),
            parse,
            self.progress,
            self.max_listed,
            _item_id,
            self.max_gzip_ratio,
            self.follow_links,
        )
        self._read_whole(path, version)
        with self.engine.begin() as connection:
            run_id = self._begin_run(connection, "items", fmt, path, sha, read)
            # a column the file does not have changes nothing stored (as for customers)
            absent = [name for name in sources.ITEM_OPTIONAL if name not in columns]
            queries.upsert_items(connection, rows, self.now, keep=absent)
            report = ImportReport("items", fmt, str(path), read, len(rows), 0, skipped)
            self._finish(connection, run_id, report)
        return report

    def _finish(self, connection: Connection, run_id: int, report: ImportReport) -> None:
        queries.finish_import(
            connection,
            run_id,
            imported=report.imported,
            duplicates=report.duplicates,
            skipped=report.skipped,
            finished_at=self.now,
        )
        queries.audit(
            connection,
            at=self.now,
            actor="import",
            action=f"import_{report.kind}",
            subject_type="import_run",
            subject_id=str(run_id),
            details={
                "file": Path(report.file).name,
                "imported": report.imported,
                "skipped": report.skipped,
                **report.details,
            },
        )


def detach(row: Purchase, erased: set[str]) -> Purchase:
    """The line as a guest line when its customer was erased."""
    return replace(row, customer_id=None) if row.customer_id in erased else row


def _fields(report: ImportReport) -> dict[str, Any]:
    return {name: getattr(report, name) for name in ImportReport.__slots__}


OTHER_LINES = "this order is already stored with other lines"
OTHER_CUSTOMER = (  # never whose: the other customer's id is not the file's to learn
    "this order is already stored under another customer or as a guest order "
    "(an order is one customer's)"
)


def _problem(message: str, column: str, order_id: str, first_lines: dict[str, int]) -> Problem:
    return Problem(message, line=first_lines.get(order_id), column=column, value=order_id)


def _conflict(path: Path, problems: list[Problem], count: int, max_listed: int) -> DataImportError:
    """The orders refused (``count`` of them), the first lines of the file first."""
    shown = sorted(problems, key=lambda problem: problem.line or 0)[:max_listed]
    return DataImportError(path, shown, more=max(0, count - len(shown)))


def _customer_id(row: Customer) -> str:
    return row.id


def _item_id(row: Item) -> str:
    return row.id
