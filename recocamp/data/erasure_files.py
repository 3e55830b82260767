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

Files are read as streams, never whole (a kept purchases file may be several GB, which the
import reads in bounded memory): a file with nothing to clean is read once and left as it
is; one with something to clean is read again, cleaned into a new file beside it as it is
read, and renamed over it. A ``.gz`` file is decompressed as it is read, to a bounded size,
and a line past ``LINE_MAX`` characters is not held: either makes the file unreadable
(reported). Only regular files are read: a symbolic link is not followed (the drop folder
sets links aside: their targets are not recocamp's), nor a hard link (a file with more than
one name, set aside unread by the drop folder for the same reason), a pipe or device never
opened.

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
import stat
import tempfile
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from recocamp.data.sources import csv as sources
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
LINE_MAX = 10_000_000  # characters in one line of a file cleaned here (see _lines)
VALUE_BATCH = 50_000  # ids and addresses of a kept file looked up at once (drop_erased)
CHECKED_MAX = 200_000  # ids and addresses of a kept file remembered as looked up
QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")  # repr()s in .errors.txt
# what reading a file may raise when it cannot be cleaned: reported, never skipped in silence
UNREADABLE = (OSError, UnicodeDecodeError, csv.Error, EOFError, ValueError, sources.FileTooLarge)
NOT_COVERED = (
    "files written where the operator chose: `recocamp privacy export --output`, "
    "`recocamp preview --html`, a --demo-dir other than demo/, `recocamp fake-esp --data-dir`",
    "the stand-in ESP while it runs (`recocamp fake-esp`, `worker --demo`): the messages it "
    "holds in memory and shows at /_messages until it stops",
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
        except UNREADABLE as exc:
            log.error(
                "erasure: could not clean %s: %s", sources.printable(path), type(exc).__name__
            )
            done.failed.append(path)
            continue
        if changed:
            done.rewritten.append(path)
    return done


class Who(Protocol):
    """Whom a file is cleaned of: values of address and id columns, text in error reports."""

    def is_address(self, value: str) -> bool: ...

    def is_id(self, value: str, retail: bool = False) -> bool: ...  # see _id_text

    def names(self, line: str) -> bool: ...  # a line of an .errors.txt names them

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


def _id_text(value: str, retail: bool = False) -> str:
    """An id of a file as the import stores it: trimmed; in an online-retail file's
    ``CustomerID`` column also without the ``.0`` of the UCI file's floats
    (``sources.retail_customer_id``), and only there. Everywhere else ids are strings,
    compared as written: ``10.0`` is another customer than ``10``, whose erasure took
    ``10.0``'s lines too (and ``10.0``'s erasure left them)."""
    value = value.strip()
    return (sources.retail_customer_id(value) or "") if retail else value


def drop_erased(
    engine: Engine,
    key: tombstones.Keys | None,
    paths: Sequence[Path],
    max_ratio: int = GZIP_RATIO_LIMIT,
) -> int:
    """Clean files the drop folder keeps (``processed_dir``, ``rejected/``) of customers
    erased before the file arrived: the import skipped their rows, the kept copy must not
    hold them either. Their ids and addresses are found by the tombstones (keyed hashes),
    looked up ``VALUE_BATCH`` at a time as each file is read (a kept file of many GB is never
    held, nor the ids of all its customers), and the files rewritten as by an erasure.
    Called once the files are in place: an erasure committed after this check scrubs them
    there itself. Returns the files rewritten; a file that cannot be read is logged and left
    (a refused file can be unreadable), and so is a ``.gz`` file past ``max_ratio`` (the
    import's ``ingest.max_gzip_ratio``): a gzip bomb set aside is read no further than the
    import read it. A store without tombstones reads no file: nobody it names can have
    been erased."""
    paths = [path for path in paths if _regular(path)]  # a link set aside is not ours
    if not paths:
        return 0
    with engine.connect() as connection:
        if tombstones.checkable(connection, key, "keeping imported files") is None:
            return 0
    readable: list[Path] = []
    ids: set[str] = set()
    addresses: set[str] = set()
    for path in paths:
        try:
            found = _erased_in(engine, key, path, max_ratio)
        except UNREADABLE as exc:
            log.warning(
                "could not check %s for erased customers: %s",
                sources.printable(path),
                type(exc).__name__,
            )
            continue
        readable.append(path)
        ids |= found[0]
        addresses |= found[1]
    if not ids and not addresses:
        return 0
    who = _Erased(frozenset(ids), frozenset(addresses))
    rewritten = sum(1 for path in readable if _scrub_file(path, who, max_ratio))
    log.info(
        "kept drop-folder file(s) cleaned of %d erased customer(s): %d file(s)",
        len(ids) + len(addresses),
        rewritten,
    )
    return rewritten


def _erased_in(
    engine: Engine, key: tombstones.Keys | None, path: Path, max_ratio: int
) -> tuple[set[str], set[str]]:
    """The ids and addresses a file names that a tombstone names. The file is read as a
    stream and its values looked up ``VALUE_BATCH`` at a time, one short connection each
    (none held open while a large file is read); a value looked up once is not looked up
    again while fewer than ``CHECKED_MAX`` are remembered (a file's customers repeat: a
    large purchases file names each many times)."""
    erased: tuple[set[str], set[str]] = (set(), set())
    checked: tuple[set[str], set[str]] = (set(), set())
    batch: tuple[set[str], set[str]] = (set(), set())

    def look_up() -> None:
        with engine.connect() as connection:
            found = tombstones.tombstoned(
                connection, key, batch[0], batch[1], "keeping imported files"
            )
        for n in (0, 1):
            erased[n].update(found[n])
            if len(checked[0]) + len(checked[1]) < CHECKED_MAX:
                checked[n].update(batch[n])
            batch[n].clear()

    with _opened(path, max_ratio) as source:
        for values in _values(path, source):
            for n in (0, 1):
                batch[n].update(v for v in values[n] if v and v not in checked[n])
            if len(batch[0]) + len(batch[1]) >= VALUE_BATCH:
                look_up()
    if batch[0] or batch[1]:
        look_up()
    return erased


def _values(path: Path, source: IO[str]) -> Iterator[tuple[Iterable[str], Iterable[str]]]:
    """The ids and addresses each line of an ``.errors.txt`` or row of a CSV file names."""
    if path.name.lower().endswith(".errors.txt"):
        for line in _lines(source):
            quoted = []
            for literal in QUOTED.findall(line):
                with contextlib.suppress(ValueError, SyntaxError):
                    quoted.append(_id_text(str(ast.literal_eval(literal))))  # as quoted
            yield quoted, map(address_key, EMAIL.findall(line))
        return
    rows = csv.reader(_lines(source))
    first = next(rows, None)
    if first is None:
        return
    address_columns, id_columns, people, retail = _columns(first)
    id_columns += people
    for row in rows:
        width = len(row)
        yield (
            [_id_text(row[n], n in retail) for n in id_columns if n < width],
            [address_key(row[n]) for n in address_columns if n < width],
        )


@dataclass(frozen=True, slots=True)
class _Erased:
    """Ids and addresses (``tokens.address_key``: trimmed, lower-case, composed) of
    customers being erased, or of a file's customers that erasure tombstones name."""

    ids: frozenset[str]
    addresses: frozenset[str]

    def is_address(self, value: str) -> bool:
        return address_key(value) in self.addresses

    def is_id(self, value: str, retail: bool = False) -> bool:
        return _id_text(value, retail) in self.ids

    def names(self, line: str) -> bool:
        """Whether a line of an ``.errors.txt`` names them: an id quoted as the report
        quotes values (``repr``), as written (ids are case-sensitive: ``'c1'`` is not
        ``C1``'s), or an address in any case."""
        if any(repr(i) in line for i in self.ids):
            return True
        return bool(self.addresses) and any(a in address_key(line) for a in self.addresses)

    def in_send_key(self, key: str) -> bool:
        """Whether the send key (``outbox.send_key``: ``campaign/customer/period``; neither
        a campaign name nor a period holds ``/``, a customer id may) names one of them."""
        _, _, rest = key.partition("/")
        customer, slash, _ = rest.rpartition("/")
        return bool(slash) and customer in self.ids


# Reads a file's text (``source``) and says whether cleaning changes it. With ``out``, it
# writes the cleaned text there as it reads; without, it stops at the first change.
Cleaner = Callable[[IO[str], Who, IO[str] | None], bool]


def _files(directories: list[Path]) -> Iterator[Path]:
    """The regular files of one name under ``directories``, each once. A symbolic link is
    not followed (a link set aside by the drop folder may point anywhere: its target is not
    recocamp's to read, to export or to rewrite), nor is a hard link read (a file with more
    than one name: the drop folder sets it aside unread, for the same reason), nor a folder,
    pipe or device."""
    seen: set[Path] = set()
    for directory in directories:
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*")):
            if _regular(path) and path.resolve() not in seen:
                seen.add(path.resolve())
                yield path


def _regular(path: Path) -> bool:
    """A regular file of one name (the drop folder's rule: ``st_nlink`` > 1 is not ours)."""
    try:
        found = path.lstat()
    except OSError:
        return False
    return stat.S_ISREG(found.st_mode) and found.st_nlink == 1


def _scrub_file(path: Path, who: Who, max_ratio: int = GZIP_RATIO_LIMIT) -> bool:
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return _rewrite(path, who, _csv, max_ratio)
    if name.endswith(".jsonl"):
        return _rewrite(path, who, _jsonl, max_ratio)
    if name.endswith(".errors.txt"):
        return _rewrite(path, who, _errors, max_ratio)
    return False


@contextlib.contextmanager
def _opened(path: Path, max_ratio: int = GZIP_RATIO_LIMIT) -> Iterator[IO[str]]:
    """A file's text as a stream (UTF-8, line ends as they are); a ``.gz`` file decompressed
    as it is read, to at most ``max_ratio`` times its size (or ``GZIP_FLOOR``), as the import
    reads it: past that, ``FileTooLarge``, never the whole of a gzip bomb in memory. Opened without
    following a symbolic link and without waiting on a pipe: only a regular file of one name
    is read (a link swapped in after :func:`_regular` looked is refused, OSError)."""
    source = raw = sources.open_bytes(path, follow_links=False, one_name=True)
    try:
        if path.name.lower().endswith(".gz"):
            source = sources.inflated(raw, max_ratio)  # closing it closes the file
    except BaseException:
        raw.close()
        raise
    with io.TextIOWrapper(source, encoding="utf-8", newline="") as text:
        yield text


def _lines(source: IO[str]) -> Iterator[str]:
    """The lines of a text (ends kept: ``\\n``, ``\\r\\n`` or ``\\r``), each read with a
    limit: a line past ``LINE_MAX`` characters makes the file unreadable (ValueError) before
    more of it is held. No file recocamp writes has one (the import refuses a record past
    ``RECORD_MAX`` characters), and memory stays bounded whatever a file holds."""
    while line := source.readline(LINE_MAX + 1):
        if len(line) > LINE_MAX:
            raise ValueError(f"a line is longer than {LINE_MAX:,} characters")
        yield line


def _split(source: IO[str], keepends: bool = True) -> Iterator[str]:
    """The lines of a text as ``str.splitlines`` cuts it, read line by line."""
    for line in _lines(source):
        yield from line.splitlines(keepends)


def _rewrite(path: Path, who: Who, clean: Cleaner, max_ratio: int = GZIP_RATIO_LIMIT) -> bool:
    """Rewrite ``path`` cleaned by ``clean`` when that changes anything, atomically. Read
    twice, as a stream each time: to the first change (a file with nothing to clean is
    neither written nor touched, and needs no writable folder), then, cleaned, into a new
    file beside it (gzip again for a ``.gz`` file) that replaces it."""
    with _opened(path, max_ratio) as source:
        if not clean(source, who, None):
            return False
    zipped = path.name.lower().endswith(".gz")

    def write(out: IO[bytes]) -> bool:
        with _opened(path, max_ratio) as source, _writing(out, zipped) as text:
            return clean(source, who, text)

    return replace_atomically(path, write)


# zlib's default level (gzip's own default, 9, took three times the CPU: 19-28 s for a
# 200 MB file to save a few per cent of its size)
GZIP_LEVEL = 6


@contextlib.contextmanager
def _writing(out: IO[bytes], zipped: bool) -> Iterator[IO[str]]:
    """A text stream (UTF-8, line ends as written) into ``out``, gzip-compressed when
    ``zipped``; ``out`` stays open."""
    packed = (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=GZIP_LEVEL)
        if zipped
        else None
    )
    text = io.TextIOWrapper(out if packed is None else packed, encoding="utf-8", newline="")
    try:
        yield text
        text.flush()
    finally:
        try:
            text.detach()
        finally:
            if packed is not None:
                packed.close()  # writes the gzip trailer (also after a failure: not at exit)


