"""Erasure in the files recocamp writes: copies of customers and orders outside the store.

Files that can hold a customer, and what erasure does with them (:func:`scrub`):

- ``[ingest] processed_dir`` — imported drop-folder files, kept when
  ``[ingest] keep_processed_days`` is above 0 — and ``<drop_dir>/rejected/`` (refused files
  and their ``.errors.txt``);
- ``demo/`` (the default ``--demo-dir`` of ``recocamp demo``, ``demo-data``, ``worker
  --demo``): the generated ``customers.csv`` / ``purchases.csv`` and the stand-in ESP's
  ``fake-esp/messages.jsonl``.

CSV files (also ``.csv.gz``) lose the customer's rows where an address column names them,
or where the file is a customers file (it has an ``email`` column) and its ``id`` is
theirs; order lines keep their row with the customer column emptied (a guest line, as in
the store). JSON-lines files lose the messages to the address or with the customer's send
key. An ``.errors.txt`` loses the lines naming the address or the id. Each file is
rewritten atomically (a new file renamed over the old one, modification time kept, so the
retention clock is unchanged). A file that cannot be read or rewritten is reported, never
skipped in silence: the erasure then says ``files_clean: false`` and names it.

What erasure cannot reach is listed in :data:`NOT_COVERED`: files written to paths the
operator chose, logs, and copies outside recocamp.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from recocamp.settings import Settings

log = logging.getLogger(__name__)
DEMO_DIR = Path("demo")  # the demo commands' default --demo-dir
ID_COLUMNS = {"customerid", "customer"}  # lower-case, "_" and " " removed
ADDRESS = re.compile(r"^(?:(?:.+_)?email|recipient)$", re.IGNORECASE)
NOT_COVERED = (
    "files written where the operator chose: `recocamp privacy export --output`, "
    "`recocamp preview --html`, a --demo-dir other than demo/",
    "the operator's own files given to `recocamp import` (recocamp reads them, never writes)",
    "log output (it names customers by id only, never by address or name)",
    "database backups, PostgreSQL's write-ahead log and not yet vacuumed row versions, "
    "and the file system's copies of blocks freed by a rewrite",
)


@dataclass
class Scrub:
    """What :func:`scrub` did: files rewritten, and files it could not clean."""

    rewritten: list[Path] = field(default_factory=list)
    failed: list[Path] = field(default_factory=list)


def written_dirs(settings: Settings) -> list[Path]:
    """The directories recocamp writes customer data to."""
    ingest = settings.ingest
    return [ingest.processed_dir, ingest.drop_dir / "rejected", DEMO_DIR]


def scrub(directories: list[Path], customer_id: str, email: str | None) -> Scrub:
    """Remove one customer from every file under ``directories`` (see the module docstring)."""
    who = _Who(customer_id, email.strip().lower() if email else None)
    done = Scrub()
    for path in _files(directories):
        try:
            changed = _scrub_file(path, who)
        except (OSError, UnicodeDecodeError, csv.Error, EOFError, ValueError) as exc:
            log.error("erasure: could not clean %s: %s", path, type(exc).__name__)
            done.failed.append(path)
            continue
        if changed:
            done.rewritten.append(path)
    return done


@dataclass(frozen=True, slots=True)
class _Who:
    customer_id: str
    email: str | None

    def is_address(self, value: str) -> bool:
        return self.email is not None and value.strip().lower() == self.email

    def is_id(self, value: str) -> bool:
        value = value.strip()
        return (value[:-2] if value.endswith(".0") else value) == self.customer_id


Cleaner = Callable[[str, _Who], str | None]  # the new text, or None when nothing changed


def _files(directories: list[Path]) -> Iterator[Path]:
    seen: set[Path] = set()
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*")):
            if path.is_file() and path.resolve() not in seen:
                seen.add(path.resolve())
                yield path


def _scrub_file(path: Path, who: _Who) -> bool:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return _rewrite(path, who, _csv)
    if name.endswith(".jsonl"):
        return _rewrite(path, who, _jsonl)
    if name.endswith(".errors.txt"):
        return _rewrite(path, who, _errors)
    return False


def _rewrite(path: Path, who: _Who, clean: Cleaner) -> bool:
    """Rewrite ``path`` with ``clean``'s text when it changed anything; atomically."""
    zipped = path.name.lower().endswith(".gz")
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if zipped else raw).decode("utf-8")
    cleaned = clean(text, who)
    if cleaned is None:
        return False
    data = cleaned.encode("utf-8")
    _replace(path, gzip.compress(data, mtime=0) if zipped else data)
    return True


def _replace(path: Path, data: bytes) -> None:
    stat = path.stat()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".erasing-")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, stat.st_mode & 0o777)
        os.utime(temporary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _csv(text: str, who: _Who) -> str | None:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return None
    header = [name.strip() for name in rows[0]]
    addresses = [n for n, name in enumerate(header) if ADDRESS.match(name)]
    ids = [n for n, name in enumerate(header)
           if name.lower().replace("_", "").replace(" ", "") in ID_COLUMNS]  # fmt: skip
    people = [n for n, name in enumerate(header) if name.lower() == "id"] if addresses else []
    kept, changed = [rows[0]], False
    for row in rows[1:]:
        if any(n < len(row) and who.is_address(row[n]) for n in addresses) or any(
                n < len(row) and who.is_id(row[n]) for n in people):  # fmt: skip
            changed = True
            continue
        for n in ids:
            if n < len(row) and who.is_id(row[n]):
                row[n], changed = "", True
        kept.append(row)
    if not changed:
        return None
    out = io.StringIO(newline="")
    csv.writer(out).writerows(kept)
    return out.getvalue()


def _jsonl(text: str, who: _Who) -> str | None:
    kept, changed = [], False
    for line in text.splitlines(keepends=True):
        record = json.loads(line) if line.strip() else {}
        key = str(record.get("send_key") or (record.get("Metadata") or {}).get("send_key") or "")
        if who.is_address(str(record.get("To") or "")) or f"/{who.customer_id}/" in key:
            changed = True
            continue
        kept.append(line)
    return "".join(kept) if changed else None


def _errors(text: str, who: _Who) -> str | None:
    needles = [repr(who.customer_id).lower()] + ([who.email] if who.email else [])
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not any(n in line.lower() for n in needles)]
    return "".join(kept) if len(kept) != len(lines) else None
