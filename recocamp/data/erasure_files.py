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

Files that arrive after an erasure: the import skips the erased customer's rows, and
:func:`drop_erased` cleans the copy the drop folder keeps (``processed_dir``,
``rejected/`` and its ``.errors.txt``) the same way, finding them by the tombstones.

What erasure cannot reach is listed in :data:`NOT_COVERED`: files written to paths the
operator chose, logs, and copies outside recocamp.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import gzip
import io
import json
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from recocamp.data.sources.csv import GZIP_FLOOR
from recocamp.domain import GZIP_RATIO_LIMIT
from recocamp.errors import EMAIL
from recocamp.settings import Settings
from recocamp.store import tombstones
from recocamp.store.engine import Engine
from recocamp.tokens import address_key

log = logging.getLogger(__name__)
DEMO_DIR = Path("demo")  # the demo commands' default --demo-dir
ID_COLUMNS = {"customerid", "customer"}  # lower-case, "_" and " " removed
ADDRESS = re.compile(r"^(?:(?:.+_)?email|recipient)$", re.IGNORECASE)
QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")  # repr()s in .errors.txt
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
    """The directories recocamp writes customer data to: the demo's default folder both
    where the command runs and beside the settings file (where the demo is usually run)."""
    ingest = settings.ingest
    demo = dict.fromkeys((DEMO_DIR.absolute(), settings.locate(DEMO_DIR).absolute()))
    return [ingest.processed_dir, ingest.drop_dir / "rejected", *demo]


def scrub(
    directories: list[Path], customer_ids: Collection[str], emails: Collection[str | None]
) -> Scrub:
    """Remove the customers (every id and address of one erasure) from every file under
    ``directories`` (see the module docstring): one pass, so each file is read and
    rewritten once however many ids an erasure covers."""
    addresses = frozenset(address_key(email) for email in emails if email)
    who = _Erased(_forms(customer_ids), addresses)
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


class Who(Protocol):
    """Whom a file is cleaned of: values of address and id columns, text in error reports."""

    def is_address(self, value: str) -> bool: ...

    def is_id(self, value: str) -> bool: ...

    def needles(self) -> list[str]: ...  # lower-case text naming them in an .errors.txt

    def in_send_key(self, key: str) -> bool: ...  # an e-mail's send key names them


def _forms(customer_ids: Collection[str]) -> frozenset[str]:
    """The ids in every Unicode form a file may hold them in (as given, composed,
    decomposed): a file exported by another system is cleaned of ``José`` either way, as
    the tombstones refuse it either way (``tokens.id_hashes``)."""
    forms = set(customer_ids)
    for customer_id in customer_ids:
        if not customer_id.isascii():
            forms |= {unicodedata.normalize(f, customer_id) for f in ("NFC", "NFD")}
    return frozenset(forms)


def _id_text(value: str) -> str:
    """An id as a file holds it, without the ``.0`` a spreadsheet adds to numeric ids."""
    value = value.strip()
    return value[:-2] if value.endswith(".0") else value


def drop_erased(
    engine: Engine, key: bytes | None, paths: Sequence[Path], max_ratio: int = GZIP_RATIO_LIMIT
) -> int:
    """Clean files the drop folder keeps (``processed_dir``, ``rejected/``) of customers
    erased before the file arrived: the import skipped their rows, the kept copy must not
    hold them either. Their ids and addresses are found by the tombstones (keyed hashes) and
    the files rewritten as by an erasure. Called once the files are in place: an erasure
    committed after this check scrubs them there itself. Returns the files rewritten; a
    file that cannot be read is logged and left (a refused file can be unreadable), and so
    is a ``.gz`` file past ``max_ratio`` (the import's ``ingest.max_gzip_ratio``): a gzip
    bomb set aside was decompressed whole, into memory. A store without tombstones reads
    no file: nobody it names can have been erased."""
    if not paths:
        return 0
    with engine.connect() as connection:
        if tombstones.checkable(connection, key, "keeping imported files") is None:
            return 0
    texts: dict[Path, str] = {}
    ids: set[str] = set()
    addresses: set[str] = set()
    for path in paths:
        try:
            texts[path] = _read(path, max_ratio)
            found = _values(path, texts[path])
        except (OSError, UnicodeDecodeError, csv.Error, EOFError, ValueError) as exc:
            log.warning("could not check %s for erased customers: %s", path, type(exc).__name__)
            texts.pop(path, None)
            continue
        ids |= found[0]
        addresses |= found[1]
    if not ids and not addresses:
        return 0
    with engine.connect() as connection:
        erased = tombstones.tombstoned(connection, key, ids, addresses, "keeping imported files")
    if not any(erased):
        return 0
    who = _Erased(frozenset(erased[0]), frozenset(erased[1]))
    rewritten = sum(1 for path in texts if _scrub_file(path, who))
    log.info(
        "kept drop-folder file(s) cleaned of %d erased customer(s): %d file(s)",
        len(erased[0]) + len(erased[1]),
        rewritten,
    )
    return rewritten