def replace_atomically(path: Path, write: Callable[[IO[bytes]], bool]) -> bool:
    """Put what ``write`` writes in ``path``'s place in one rename, with its mode and times,
    when it says it changed something; otherwise the new file is deleted and ``path`` left
    as it is. A crash leaves the old file or the new one, never half of either. Returns
    whether ``path`` was replaced."""
    found = path.stat()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".erasing-")
    try:
        with os.fdopen(handle, "wb") as out:
            changed = write(out)
            if changed:
                out.flush()
                os.fsync(out.fileno())
        if not changed:
            Path(temporary).unlink()
            return False
        os.chmod(temporary, found.st_mode & 0o777)
        os.utime(temporary, ns=(found.st_atime_ns, found.st_mtime_ns))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return True


Columns = tuple[list[int], list[int], list[int], list[int]]


def _columns(first: list[str]) -> Columns:
    """Columns of addresses, of customer ids in order lines, of the ids of a customers file
    (an ``id`` column beside an address column), and the order lines' id column whose
    ``.0`` the import drops (``CustomerID`` of an online-retail file: one whose header holds
    that format's columns, as the import requires them). A byte order mark before the first
    name (a spreadsheet's UTF-8 export; the import reads past it) is not part of it: the
    file's first column went unrecognised, and an erased customer's id stayed in it."""
    header = [name.strip().removeprefix("\ufeff").strip() for name in first]
    addresses = [n for n, name in enumerate(header) if ADDRESS.match(name)]
    ids = [
        n
        for n, name in enumerate(header)
        if name.lower().replace("_", "").replace(" ", "") in ID_COLUMNS
    ]
    people = [n for n, name in enumerate(header) if name.lower() == "id"] if addresses else []
    retail = set(sources.ONLINE_RETAIL_COLUMNS) <= set(header)
    floats = [n for n in ids if header[n] == "CustomerID"] if retail else []
    return addresses, ids, people, floats


