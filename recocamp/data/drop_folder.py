"""The worker's import job: CSV files dropped into ``[ingest] drop_dir`` are imported once.

What a file holds is told by its name: ``customers*.csv``, ``items*.csv``,
``purchases*.csv`` (the standard formats) or ``online-retail*.csv`` / ``online_retail*``
(the UCI format); ``.gz`` is fine. Customers and items go first, so a drop of all three
is imported in a sensible order.

Each file is imported all-or-nothing (``ingest``) and then leaves the folder. Imported (or
imported before: same SHA-256), it is deleted — it holds personal data the store now has —
or, with ``[ingest] keep_processed_days`` above 0, moved to ``[ingest] processed_dir`` and
deleted by the retention purge that many days later (``privacy.purge``; its modification
time is set to the import's). Refused, it goes to ``<drop_dir>/rejected/`` with a
``<name>.errors.txt`` beside it — so a broken file is reported once, not every few minutes,
and nothing in it is half-imported; the operator deletes it once dealt with. A file that
cannot leave the folder (the worker may not delete or move it) is logged and counted
(``not_moved``), and the other files are imported all the same.
Erased customers in a file are skipped like in every import (``ingest``), and a file kept
in ``processed_dir`` or ``rejected/`` (and its ``.errors.txt``) is cleaned of them
(``erasure_files.drop_erased``).
A file modified in the last ``SETTLE_S`` seconds is left for the next run: it may still be
being written; so is one that changed while it was imported (its name written again, or
the writer went on after a pause).
A name starting with ``.`` is not looked at at all: the convention for hidden files and
files still being written (macOS's ``._purchases.csv``, an upload as ``.purchases.csv``).
Only a regular file of one name is read. A symbolic link is not followed — its target may
be a file the uploader could not read themselves, and the report would quote it — nor a
hard link (a file with more than one name, ``st_nlink`` > 1: the other name may be such a
file, where the system does not protect hard links), and a folder, pipe, socket or device
named like a data file is never opened (reading a pipe waits for ever): each is moved as it
is (the link, not its target: renamed, so the file it names is neither read nor changed) to
``rejected/`` with an ``.errors.txt`` saying what it is, once, counted as ``rejected``.
Entries are looked at with ``lstat``; the import opens with ``O_NOFOLLOW`` and refuses a
file with another name, so a link swapped in after the look is not read either.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from recocamp.config_files import file_kind
from recocamp.data import erasure_files
from recocamp.data.ingest import Importer, ImportReport
from recocamp.data.sources.csv import hard_link, printable
from recocamp.errors import ConfigError, DataImportError, Problem
from recocamp.settings import Settings, files_as_folders, settings_path
from recocamp.store import tombstones
from recocamp.store.engine import Engine

log = logging.getLogger(__name__)
SETTLE_S = 5.0
KINDS = (  # (name prefix, kind, purchase format), in import order
    ("customers", "customers", ""),
    ("items", "items", ""),
    ("purchases", "purchases", "standard"),
    ("online-retail", "purchases", "online-retail"),
    ("online_retail", "purchases", "online-retail"),
)


@dataclass
class DropReport:
    imported: int = 0
    already_imported: int = 0
    rejected: int = 0
    waiting: int = 0  # still being written
    rows: int = 0
    not_moved: int = 0  # imported or refused, but could not leave the folder (logged)

    def counts(self) -> dict[str, int]:
        return {
            "imported": self.imported,
            "already_imported": self.already_imported,
            "rejected": self.rejected,
            "waiting": self.waiting,
            "rows": self.rows,
            "not_moved": self.not_moved,
        }


def kind_of(path: Path) -> tuple[str, str] | None:
    name = path.name.lower()
    for prefix, kind, fmt in KINDS:
        if name.startswith(prefix):
            return kind, fmt
    return None


def _rank(path: Path) -> tuple[int, list[str | int], str]:
    """Kinds in ``KINDS`` order; files of one kind by name with their numbers by value
    (``customers-9`` before ``customers-10``, as an export numbers them: by name alone the
    tenth went first and the ninth's older values won)."""
    name = path.name.lower()
    order = next((n for n, (prefix, _, _) in enumerate(KINDS) if name.startswith(prefix)), 99)
    parts = re.split(r"(\d+)", name)  # text, number, text, …: the same type at each place
    natural: list[str | int] = [int(p) if n % 2 else p for n, p in enumerate(parts)]
    return order, natural, path.name


def pending(drop_dir: Path, now_s: float) -> tuple[list[Path], int]:
    """Entries named like data files to take now (in import order: files to import, and
    links, folders and the like to set aside), and how many are still settling. Hidden
    names (``.`` first) are left alone; an entry gone meanwhile is not counted."""
    if not drop_dir.is_dir():
        return [], 0
    found: list[tuple[Path, float]] = []
    for path in drop_dir.iterdir():
        name = path.name.lower()
        if name.startswith(".") or not name.endswith((".csv", ".csv.gz")):
            continue
        try:
            found.append((path, path.lstat().st_mtime))
        except OSError:
            continue
    ready = [path for path, modified in found if now_s - modified >= SETTLE_S]
    return sorted(ready, key=_rank), len(found) - len(ready)


def _not_regular(path: Path) -> str | None:
    """What an entry is when it is not a regular file of one name ("a symbolic link", "a
    hard link (a file with 2 names)", "a folder", …); None for a regular file, or one gone
    (the import then says it is missing)."""
    try:
        found = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(found.st_mode):
        return file_kind(found.st_mode)
    return hard_link(found.st_nlink) if found.st_nlink > 1 else None


def import_drop_folder(engine: Engine, settings: Settings, now: datetime) -> DropReport:
    drop_dir = settings.ingest.drop_dir
    done_dir = settings.ingest.processed_dir if settings.ingest.keep_processed_days else None
    _refuse_files_as_folders(settings)
    files, waiting = pending(drop_dir, time.time())
    report = DropReport(waiting=waiting)
    key = tombstones.key_of(settings)
    if files:  # a file refused before the store is asked is kept: its check must not fail
        with engine.connect() as connection:
            tombstones.checkable(connection, key, "importing the drop folder")
    importer = Importer(
        engine,
        zone=settings.shop.zone,
        now=now,
        max_listed=settings.ingest.max_errors_listed,
        max_gzip_ratio=settings.ingest.max_gzip_ratio,
        erasure_key=key,
        default_locale=settings.shop.default_locale,
        follow_links=False,  # a link swapped in after _not_regular looked is not read
    )
    for path in files:
        _one(importer, path, drop_dir, done_dir, report)
    return report


def _refuse_files_as_folders(settings: Settings) -> None:
    """Before anything is imported: a file where a folder of the drop folder belongs (made
    after the settings were read, which refuse one) would fail each run after its import had
    committed, the file left in the drop folder to fail again, or (the drop folder itself)
    let every run report nothing to do."""
    found = files_as_folders(settings)
    if found:
        raise ConfigError(settings_path() or Path("settings.toml"), found)


def _one(
    importer: Importer, path: Path, drop_dir: Path, done_dir: Path | None, report: DropReport
) -> None:
    what = _not_regular(path)
    if what is not None:
        _set_aside(importer, path, what, drop_dir / "rejected", report)
        return
    kind = kind_of(path)
    read = _identity(path)
    try:
        if kind is None:
            prefixes = ", ".join(prefix for prefix, _, _ in KINDS)
            raise DataImportError(
                path, [Problem(f"unknown kind of file: the name must start with one of {prefixes}")]
            )
        result = _import(importer, path, *kind)
    except DataImportError as exc:
        reason = str(exc)
        if _changed(path, read, report):
            return
        report.rejected += 1
        log.error(
            "import of %s refused, moving it to %s: %d problem(s)",
            printable(path.name),
            drop_dir / "rejected",
            len(exc.problems) + exc.more,
        )
        _leave(importer, path, report, lambda: _reject(path, drop_dir / "rejected", reason))
        return
    if result.already_imported:
        report.already_imported += 1
    else:
        report.imported += 1
        report.rows += result.imported
    log.info("imported %s (%s): %d rows", printable(path.name), result.kind, result.imported)
    if _changed(path, read, report):
        return
    _leave(importer, path, report, lambda: _done(path, done_dir, importer.now))


def _set_aside(
    importer: Importer, path: Path, what: str, directory: Path, report: DropReport
) -> None:
    """An entry that is not a regular file, moved as it is (a link, not its target; renamed,
    never copied: copying opened it) to ``directory`` with its ``.errors.txt``, never read.
    It was skipped every run without a word; a link was followed and imported."""
    if what == "a symbolic link":
        why = f"{what}, not a file: links in the drop folder are not followed"
    elif what.startswith("a hard link"):
        why = (
            f"{what}, not a file of its own: links in the drop folder are not followed "
            "(copy the file in, or move it)"
        )
    else:
        why = f"{what}, not a file: only files are imported"
    reason = str(DataImportError(path, [Problem(why)]))
    report.rejected += 1
    log.error("%s is %s, moving it to %s", printable(path.name), why, directory)

    def move() -> list[Path]:
        target = _move(path, directory, os.rename)
        errors = target.with_name(target.name + ".errors.txt")
        errors.write_text(reason + "\n", encoding="utf-8")
        return [errors]  # what is kept to clean: the entry itself holds no rows

    _leave(importer, path, report, move)


def _leave(
    importer: Importer, path: Path, report: DropReport, move: Callable[[], list[Path]]
) -> None:
    """Take a file out of the drop folder (``move``: deleted, kept or set aside), then clean
    what is kept of erased customers. A file that cannot leave (the worker may read it but
    not delete or move it: another user's upload in a sticky folder; gone already) is
    logged and counted, and the other files go on: the error used to end the run, and as
    the file stayed to fail again, every run after it, so that no later file arrived."""
    try:
        kept = move()
    except OSError as exc:
        report.not_moved += 1
        log.error("%s cannot leave the drop folder: %s", printable(path.name), exc.strerror or exc)
        return
    erasure_files.drop_erased(importer.engine, importer.erasure_key, kept, importer.max_gzip_ratio)


def _identity(path: Path) -> tuple[int, ...] | None:
    """What tells one version of a file from the next: its inode, size and modification
    (of the entry itself: a link put in its place is a change)."""
    try:
        found = path.lstat()
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns


def _changed(path: Path, read: tuple[int, ...] | None, report: DropReport) -> bool:
    """Whether the file is no longer the one the import read — written again under its
    name (a feed renaming its next export over it), or still being written after a pause
    longer than ``SETTLE_S`` — and so left for the next run: deleting it (or setting it
    aside as broken when it was cut short) lost what it now holds."""
    now = _identity(path)
    if now == read:
        return False
    if now is None:
        log.warning(
            "%s was taken out of the drop folder while it was imported", printable(path.name)
        )
        return True
    report.waiting += 1
    log.warning("%s changed while it was imported: left for the next run", printable(path.name))
    return True


def _import(importer: Importer, path: Path, kind: str, fmt: str) -> ImportReport:
    if kind == "customers":
        return importer.customers(path)
    if kind == "items":
        return importer.items(path)
    return importer.purchases(path, fmt)


def _done(path: Path, directory: Path | None, now: datetime) -> list[Path]:
    """An imported file: deleted, or kept in ``directory`` with the import's time as its
    modification time (the retention purge's clock); returns what is kept."""
    if directory is None:
        path.unlink()
        return []
    target = _move(path, directory)
    os.utime(target, (now.timestamp(), now.timestamp()))
    return [target]


def expired(directory: Path, before: datetime) -> list[Path]:
    """Kept imported files whose time is up (modified before ``before``): files named as
    the drop folder keeps them (:func:`kept_name`) only. ``processed_dir`` may name a
    folder that holds other files too (the settings file's, the database's): the purge
    deleted every one of them that was old enough."""
    if not directory.is_dir():
        return []
    cutoff = before.timestamp()
    return sorted(
        p
        for p in directory.iterdir()
        if kept_name(p.name) and p.is_file() and p.stat().st_mtime < cutoff
    )


def kept_name(name: str) -> bool:
    """Whether ``name`` is one an imported file is kept under: a data file's (a kind's
    prefix, ``.csv`` or ``.csv.gz``), or that name numbered by :func:`_move` (``2-…``)."""
    bare = re.sub(r"^\d+-", "", name)
    lowered = bare.lower()
    return lowered.endswith((".csv", ".csv.gz")) and kind_of(Path(bare)) is not None


def _move(path: Path, directory: Path, move: Callable[[Path, Path], object] | None = None) -> Path:
    """Move without overwriting (a link there, even one to nothing, is not overwritten): a
    second file of the same name gets a numbered name."""
    directory.mkdir(parents=True, exist_ok=True)
    target, n = directory / path.name, 1
    while os.path.lexists(target):
        n += 1
        target = directory / f"{n}-{path.name}"
    (move or shutil.move)(path, target)  # shutil.move copies across file systems
    return target


def _reject(path: Path, directory: Path, reason: str) -> list[Path]:
    """A refused file, kept with its reasons beside it; returns both."""
    target = _move(path, directory)
    errors = target.with_name(target.name + ".errors.txt")
    errors.write_text(reason + "\n", encoding="utf-8")
    return [target, errors]