def _values(path: Path, text: str) -> tuple[set[str], set[str]]:
    """The ids and addresses (trimmed, lower-case) a file names, as the cleaners see them."""
    if path.name.lower().endswith(".errors.txt"):
        quoted = set()
        for literal in QUOTED.findall(text):
            with contextlib.suppress(ValueError, SyntaxError):
                quoted.add(_id_text(str(ast.literal_eval(literal))))
        return quoted, {address_key(a) for a in EMAIL.findall(text)}
    rows = csv.reader(io.StringIO(text, newline=""))
    first = next(rows, None)
    if first is None:
        return set(), set()
    address_columns, id_columns, people = _columns(first)
    ids: set[str] = set()
    addresses: set[str] = set()
    for row in rows:
        ids.update(_id_text(row[n]) for n in (*id_columns, *people) if n < len(row))
        addresses.update(address_key(row[n]) for n in address_columns if n < len(row))
    ids.discard("")
    addresses.discard("")
    return ids, addresses


@dataclass(frozen=True, slots=True)
class _Erased:
    """Ids and addresses (``tokens.address_key``: trimmed, lower-case, composed) of
    customers being erased, or of a file's customers that erasure tombstones name."""

    ids: frozenset[str]
    addresses: frozenset[str]

    def is_address(self, value: str) -> bool:
        return address_key(value) in self.addresses

    def is_id(self, value: str) -> bool:
        return _id_text(value) in self.ids

    def needles(self) -> list[str]:
        return [repr(i).lower() for i in sorted(self.ids)] + sorted(self.addresses)

    def in_send_key(self, key: str) -> bool:
        return any(f"/{i}/" in key for i in self.ids)


Cleaner = Callable[[str, Who], str | None]  # the new text, or None when nothing changed


def _files(directories: list[Path]) -> Iterator[Path]:
    seen: set[Path] = set()
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*")):
            if path.is_file() and path.resolve() not in seen:
                seen.add(path.resolve())
                yield path


def _scrub_file(path: Path, who: Who) -> bool:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return _rewrite(path, who, _csv)
    if name.endswith(".jsonl"):
        return _rewrite(path, who, _jsonl)
    if name.endswith(".errors.txt"):
        return _rewrite(path, who, _errors)
    return False


def _read(path: Path, max_ratio: int = GZIP_RATIO_LIMIT) -> str:
    """A file's text; a ``.gz`` file decompressed to at most ``max_ratio`` times its size (or
    ``GZIP_FLOOR``), as the import reads it: past that, ValueError (a file that cannot be
    read, reported as such), not the whole of a gzip bomb in memory."""
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        limit = max(GZIP_FLOOR, max_ratio * len(raw))
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as handle:
            raw = handle.read(limit + 1)
        if len(raw) > limit:
            raise ValueError(f"{path.name} decompresses to more than {limit:,} bytes")
    return raw.decode("utf-8")


def _rewrite(path: Path, who: Who, clean: Cleaner) -> bool:
    """Rewrite ``path`` with ``clean``'s text when it changed anything; atomically."""
    zipped = path.name.lower().endswith(".gz")
    text = _read(path)
    cleaned = clean(text, who)
    if cleaned is None:
        return False
    data = cleaned.encode("utf-8")
    replace_atomically(path, gzip.compress(data, mtime=0) if zipped else data)
    return True