def _theirs(row: list[str], columns: Columns, who: Who) -> bool:
    """Whether the row is the customer's own (a customers row, one to their address)."""
    addresses, _, people, _ = columns
    return any(n < len(row) and who.is_address(row[n]) for n in addresses) or any(
        n < len(row) and who.is_id(row[n]) for n in people
    )


def _csv(source: IO[str], who: Who, out: IO[str] | None) -> bool:
    """A CSV file without the customer's rows, their id emptied in order lines."""
    rows = csv.reader(_lines(source))
    first = next(rows, None)
    if first is None:
        return False
    columns = _columns(first)
    ids, retail = columns[1], columns[3]
    writer = None if out is None else csv.writer(out)
    if writer is not None:
        writer.writerow(first)
    changed = False
    for row in rows:
        theirs = _theirs(row, columns, who)
        for n in () if theirs else ids:
            if n < len(row) and who.is_id(row[n], n in retail):
                row[n], changed = "", True
        changed = changed or theirs
        if writer is None:
            if changed:
                return True
        elif not theirs:
            writer.writerow(row)
    return changed


def holding(
    directories: list[Path], customer_ids: Collection[str], emails: Collection[str | None]
) -> tuple[dict[str, list[Any]], list[str]]:
    """What the files under ``directories`` hold about the customers, for their export
    (GDPR Art. 15): exactly what :func:`scrub` would remove or blank — a CSV file's rows of
    theirs (column → value), a JSON-lines file's messages, an ``.errors.txt``'s lines — by
    file; and the files that could not be read (named: the export is not whole then). Each
    file is read as a stream: only what is theirs is held."""
    who = _Erased(_forms(customer_ids), frozenset(address_key(e) for e in emails if e))
    found: dict[str, list[Any]] = {}
    unreadable: list[str] = []
    for path in _files(directories):
        name = path.name.lower()
        if not name.endswith((".csv", ".csv.gz", ".jsonl", ".errors.txt")):
            continue
        try:
            with _opened(path) as source:
                rows = _held(name, source, who)
        except UNREADABLE as exc:
            log.error("export: could not read %s: %s", sources.printable(path), type(exc).__name__)
            unreadable.append(str(path))
            continue
        if rows:
            found[str(path)] = rows
    return found, unreadable


