"""Import purchase, customer and item files: validated, all-or-nothing, idempotent.

A file is parsed completely before anything is written. If any row is malformed, one
:class:`~recocamp.errors.DataImportError` lists the problems (file, line, column, value)
and the store is untouched. Otherwise its rows and its ``import_runs`` record are written in
one transaction. Importing the same file again (same SHA-256) changes nothing and says so.
Overlapping files are safe too, also when imported at the same time: an order is written
whole by one import (``queries.store_orders``); another holding the same order with the
same lines counts them as duplicates, one holding it with other lines is refused, naming
the order and the line it starts on.

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
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Protocol, TypeVar

from recocamp.data.catalog import SaleLine, build_catalog
from recocamp.data.sources import csv as sources
from recocamp.domain import Customer, Purchase
from recocamp.errors import DataImportError, OrderConflictError, Problem
from recocamp.store import queries, tombstones
from recocamp.store.engine import Connection, Engine

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataImportError(path, [Problem(f"cannot read file: {exc.strerror}")]) from None
    return digest.hexdigest()


def _parse(
    path: Path,
    required: tuple[str, ...],
    parse: Callable[[dict[str, str]], T | sources.Skip],
    progress: ProgressSink,
    max_listed: int,
    first_lines: tuple[str, dict[str, int]] | None = None,
) -> tuple[list[T], dict[str, int], int]:
    """Parse a whole file; ``first_lines`` (column, {}) is filled with the line each value
    of that column (an order id) is first seen on, to name it in a later problem."""
    progress.phase(f"reading {path.name}", None)
    with sources.open_text(path) as handle:
        rows = _counted(sources.read_rows(path, required, handle), progress)
        if first_lines is not None:
            rows = _first_lines(rows, *first_lines)
        try:
            return sources.collect(path, rows, parse, max_listed=max_listed)
        except (UnicodeDecodeError, EOFError, OSError, csv.Error) as exc:
            raise DataImportError(path, [Problem(f"unreadable content: {exc}")]) from None


def _first_lines(
    rows: Iterator[tuple[int, dict[str, str]]], column: str, seen: dict[str, int]
) -> Iterator[tuple[int, dict[str, str]]]:
    for line, row in rows:
        seen.setdefault(row.get(column, "").strip(), line)
        yield line, row


def _counted(
    rows: Iterator[tuple[int, dict[str, str]]], progress: ProgressSink
) -> Iterator[tuple[int, dict[str, str]]]:
    for number, pair in enumerate(rows, start=1):
        if number % 10000 == 0:
            progress.advance(10000)
        yield pair


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
        erasure_key: bytes | None = None,
    ) -> None:
        self.engine, self.zone, self.now = engine, zone, now
        self.progress = progress or NoProgress()
        self.max_listed = max_listed
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
        sha = file_sha256(path)
        with self.engine.connect() as connection:
            seen = queries.find_import(connection, kind, sha)
        if seen is not None:
            log.info("import %s %s: already imported as run %s", kind, path.name, seen.id)
            return ImportReport(kind, fmt, str(path), 0, 0, 0, {}, already_imported=True)
        report: ImportReport = write(path, fmt, sha)
        seconds = time.perf_counter() - started
        log.info(
            "import %s %s: read=%d imported=%d duplicates=%d skipped=%s in %.1fs",
            kind,
            path.name,
            report.rows_read,
            report.imported,
            report.duplicates,
            report.skipped,
            seconds,
        )
        return ImportReport(**{**_fields(report), "seconds": round(seconds, 3)})

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

    def _write_purchases(self, path: Path, fmt: str, sha: str) -> ImportReport:
        stamps = sources.Timestamps(self.zone, "%Y-%m-%d %H:%M:%S" if fmt != "standard" else None)
        lines, repeats = sources.LineNumbers(), sources.RepeatedLines()
        first_lines: dict[str, int] = {}
        if fmt == "online-retail":
            retail, skipped, read = _parse(
                path,
                sources.ONLINE_RETAIL_COLUMNS,
                lambda row: sources.online_retail_line(row, stamps, lines),
                self.progress,
                self.max_listed,
                ("InvoiceNo", first_lines),
            )
            rows = [line.purchase for line in retail]
        else:
            rows, skipped, read = _parse(
                path,
                sources.STANDARD_COLUMNS,
                lambda row: repeats.check(sources.standard_purchase(row, stamps, lines)),
                self.progress,
                self.max_listed,
                ("order_id", first_lines),
            )
            retail = []
        self.progress.phase(f"writing {len(rows):,} order lines", len(rows))
        try:
            with self.engine.begin() as connection:
                rows, retail, detached = self._detach_erased(connection, rows, retail)
                run_id = self._begin_run(connection, "purchases", fmt, path, sha, read)
                stored = queries.store_orders(connection, rows, run_id, self.progress.advance)
                details = _purchase_details(rows)
                if detached:
                    details |= {"erased_customer_lines": detached}
                if retail:
                    details |= self._catalogue_from_retail(connection, retail)
                report = ImportReport(
                    "purchases",
                    fmt,
                    str(path),
                    read,
                    stored.lines_written,
                    stored.lines_repeated,
                    skipped,
                    details=details,
                )
                self._finish(connection, run_id, report)
        except OrderConflictError as exc:
            column = "InvoiceNo" if fmt == "online-retail" else "order_id"
            raise _conflict(path, exc.order_ids, column, first_lines, self.max_listed) from None
        return report

    def _catalogue_from_retail(
        self, connection: Connection, retail: list[sources.RetailLine]
    ) -> dict[str, int]:
        """The online-retail file also tells us the items and each customer's country."""
        catalog = build_catalog(
            SaleLine(
                line.purchase.item_id,
                line.description,
                line.purchase.unit_price,
                line.purchase.ordered_at,
                line.purchase.is_purchase,
            )
            for line in retail
        )
        queries.add_missing_items(connection, catalog, self.now)
        countries = {
            line.purchase.customer_id: line.country
            for line in retail
            if line.purchase.customer_id is not None
        }
        known = queries.add_missing_customers(connection, countries, self.now)
        return {"items_catalogued": len(catalog), "customers_added": known}

    def _write_customers(self, path: Path, fmt: str, sha: str) -> ImportReport:
        stamps = sources.Timestamps(self.zone)
        rows: list[Customer]
        rows, skipped, read = _parse(
            path,
            sources.CUSTOMER_COLUMNS,
            lambda row: sources.customer_row(row, stamps),
            self.progress,
            self.max_listed,
        )
        _refuse_duplicate_ids(path, [row.id for row in rows])
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
            run_id = self._begin_run(connection, "customers", fmt, path, sha, read)
            queries.upsert_customers(connection, rows, self.now)
            report = ImportReport("customers", fmt, str(path), read, len(rows), 0, skipped)
            self._finish(connection, run_id, report)
        return report

    def _detach_erased(
        self,
        connection: Connection,
        rows: list[Purchase],
        retail: list[sources.RetailLine],
    ) -> tuple[list[Purchase], list[sources.RetailLine], int]:
        """Order lines of erased customers become guest lines (and name no country)."""
        erased = tombstones.erased_ids(
            connection,
            self.erasure_key,
            {row.customer_id for row in rows if row.customer_id is not None},
            "importing purchases",
        )
        if not erased:
            return rows, retail, 0
        detached = sum(1 for row in rows if row.customer_id in erased)
        rows = [detach(row, erased) for row in rows]
        retail = [replace(line, purchase=detach(line.purchase, erased)) for line in retail]
        return rows, retail, detached

    def _write_items(self, path: Path, fmt: str, sha: str) -> ImportReport:
        rows, skipped, read = _parse(
            path, sources.ITEM_COLUMNS, sources.item_row, self.progress, self.max_listed
        )
        _refuse_duplicate_ids(path, [row.id for row in rows])
        with self.engine.begin() as connection:
            run_id = self._begin_run(connection, "items", fmt, path, sha, read)
            queries.upsert_items(connection, rows, self.now)
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


def _purchase_details(rows: list[Purchase]) -> dict[str, int]:
    returns = sum(1 for row in rows if row.is_return)
    guests = sum(1 for row in rows if row.customer_id is None)
    return {"purchase_lines": len(rows) - returns, "return_lines": returns, "guest_lines": guests}


def _conflict(
    path: Path, order_ids: list[str], column: str, first_lines: dict[str, int], max_listed: int
) -> DataImportError:
    problems = [
        Problem(
            "this order is already stored with other lines",
            line=first_lines.get(order_id),
            column=column,
            value=order_id,
        )
        for order_id in order_ids[:max_listed]
    ]
    return DataImportError(path, problems, more=max(0, len(order_ids) - max_listed))


def _refuse_duplicate_ids(path: Path, ids: list[str]) -> None:
    repeated = sorted(value for value, seen in Counter(ids).items() if seen > 1)
    if repeated:
        problems = [
            Problem("the same id appears more than once", column="id", value=value)
            for value in repeated[:20]
        ]
        raise DataImportError(path, problems, more=max(0, len(repeated) - 20))