def replace_atomically(path: Path, data: bytes) -> None:
    """Put ``data`` in ``path``'s place in one rename, with its mode and times: a crash
    leaves the old file or the new one, never half of either."""
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


def _columns(first: list[str]) -> tuple[list[int], list[int], list[int]]:
    """Columns of addresses, of customer ids in order lines, and of the ids of a customers
    file (an ``id`` column beside an address column)."""
    header = [name.strip() for name in first]
    addresses = [n for n, name in enumerate(header) if ADDRESS.match(name)]
    ids = [
        n
        for n, name in enumerate(header)
        if name.lower().replace("_", "").replace(" ", "") in ID_COLUMNS
    ]
    people = [n for n, name in enumerate(header) if name.lower() == "id"] if addresses else []
    return addresses, ids, people


def _theirs(row: list[str], columns: tuple[list[int], list[int], list[int]], who: Who) -> bool:
    """Whether the row is the customer's own (a customers row, one to their address)."""
    addresses, _, people = columns
    return any(n < len(row) and who.is_address(row[n]) for n in addresses) or any(
        n < len(row) and who.is_id(row[n]) for n in people
    )


def _csv(text: str, who: Who) -> str | None:
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return None
    columns = _columns(rows[0])
    ids = columns[1]
    kept, changed = [rows[0]], False
    for row in rows[1:]:
        if _theirs(row, columns, who):
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


def holding(
    directories: list[Path], customer_ids: Collection[str], emails: Collection[str | None]
) -> tuple[dict[str, list[Any]], list[str]]:
    """What the files under ``directories`` hold about the customers, for their export
    (GDPR Art. 15): exactly what :func:`scrub` would remove or blank — a CSV file's rows of
    theirs (column → value), a JSON-lines file's messages, an ``.errors.txt``'s lines — by
    file; and the files that could not be read (named: the export is not whole then)."""
    who = _Erased(_forms(customer_ids), frozenset(address_key(e) for e in emails if e))
    found: dict[str, list[Any]] = {}
    unreadable: list[str] = []
    for path in _files(directories):
        name = path.name.lower()
        if not name.endswith((".csv", ".csv.gz", ".jsonl", ".errors.txt")):
            continue
        try:
            rows = _held(name, _read(path), who)
        except (OSError, UnicodeDecodeError, csv.Error, EOFError, ValueError) as exc:
            log.error("export: could not read %s: %s", path, type(exc).__name__)
            unreadable.append(str(path))
            continue
        if rows:
            found[str(path)] = rows
    return found, unreadable


def _held(name: str, text: str, who: Who) -> list[Any]:
    if name.endswith(".errors.txt"):
        needles = who.needles()
        return [line for line in text.splitlines() if any(n in address_key(line) for n in needles)]
    if name.endswith(".jsonl"):
        return [record for record in _messages(text) if _to_them(record, who)]
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows:
        return []
    columns = _columns(rows[0])
    ids = columns[1]
    return [
        dict(zip(rows[0], row, strict=False))
        for row in rows[1:]
        if _theirs(row, columns, who) or any(n < len(row) and who.is_id(row[n]) for n in ids)
    ]


def _messages(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _to_them(record: dict[str, Any], who: Who) -> bool:
    """A stand-in ESP's message to the address, or with the customer's send key."""
    key = str(record.get("send_key") or (record.get("Metadata") or {}).get("send_key") or "")
    return who.is_address(str(record.get("To") or "")) or who.in_send_key(key)


def _jsonl(text: str, who: Who) -> str | None:
    kept, changed = [], False
    for line in text.splitlines(keepends=True):
        record = json.loads(line) if line.strip() else {}
        if _to_them(record, who):
            changed = True
            continue
        kept.append(line)
    return "".join(kept) if changed else None


def _errors(text: str, who: Who) -> str | None:
    needles = who.needles()
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not any(n in address_key(line) for n in needles)]
    return "".join(kept) if len(kept) != len(lines) else None