def _held(name: str, source: IO[str], who: Who) -> list[Any]:
    if name.endswith(".errors.txt"):
        return [line for line in _split(source, keepends=False) if who.names(line)]
    if name.endswith(".jsonl"):
        return [record for record in _messages(source) if _to_them(record, who)]
    rows = csv.reader(_lines(source))
    first = next(rows, None)
    if first is None:
        return []
    columns = _columns(first)
    ids, retail = columns[1], columns[3]
    return [
        dict(zip(first, row, strict=False))
        for row in rows
        if _theirs(row, columns, who)
        or any(n < len(row) and who.is_id(row[n], n in retail) for n in ids)
    ]


def _messages(source: IO[str]) -> Iterator[dict[str, Any]]:
    for line in _split(source):
        if line.strip():
            yield json.loads(line)


def _to_them(record: dict[str, Any], who: Who) -> bool:
    """A stand-in ESP's message to the address, or with the customer's send key."""
    key = str(record.get("send_key") or (record.get("Metadata") or {}).get("send_key") or "")
    return who.is_address(str(record.get("To") or "")) or who.in_send_key(key)


def _jsonl(source: IO[str], who: Who, out: IO[str] | None) -> bool:
    """A JSON-lines file without the messages to the customer."""
    return _without_lines(source, out, lambda line: _to_them(_message(line), who))


def _message(line: str) -> dict[str, Any]:
    return json.loads(line) if line.strip() else {}


def _errors(source: IO[str], who: Who, out: IO[str] | None) -> bool:
    """An ``.errors.txt`` without the lines naming the customer."""
    return _without_lines(source, out, who.names)


def _without_lines(source: IO[str], out: IO[str] | None, theirs: Callable[[str], bool]) -> bool:
    """Copy ``source`` to ``out`` without the lines ``theirs`` picks; whether any was left
    out. Without ``out``, only whether any would be (it stops at the first)."""
    changed = False
    for line in _split(source):
        if not theirs(line):
            if out is not None:
                out.write(line)
        elif out is None:
            return True
        else:
            changed = True
    return changed
