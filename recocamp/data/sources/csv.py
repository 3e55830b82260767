"""CSV files in, domain values out: the import formats, each documented in README.md.

Formats
-------
``standard`` purchases (our own): ``order_id, customer_id, item_id, quantity, unit_price,
ordered_at`` required; ``line_no`` and ``is_return`` optional. An empty ``customer_id`` is a
guest order; ``ordered_at`` is ISO 8601 (without an offset it is read in the shop's zone).

``online-retail``: the UCI Online Retail file as it is (``InvoiceNo, StockCode, Description,
Quantity, InvoiceDate, UnitPrice, CustomerID, Country``; local times of the shop). Invoices
starting with ``C`` are returns; lines of normal invoices with quantity or price <= 0 are
adjustments and are skipped (counted in the report); an empty CustomerID is a guest.

``customers`` and ``items``: see :data:`CUSTOMER_COLUMNS` and :data:`ITEM_COLUMNS` (required)
and ``CUSTOMER_OPTIONAL``, ``ITEM_OPTIONAL``. A header with a column a format does not know,
or a column twice, is refused (:func:`header_problems`).

Every row either becomes a value, a skip with a reason, or a :class:`Problem` naming its
line and column; files may be gzip-compressed (``.gz``). Nothing here touches the store.
Values are held to the bounds of :mod:`recocamp.domain` (id length and characters, numeric
ranges, text sizes), the same the API applies; bytes that are not UTF-8, a NUL, or a field
past ``FIELD_MAX`` characters are problems of the line they are on.
"""

from __future__ import annotations

import csv
import difflib
import errno
import gzip
import io
import os
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from decimal import Decimal
from itertools import compress, groupby, repeat
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, NamedTuple, TypeVar, cast
from urllib.parse import urlsplit

from recocamp.config_files import open_regular
from recocamp.domain import (
    FALLBACK_LOCALE,
    FIELD_MAX,
    GZIP_RATIO_MAX,
    ID_MAX,
    LINE_NO_MAX,
    PRICE_MAX,
    QUANTITY_MAX,
    TEXT_MAX,
    YEAR_MAX,
    YEAR_MIN,
    ConsentBasis,
    Customer,
    Item,
    Locale,
    Purchase,
    birthday_problem,
    composed,
    email_problem,
    future_problem,
    id_problem,
    locale_problem,
    price_problem,
    range_problem,
    text_problem,
    zone_name_problem,
)
from recocamp.errors import DataImportError, Problem, mask_addresses

T = TypeVar("T")

STANDARD_COLUMNS = ("order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at")
ONLINE_RETAIL_COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
STANDARD_OPTIONAL = ("line_no", "is_return")
CUSTOMER_COLUMNS = ("id", "email")
CUSTOMER_OPTIONAL = (
    "first_name",
    "locale",
    "time_zone",
    "country",
    "birthday",
    "consent_basis",
    "consent_at",
    "consent_source",
    "objected_to_profiling",
)
ITEM_COLUMNS = ("id", "title", "category", "price")
ITEM_OPTIONAL = ("in_stock", "url", "image_url", "is_service")
PURCHASE_FORMATS = ("standard", "online-retail")
TRUE_WORDS = {"1", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "n", "f", ""}
# undecodable bytes (kept as lone surrogates by errors="surrogateescape") and NUL
_UNREADABLE = re.compile("[\x00\udc80-\udcff]")
_UNDECODED = re.compile("[\udc80-\udcff]")
_SHOWN = 60  # characters of a long value shown in a problem
RECORD_MAX = 1_000_000  # characters in one CSV record; a longer one is refused unread


def shown(value: object) -> object:
    """A value as a problem shows it: long text cut, undecodable bytes as bytes, and any
    e-mail address masked (``<address>``): a problem reaches the terminal, the worker's run
    record and a rejected file's ``.errors.txt``, and the value of a field that cannot be
    read (a byte that is not UTF-8, a NUL) may be an address, as may an id (shops that key
    customers by address)."""
    if not isinstance(value, str):
        return value
    if "@" in value:
        value = mask_addresses(value)
    if _UNDECODED.search(value):
        raw = value.encode("utf-8", "surrogateescape")
        return raw[:_SHOWN] + (b"..." if len(raw) > _SHOWN else b"")
    if len(value) > _SHOWN:
        return f"{value[:_SHOWN]}… ({len(value):,} characters)"
    return value


def printable(name: object) -> str:
    """A file's name or path as a log line shows it: a character that is not printable (a
    line break, an escape) written as Python escapes it. Whoever may drop files names them:
    a line break in a name wrote a log line of the uploader's making under the worker's, an
    escape sequence drove the operator's terminal."""
    text = str(name)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class RowProblem(Exception):
    """Raised by a row parser; becomes a :class:`Problem` with the row's line number."""

    def __init__(self, column: str, message: str, value: object) -> None:
        super().__init__(message)
        self.column, self.message, self.value = column, message, shown(value)


@dataclass(frozen=True, slots=True)
class Skip:
    """A row that is read but deliberately not imported, with the reason for the report."""

    reason: str


# a purchase line's values, in Purchase's field order (building a Purchase per line cost a
# fifth of an import's reading; the importer stages these, the API makes Purchases of them)
PurchaseValues = tuple[str, int, str | None, str, int, float, datetime, bool]


class RetailLine(NamedTuple):
    """An online-retail row: the purchase's values plus what the catalogue needs from it."""

    values: PurchaseValues
    description: str
    country: str


GZIP_FLOOR = 1 << 20  # bytes a small .gz file may always decompress to


def open_bytes(path: Path, *, follow_links: bool = True, one_name: bool = False) -> IO[bytes]:
    """A regular file opened for reading, else OSError saying what it is: an import reads
    its file twice (the SHA-256, then the rows), so ``<(zcat orders.gz)`` was hashed, then
    read empty, and ``/dev/zero`` hashed for ever; a named pipe is never waited on
    (``O_NONBLOCK``). With ``follow_links`` False never through a symbolic link
    (``O_NOFOLLOW``): the drop folder sets links and pipes aside before it imports, and an
    uploader could swap a link in between (the link's target was read and imported). With
    ``one_name``, nor a file with another name (a hard link, :func:`hard_link`), for the
    same reason."""
    handle = open_regular(path, follow_links=follow_links)
    names = os.fstat(handle.fileno()).st_nlink
    if one_name and names > 1:
        handle.close()
        raise OSError(errno.EINVAL, hard_link(names))
    return handle


def hard_link(names: int) -> str:
    """What a file with ``names`` names (``st_nlink``) is, in words."""
    return f"a hard link (a file with {names} names)"


def open_text(path: Path, max_ratio: int = GZIP_RATIO_MAX, *, follow_links: bool = True) -> IO[str]:
    """Open a CSV file, transparently gunzipping ``.gz``; a missing file is a DataImportError.

    Bytes that are not UTF-8 do not stop the reading (``surrogateescape``): :func:`read_rows`
    reports them as a problem of their own line and column, next to the file's other problems.
    A ``.gz`` file decompresses to at most ``max_ratio`` times its size (or ``GZIP_FLOOR``):
    48 KB of gzip holding 50 million blank lines cost half a minute of CPU to read through.
    ``.GZ`` is ``.gz``: the drop folder takes names in any case. ``follow_links`` False:
    neither a symbolic nor a hard link is read (:func:`open_bytes`).
    """
    try:
        opened = open_bytes(path, follow_links=follow_links, one_name=not follow_links)
        if path.suffix.lower() == ".gz":
            opened = inflated(opened, max_ratio)
    except OSError as exc:
        raise DataImportError(path, [Problem(f"cannot open file: {exc.strerror}")]) from None
    return io.TextIOWrapper(opened, encoding="utf-8-sig", errors="surrogateescape", newline="")


def inflated(packed: IO[bytes], max_ratio: int) -> IO[bytes]:
    """A gzip file's decompressed bytes, read as they are needed, to at most ``max_ratio``
    times its compressed size (or ``GZIP_FLOOR``): past that a read raises
    :class:`FileTooLarge`, having held no more than a buffer of it. Closing it closes
    ``packed``."""
    by_ratio = max_ratio * os.fstat(packed.fileno()).st_size
    if by_ratio >= GZIP_FLOOR:
        limit, why = by_ratio, f"{max_ratio} times its size, ingest.max_gzip_ratio"
    else:  # a small file: the floor, which the message must not call the ratio's
        limit = GZIP_FLOOR
        why = (
            "the least any .gz file may decompress to; "
            f"{max_ratio} times its size, ingest.max_gzip_ratio, is {by_ratio:,}"
        )
    unzipped = gzip.GzipFile(fileobj=packed, mode="rb")
    return cast(IO[bytes], io.BufferedReader(_Inflated(unzipped, limit, why, packed)))


class FileTooLarge(Exception):
    """A ``.gz`` file decompressing past its limit (:func:`open_text`): refused there."""


class GzipDamaged(OSError):
    """A ``.gz`` file whose bytes cannot be decompressed (cut short, a damaged deflate
    stream, a wrong checksum): refused at the line reached, as :class:`FileTooLarge` is.
    zlib's own error is neither an OSError nor an EOFError, and escaped the importer (and
    ended the drop folder's run, the file left to end every run after it)."""


class _Inflated(io.RawIOBase):
    """A gzip file's bytes, counted: past ``limit`` a read raises :class:`FileTooLarge`."""

    def __init__(self, inner: gzip.GzipFile, limit: int, why: str, raw: IO[bytes]) -> None:
        super().__init__()
        self.inner, self.limit, self.why, self.total = inner, limit, why, 0
        self.raw = raw  # the compressed file: a GzipFile given a file object leaves it open

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            count = self.inner.readinto(buffer)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise GzipDamaged(f"the .gz file is damaged: {exc}") from None
        self.total += count
        if self.total > self.limit:
            raise FileTooLarge(
                f"the file decompresses to more than {self.limit:,} bytes ({self.why}): "
                "the rest is not read"
            )
        return count

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.raw.close()
            super().close()


class RecordTooLong(Exception):
    """A CSV record past ``RECORD_MAX`` characters: refused before the rest of it is read."""


class BoundedLines:
    """The lines of a text handle for ``csv.reader``, each read with a size limit: one
    record (all the physical lines a quoted field spans) past ``limit`` characters raises
    :class:`RecordTooLong` after ``limit + 1`` characters were read, so a 3 GB line inside
    a small gzip file is refused without being decompressed whole. ``csv.field_size_limit``
    alone would not do: ``csv.reader`` only sees a line once it was read whole."""

    def __init__(self, handle: IO[str], limit: int) -> None:
        self.handle, self.limit, self.left = handle, limit, limit

    def __iter__(self) -> BoundedLines:
        return self

    def __next__(self) -> str:
        line = self.handle.readline(self.left + 1)
        if not line:
            raise StopIteration
        self.left -= len(line)
        if self.left < 0:
            raise RecordTooLong(f"a record is longer than {self.limit:,} characters")
        return line


# a record's fields, or the marker of a record that cannot be read (see check_width)
Record = list[str] | dict[str, str]
BATCH_RECORDS = 10_000  # records read per batch (Records.batches)
BATCH_CHARS = 4_000_000  # characters read per batch, at most one record more


class Batch(NamedTuple):
    """Records read together: the line each starts on, the records, and whether every
    record is a plain field list of the header's width (``Records.batches``)."""

    lines: list[int]
    records: list[Record]
    clean: bool


def _clean(raw: list[list[str]], width: int) -> bool:
    """Every record has the header's width (a blank record has none: the header has at
    least the two required columns), a field that is not empty (:func:`_blank`) and no
    undecodable byte or NUL."""
    return (
        set(map(len, raw)) <= {width}
        and all(map(any, raw))
        and not _UNREADABLE.search("".join(map("".join, raw)))
    )


def _blank(values: list[str]) -> bool:
    """Whether a record holds nothing: a blank line, or separators alone (``,,,,``, of any
    width), as a spreadsheet exports the rows below its data that were ever formatted. Each
    such row was a problem ("is empty"), and the file refused for rows without data."""
    return not any(values)


class Records:
    """The records of a CSV file after its header, as ``(line number, fields)``; the header
    (read when this is made) must contain every required column and nothing but required
    and ``optional`` columns, each once (:func:`header_problems`): a misspelled optional
    column (``objected_to_profilling``) would otherwise be read as absent and its values
    lost without a word.

    A record that cannot be read (wrong width, bytes that are not UTF-8, a NUL, a field past
    ``FIELD_MAX``, a record past ``RECORD_MAX``) comes as a marker that :func:`check_width`
    turns into its problem; after a field or record past its limit the rest of the file is
    not read (where would it resume?). Memory stays bounded whatever the file holds: a record
    is read with a size limit (:class:`BoundedLines`). Fields stay a list (a dict per row
    cost a tenth of an import): :meth:`row` makes the row of a record."""

    def __init__(
        self,
        path: Path,
        required: tuple[str, ...],
        handle: IO[str],
        optional: tuple[str, ...] = (),
        max_listed: int = 20,
    ) -> None:
        csv.field_size_limit(FIELD_MAX)
        self.lines = BoundedLines(handle, RECORD_MAX)
        self.reader = csv.reader(self.lines)
        self.header = _header(path, self.reader)
        problems, more = header_problems(self.header, required, optional, max_listed)
        if problems:
            raise DataImportError(path, problems, more=more)

    def __iter__(self) -> Iterator[tuple[int, Record]]:
        for batch in self.batches():
            yield from zip(batch.lines, batch.records, strict=True)

    def batches(self, size: int = BATCH_RECORDS) -> Iterator[Batch]:
        """The records in batches of at most ``size`` records or about ``BATCH_CHARS``
        characters (so a batch of long, bad records stays small), each with the lines the
        records start on. A batch is ``clean`` when every record is a plain field list of
        the header's width with nothing unreadable: checked once per batch, in C, rather
        than per record; a batch that is not goes record by record (:meth:`_one_by_one`)."""
        reader, lines, width = self.reader, self.lines, len(self.header)
        limit = lines.limit
        while True:
            starts: list[int] = []
            raw: list[list[str]] = []
            failed: tuple[int, dict[str, str]] | None = None
            used = 0
            while len(raw) < size and used < BATCH_CHARS:
                line = reader.line_num + 1  # where it starts (a quoted field may span lines)
                lines.left = limit  # a new record: its own limit
                try:
                    values = next(reader)
                except StopIteration:
                    break
                # a field past FIELD_MAX, a record past RECORD_MAX, a .gz past its ratio or damaged
                except (csv.Error, RecordTooLong, FileTooLarge, GzipDamaged) as exc:
                    failed = (line, _unreadable("*", f"cannot be read: {exc}", ""))
                    break
                starts.append(line)
                raw.append(values)
                used += limit - lines.left
            if failed is None and _clean(raw, width):
                yield Batch(starts, cast(list[Record], raw), True)
            else:
                yield self._one_by_one(starts, raw, failed)
            if failed is not None or (len(raw) < size and used < BATCH_CHARS):  # the end
                return

    def _one_by_one(
        self, starts: list[int], raw: list[list[str]], failed: tuple[int, dict[str, str]] | None
    ) -> Batch:
        """A batch checked record by record: blank records left out, a record of the wrong
        width or with something unreadable as the marker of its problem, then the marker
        of the record that could not be read (the last: the reading stops there)."""
        width = len(self.header)
        kept: list[int] = []
        records: list[Record] = []
        for line, values in zip(starts, raw, strict=True):
            if _blank(values):
                continue
            kept.append(line)
            if len(values) != width:
                records.append(_unreadable("*", f"expected {width} fields", str(len(values))))
            elif _UNREADABLE.search("".join(values)):
                records.append(_unreadable_field(dict(zip(self.header, values, strict=True))))
            else:
                records.append(values)
        if failed is not None:
            kept.append(failed[0])
            records.append(failed[1])
        return Batch(kept, records, False)

    def row(self, record: Record) -> dict[str, str]:
        """A record as a row (column name → field); a marker as it is."""
        if isinstance(record, dict):
            return record
        return dict(zip(self.header, record, strict=True))


def header_problems(
    header: list[str], required: tuple[str, ...], optional: tuple[str, ...], max_listed: int = 20
) -> tuple[list[Problem], int]:
    """The problems of a header (all on line 1): required columns missing, columns that are
    neither required nor optional (with the known name closest to each, if one is close),
    columns given twice (which one would count?). At most ``max_listed`` of them, and how
    many more (``ingest.max_errors_listed``, as for rows): a header of 120,000 unknown
    names was 120,000 problems, 23 MB printed, 3 s spent finding the name close to each.

    A first line naming none of the known columns is no header but, as likely as not, a
    row of data (a file without its header line): it is refused as a whole and none of its
    fields is shown, each of which may be an address or a name (``shown`` masks an address
    only in a field of its own). A header that is one, with a column missing, is shown as
    :func:`shown` shows a value: cut, an address masked."""
    known = (*required, *optional)
    if not set(header) & set(known):
        return [Problem(_no_header(header, required), line=1)], 0
    problems: list[Problem] = []
    missing = [name for name in required if name not in header]
    if missing:
        problems.append(
            Problem(
                f"wrong header: missing column(s) {', '.join(missing)}; "
                f"expected {', '.join(required)}",
                line=1,
                value=shown(",".join(header)),
            )
        )
    unnamed = [str(n) for n, name in enumerate(header, start=1) if not name]
    if unnamed:  # not an unknown column '' followed by the known ones: say what it is
        many = len(unnamed) > 1
        problems.append(
            Problem(
                f"{len(unnamed)} column{'s' * many} without a name (column{'s' * many} "
                f"{', '.join(unnamed)}: a spreadsheet's empty column, or separators at the "
                f"end of the line): delete {'them' if many else 'it'} and export again",
                line=1,
            )
        )
    more = 0
    for name in dict.fromkeys(name for name in header if name):
        wrong = name not in known or header.count(name) > 1
        if wrong and len(problems) >= max_listed:
            more += 1
        elif name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
            problems.append(Problem(f"unknown column; {hint}", line=1, column=str(shown(name))))
        elif wrong:
            problems.append(Problem("column appears more than once", line=1, column=name))
    return problems, more


def _no_header(header: list[str], required: tuple[str, ...]) -> str:
    """The problem of a first line that names no known column: what a header must hold,
    and why this one may not have been read as one (a separator other than the comma)."""
    first = ",".join(header)
    separator = next((name for sign, name in _SEPARATORS if sign in first), None)
    why = (
        f"; it looks {separator}-separated (a spreadsheet's regional CSV): "
        "save it as comma-separated UTF-8"
        if separator
        else "; a file without its header line, or of another kind or format? "
        "(its fields are not shown: they may be data)"
    )
    return (
        f"wrong header: missing column(s) {', '.join(required)}: "
        f"the first line names none of the known columns{why}"
    )


_SEPARATORS = ((";", "semicolon"), ("\t", "tab"), ("|", "pipe"))


def read_rows(
    path: Path,
    required: tuple[str, ...],
    handle: IO[str],
    optional: tuple[str, ...] = (),
    max_listed: int = 20,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` of each record (:class:`Records`)."""
    records = Records(path, required, handle, optional, max_listed)
    for line, record in records:
        yield line, records.row(record)


def _header(path: Path, reader: Iterator[list[str]]) -> list[str]:
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise DataImportError(
            path, [Problem("the file is empty (no header line)", line=1)]
        ) from None
    except (csv.Error, RecordTooLong, FileTooLarge, gzip.BadGzipFile, EOFError, OSError) as exc:
        raise DataImportError(path, [Problem(f"not a readable CSV file: {exc}", line=1)]) from None
    if _utf16(header):
        raise DataImportError(path, [Problem(UTF16, line=1)])
    if _UNREADABLE.search("".join(header)):
        bad = next(name for name in header if _UNREADABLE.search(name))
        problem = Problem("the header is not UTF-8 text", line=1, value=shown(bad))
        raise DataImportError(path, [problem])
    return header


UTF16 = (
    'the file is UTF-16 text (a spreadsheet\'s "Unicode text"), not UTF-8: save it as '
    "CSV UTF-8 (comma-separated)"
)
_UTF16_BOMS = ("\udcff\udcfe", "\udcfe\udcff")  # FF FE, FE FF as surrogateescape reads them


def _utf16(header: list[str]) -> bool:
    """Whether a header line read as UTF-8 is UTF-16 text: its byte order mark (Excel's
    "Unicode text" starts with FF FE), or, without one, every other byte a NUL (ASCII
    names in UTF-16). It was refused as "not UTF-8 text", its bytes shown, which tells
    nobody what to do."""
    joined = ",".join(header)
    if joined.startswith(_UTF16_BOMS):
        return True
    return len(joined) >= 4 and joined.count("\x00") * 3 >= len(joined)


_BAD = "\x00bad"  # the key of an unreadable row's marker (no header name holds a NUL)


def _unreadable(column: str, message: str, value: str) -> dict[str, str]:
    return {_BAD: message, "column": column, "value": value}


def _unreadable_field(row: dict[str, str]) -> dict[str, str]:
    column, value = next((c, v) for c, v in row.items() if _UNREADABLE.search(v))
    first = _UNREADABLE.search(value)
    assert first is not None
    if first.group() == "\x00":
        return _unreadable(column, "contains a NUL character", value)
    byte = ord(first.group()) - 0xDC00
    return _unreadable(
        column, f"is not UTF-8 (byte 0x{byte:02X} at character {first.start() + 1})", value
    )


def check_width(row: dict[str, str]) -> None:
    """Raise the problem of a row :func:`read_rows` could not read (wrong width, bytes)."""
    if _BAD in row:
        raise RowProblem(row["column"], row[_BAD], row["value"])


# --- field parsers: each raises RowProblem naming its column ---------------------------


def text(
    row: dict[str, str], column: str, *, required: bool = True, limit: int = 0, redact: bool = False
) -> str | None:
    """Free text of at most ``limit`` characters (default: the column's own size in
    ``TEXT_MAX``), no NUL; ``redact`` keeps the value (an address) out of the problem."""
    value = row.get(column, "").strip()
    if required and not value:
        raise RowProblem(column, "is empty", value)
    problem = text_problem(value, limit or TEXT_MAX.get(column, 200))
    if problem:
        raise RowProblem(column, problem, "<redacted>" if redact else value)
    return value or None


WEB_SCHEMES = ("http", "https")


def web_url_problem(value: str) -> str | None:
    """Why ``value`` cannot be an item's page or picture, or None: those go into the
    e-mails' ``href``/``src`` and the offer API as they are, so only an absolute http(s) URL
    with a host will do (``javascript:``, ``data:``, ``//host`` and ``/path`` will not), and
    no whitespace or control character (a URL escapes them)."""
    try:
        parts = urlsplit(value)
        absolute = parts.scheme.lower() in WEB_SCHEMES and bool(parts.hostname)
    except ValueError:  # an unclosed "[" of an IPv6 host
        absolute = False
    if not absolute:
        return "is not an absolute http(s) URL"
    if any(c.isspace() or not c.isprintable() for c in value):
        return "contains whitespace or a non-printable character (a URL escapes them)"
    return None


def web_url(row: dict[str, str], column: str) -> str | None:
    """An optional absolute http(s) URL (:func:`web_url_problem`): an item's page or
    picture, which the e-mails link and the offer API hands out as they are."""
    value = text(row, column, required=False)
    problem = web_url_problem(value) if value is not None else None
    if problem:
        raise RowProblem(column, problem, value)
    return value


def ident(row: dict[str, str], column: str, *, required: bool = True) -> str | None:
    """An id (customer, item, order): ``domain.ID_MAX`` printable characters, read trimmed
    and composed (``domain.composed``)."""
    value = composed(row.get(column, "").strip())
    if required and not value:
        raise RowProblem(column, "is empty", value)
    problem = id_problem(value) or (SCIENTIFIC if _SCIENTIFIC.fullmatch(value) else None)
    if problem:
        raise RowProblem(column, problem, value)
    return value or None


# an id as a spreadsheet shows a long number (1.23457E+12): its other digits are lost, and
# the lines of customers 1234567890123 and 1234569999999 were stored under one id, in silence
_SCIENTIFIC = re.compile(r"[0-9](?:\.[0-9]+)?[Ee][+-][0-9]+")
_EXPONENT = re.compile(r"[0-9][Ee][+-][0-9]")  # a field that may be one (fast paths)
SCIENTIFIC = (
    "looks like a number in scientific notation, as a spreadsheet shows a long number: its "
    "other digits are lost; format the column as text and export it again"
)


def _plain_ids(joined: str) -> bool:
    """:func:`ident`'s checks of ids joined into one string, at once: printable, composed,
    none that may be in scientific notation (such a line goes the slower way)."""
    return joined.isprintable() and _is_composed(joined) and not _EXPONENT.search(joined)


def _is_composed(joined: str) -> bool:
    """Whether ids joined into one string are all composed as they are (``domain.composed``):
    joining composed ids never composes them further unless one starts with a combining
    mark, which only sends the line the slower way."""
    return joined.isascii() or unicodedata.is_normalized("NFC", joined)


# Numbers as a file writes them, and only so (the API takes JSON numbers alone): ASCII
# digits, a sign, a decimal point; not the other forms int() and float() accept (digits of
# other scripts such as "١٢", "1_000", exponents such as "1e6", "nan", "inf").
_WHOLE = re.compile(r"[+-]?[0-9]+(?:\.0*)?")  # "2.0" as a spreadsheet writes a count
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
# "1.000", "12.345": a thousand and 12,345 written the German way (a point between
# thousands), or 1 and 12.345 with a decimal point; which, no value says (see thousands_problem)
_THOUSANDS = re.compile(r"[+-]?[1-9][0-9]{0,2}\.[0-9]{3}")
_THREE_DECIMALS = re.compile(r"\.[0-9]{3}(?![0-9])")  # a field that may be one (fast paths)


def plain_number(value: float) -> str:
    """A float as :func:`number` reads it, without exponent (``repr`` and ``csv`` write
    0.00001 as ``1e-05``): the shortest digits that read back as the same float, with a
    fourth decimal where three would be ambiguous (``1.2340``: :func:`thousands_problem`;
    the purchase API's lines are read by the file's parser)."""
    written = format(Decimal(repr(value)), "f")
    return written + "0" if _THOUSANDS.fullmatch(written) else written


def thousands_problem(raw: str) -> str | None:
    """Why ``raw`` cannot be read as a number, or None: one to three digits, a point and
    three digits (``1.000``, ``12.345``) is a thousand or 12,345 in German notation (a
    point between thousands, as a German spreadsheet writes them) and 1 or 12.345 with a
    decimal point. ``1.000`` in a quantity column was read as 1: a file of a German shop
    imported with a thousandth of its quantities, in silence. Nothing else is ambiguous:
    German groups thousands by three, and never after a leading 0 (``0.125``), so a price
    of 12.345 is written ``12.3450``."""
    if not _THOUSANDS.fullmatch(raw):
        return None
    whole = raw.replace(".", "")
    return (
        f"is ambiguous: {whole} written with a thousands point (German notation), or "
        f"{raw} with a decimal point; write {whole} for the one (no thousands separators), "
        f"{raw}0 for the other"
    )


def integer(row: dict[str, str], column: str, low: int, high: int) -> int:
    """A whole number in ``[low, high]``: ASCII digits after an optional sign, and at most
    a decimal point followed by zeros (``2.0``, as spreadsheets write counts)."""
    raw = row.get(column, "").strip()
    if not _WHOLE.fullmatch(raw):
        raise RowProblem(column, "is not a whole number", raw)
    ambiguous = thousands_problem(raw)
    if ambiguous:
        raise RowProblem(column, ambiguous, raw)
    try:
        value = int(raw.partition(".")[0])
    except ValueError:  # more digits than int() reads (sys.int_info): far out of range
        value = low - 1
    problem = range_problem(value, low, high)
    if problem:
        raise RowProblem(column, problem, raw)
    return value


def number(row: dict[str, str], column: str, low: float, high: float) -> float:
    """A price in ``[low, high]``: ASCII digits after an optional sign, with at most one
    decimal point and the decimals the store keeps (``domain.price_problem``); no exponent
    (no price is written ``1e3``: a spreadsheet turning a code into a number is)."""
    raw = row.get(column, "").strip()
    if not _DECIMAL.fullmatch(raw):
        comma = "," in raw and _DECIMAL.fullmatch(raw.replace(".", "").replace(",", ".", 1))
        why = " (a decimal comma? write the number with a decimal point)" if comma else ""
        raise RowProblem(column, f"is not a number{why}", raw)
    ambiguous = thousands_problem(raw)
    if ambiguous:
        raise RowProblem(column, ambiguous, raw)
    value = float(raw)  # a very long one is an infinity: out of range
    problem = range_problem(value, low, high) or price_problem(value)
    if problem:
        raise RowProblem(column, problem, raw)
    return value


def boolean(row: dict[str, str], column: str, default: bool) -> bool:
    raw = row.get(column)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False if word else default
    raise RowProblem(column, "is not a boolean (true/false)", raw)


_STAMPS_CACHED = 100_000
RETAIL_TIME = "%Y-%m-%d %H:%M:%S"  # the online-retail format's times
_RETAIL_STAMP = re.compile("[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")


class Timestamps:
    """Parses local or ISO 8601 timestamps to aware UTC, caching repeats (orders share them).
    With ``now``, an instant past it by more than the clocks' skew is a problem
    (``domain.future_problem``): an order of 2030 is a typo or a wrong clock, stands first in
    every "latest" for years (recency, lapsed days, forecasts' history) and is refused by
    the purchase API already."""

    def __init__(self, zone: tzinfo, fmt: str | None = None, now: datetime | None = None) -> None:
        self.zone, self.fmt, self.now = zone, fmt, now
        self.cache: dict[str, datetime] = {}

    def __call__(self, row: dict[str, str], column: str) -> datetime:
        return self.of(row.get(column, "").strip(), column)

    def of(self, raw: str, column: str) -> datetime:
        """The instant of a stripped field."""
        cached = self.cache.get(raw)
        if cached is None:
            if len(self.cache) >= _STAMPS_CACHED:  # a file of distinct times: keep it small
                self.cache.clear()
            cached = self.cache[raw] = self._parse(raw, column)
        return cached

    def many(self, raws: list[str], column: str) -> list[datetime]:
        """:meth:`of` of each of these stripped fields, each distinct one once."""
        cache = self.cache
        found = {raw: cache.get(raw) or self.of(raw, column) for raw in set(raws)}
        return list(map(found.__getitem__, raws))

    def _parse(self, raw: str, column: str) -> datetime:
        try:
            value = self._naive(raw)
        except ValueError:
            expected = self.fmt or "ISO 8601, e.g. 2011-12-09T12:50:00+00:00"
            raise RowProblem(column, f"is not a date-time ({expected})", raw) from None
        wall = value if value.tzinfo is None else None
        if wall is not None:
            value = value.replace(tzinfo=self.zone)
        try:
            utc = value.astimezone(UTC)
        except (OverflowError, ValueError):  # 9999-12-31T23:00-05:00 lies past year 9999 in UTC
            utc = None
        if utc is None or not YEAR_MIN <= utc.year <= YEAR_MAX:
            raise RowProblem(
                column,
                f"is out of range (in UTC it falls outside the years {YEAR_MIN}–{YEAR_MAX})",
                raw,
            )
        if wall is not None and utc.astimezone(self.zone).replace(tzinfo=None) != wall:
            raise RowProblem(column, self._skipped(), raw)
        late = None if self.now is None else future_problem(utc, self.now)
        if late and self.now is not None:
            raise RowProblem(
                column,
                f"{late} (the import runs at {self.now.astimezone(UTC):%Y-%m-%d %H:%M} UTC)",
                raw,
            )
        return utc

    def _skipped(self) -> str:
        """The problem of a wall time the clocks skip in the zone it is read in: it names
        no instant (it was read as one an hour away, in silence). A file of such times is
        likely in another zone (a UTC export without offsets). A wall time that happens
        twice (the clocks go back) is its first: a file cannot be asked which it meant."""
        zone = getattr(self.zone, "key", None) or str(self.zone)
        return (
            f"does not exist in {zone} (the clocks go forward over it): is the file in "
            "another time zone? give the offset"
        )

    def _naive(self, raw: str) -> datetime:
        """The field as a datetime (ISO 8601, or ``fmt``). ``2010-12-01 08:26:00`` in the
        online-retail format is read as ISO 8601 is, in C, which gives what ``strptime``
        gives it (a tenth of the time); anything else, or a value ISO 8601 refuses, is
        ``strptime``'s, which says what it thinks of it."""
        if self.fmt is None:
            return datetime.fromisoformat(raw)
        if self.fmt == RETAIL_TIME and _RETAIL_STAMP.fullmatch(raw):
            try:
                return datetime.fromisoformat(raw)
            except ValueError:
                pass
        return datetime.strptime(raw, self.fmt)


def day(row: dict[str, str], column: str, now: datetime | None) -> date | None:
    """A birthday (``domain.birthday_problem``, unless ``now`` is None); the value is never
    shown."""
    raw = row.get(column, "").strip()
    if not raw:
        return None
    try:
        value = date.fromisoformat(raw)
    except ValueError:
        raise RowProblem(column, "is not a date (YYYY-MM-DD)", "<redacted>") from None
    problem = None if now is None else birthday_problem(value, now)
    if problem:
        raise RowProblem(column, problem, "<redacted>")
    return value


# --- row parsers ---------------------------------------------------------------------


class LineNumbers:
    """Numbers the lines of each order in file order, so re-imports hit the same keys."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def next(self, order_id: str) -> int:
        number = self._seen.get(order_id, 0) + 1
        self._seen[order_id] = number
        return number

    def many(self, order_ids: list[str]) -> list[int]:
        """:meth:`next` of each of these, in order: a run of lines of one order at once."""
        seen: dict[str, int] = self._seen
        numbers: list[int] = []
        for order_id, run in groupby(order_ids):
            before = seen.get(order_id, 0)
            after = seen[order_id] = before + len(list(run))
            numbers += range(before + 1, after + 1)
        return numbers


def standard_purchase(
    row: dict[str, str], stamps: Timestamps, lines: LineNumbers
) -> Purchase | Skip:
    """A purchase event's line (the API's): its ids composed, as a file's and as
    ``PUT /v1/customers`` takes the customer's (``domain.composed``)."""
    values = standard_values(row, stamps, lines)
    return values if isinstance(values, Skip) else Purchase(*values)


def standard_values(
    row: dict[str, str], stamps: Timestamps, lines: LineNumbers
) -> PurchaseValues | Skip:
    """A standard purchases row's values, or a skip (an adjustment: neither a purchase nor a
    return, ``Purchase.is_purchase``); ids read composed."""
    check_width(row)
    order_id = ident(row, "order_id")
    assert order_id is not None
    quantity = integer(row, "quantity", -QUANTITY_MAX, QUANTITY_MAX)
    unit_price = number(row, "unit_price", -PRICE_MAX, PRICE_MAX)
    is_return = boolean(row, "is_return", default=quantity < 0)
    given_line = row.get("line_no", "").strip()
    line_no = integer(row, "line_no", 0, LINE_NO_MAX) if given_line else lines.next(order_id)
    customer_id = ident(row, "customer_id", required=False)
    item_id = ident(row, "item_id") or ""
    ordered_at = stamps(row, "ordered_at")
    if not is_return and (quantity <= 0 or unit_price <= 0):
        return Skip("adjustment")
    return (order_id, line_no, customer_id, item_id, quantity, unit_price, ordered_at, is_return)


_ADJUSTMENT = Skip("adjustment")


@dataclass(frozen=True, slots=True)
class LineColumns:
    """The purchase lines of a batch of records column by column, as ``columns`` of
    :class:`StandardLines` and :class:`RetailLines` read them: the lines kept (each value
    what the line's :class:`PurchaseValues` holds), the file line each starts on, and how
    many lines were adjustments (skipped). The online-retail format adds each line's
    description and country."""

    lines: list[int]
    order_ids: list[str]
    line_nos: list[int]
    customer_ids: list[str | None]
    item_ids: list[str]
    quantities: list[int]
    unit_prices: list[float]
    ordered_at: list[datetime]
    is_returns: list[bool]
    adjustments: int
    descriptions: list[str] | None = None
    countries: list[str] | None = None


def _kept(keep: list[bool], *columns: list[Any]) -> tuple[int, list[list[Any]]]:
    """The columns of the lines to keep, and how many were not."""
    dropped = keep.count(False)
    if not dropped:
        return 0, list(columns)
    return dropped, [list(compress(column, keep)) for column in columns]


def _field(records: list[list[str]], index: int) -> Iterator[str]:
    """One field of each record (the records' column: ``zip(*records)`` costs 3 times as
    much)."""
    return map(itemgetter(index), records)


def _stripped(records: list[list[str]], index: int) -> list[str]:
    return list(map(str.strip, _field(records, index)))


def _ids_pass(values: list[str], required: bool) -> bool:
    """:func:`ident`'s checks of a column at once: ids present (if ``required``), at most
    ``ID_MAX`` characters, printable, composed, none in scientific notation."""
    lengths = list(map(len, values))
    return (
        (not required or min(lengths) > 0)
        and max(lengths) <= ID_MAX
        and _plain_ids("".join(values))
    )


def _numbers_pass(quantities: list[int], prices: list[float]) -> bool:
    """Quantities and prices in range; no price NaN or infinite (their sum would not be
    finite: finite prices in range cannot add up to an infinity)."""
    total = sum(prices)
    return (
        min(quantities) >= -QUANTITY_MAX
        and max(quantities) <= QUANTITY_MAX
        and total - total == 0.0
        and min(prices) >= -PRICE_MAX
        and max(prices) <= PRICE_MAX
    )


# a decimal past the store's fourth that is not 0 (``2.50000`` is 2.5): :func:`number` refuses it
_FINER = re.compile(r"\.[0-9]{4}[0-9]*[1-9]")


def _plain_numbers(whole: str, prices: str, line_nos: str) -> bool:
    """Whether int() and float() read these fields (or a column's fields joined, the prices
    by a line break) only as :func:`integer` and :func:`number` do: ASCII, no "_", no
    exponent in a price (what they accept beyond that, "nan" and "inf", is out of range
    there), no price finer than the store keeps, none with three decimals (it may be
    written with a thousands point: :func:`thousands_problem`; int() reads no point)."""
    joined = whole + prices + line_nos
    return (
        joined.isascii()
        and "_" not in joined
        and "e" not in prices
        and "E" not in prices
        and not _FINER.search(prices)
        and not _THREE_DECIMALS.search(prices)
    )


def _texts_pass(values: list[str], limit: int) -> bool:
    """:func:`text`'s checks of a column at once: at most ``limit`` characters, no NUL."""
    return max(map(len, values)) <= limit and "\x00" not in "".join(values)


class StandardLines:
    """:func:`standard_values` of records (field lists) of a file with this header, faster.

    The usual line is read straight from its fields with the same checks (ids printable and
    short, numbers in range); a line any check does not pass at once, or a marker, goes to
    :func:`standard_values` as a row, which returns the same values or raises the problem
    naming the column and the value. Line numbers are counted (``LineNumbers``) only once
    a line passed, so the slower way counts each line exactly once too."""

    def __init__(self, header: list[str], stamps: Timestamps, lines: LineNumbers) -> None:
        self.header, self.stamps, self.lines = header, stamps, lines
        self.cached = stamps.cache  # read first: a parse only where it has no entry
        at = {name: n for n, name in enumerate(header)}  # as dict(zip): the last one wins
        self.order, self.customer, self.item = at["order_id"], at["customer_id"], at["item_id"]
        self.quantity, self.price, self.time = at["quantity"], at["unit_price"], at["ordered_at"]
        self.line_no, self.is_return = at.get("line_no"), at.get("is_return")
        # with line_no the file gives the numbers, and two lines may share one; without it
        # every line is numbered in file order, and none repeats
        self.numbers_from_file = self.line_no is not None

    def __call__(self, record: Record) -> PurchaseValues | Skip:
        if isinstance(record, dict):
            return self._slow(record)
        order_id = record[self.order].strip()
        customer_id = record[self.customer].strip()
        item_id = record[self.item].strip()
        if not (
            0 < len(order_id) <= ID_MAX
            and 0 < len(item_id) <= ID_MAX
            and len(customer_id) <= ID_MAX
            and _plain_ids(order_id + item_id + customer_id)  # ident's checks, at once
        ):
            return self._slow(record)
        given = None if self.line_no is None else record[self.line_no].strip()
        if not _plain_numbers(record[self.quantity], record[self.price], given or ""):
            return self._slow(record)
        try:
            quantity = int(record[self.quantity])  # int() and float() strip blanks themselves
            unit_price = float(record[self.price])
            line_no = int(given) if given else -1
            raw = record[self.time].strip()
            ordered_at = self.cached.get(raw) or self.stamps.of(raw, "ordered_at")
        except (ValueError, RowProblem):
            return self._slow(record)
        if not (
            -QUANTITY_MAX <= quantity <= QUANTITY_MAX
            and -PRICE_MAX <= unit_price <= PRICE_MAX  # NaN and infinities are not
            and (not given or 0 <= line_no <= LINE_NO_MAX)
        ):
            return self._slow(record)
        word = "" if self.is_return is None else record[self.is_return].strip().lower()
        is_return = _return_word(word, quantity < 0)
        if is_return is None:
            return self._slow(record)
        if not given:
            line_no = self.lines.next(order_id)
        if not is_return and (quantity <= 0 or unit_price <= 0):
            return _ADJUSTMENT
        customer = customer_id or None
        return (order_id, line_no, customer, item_id, quantity, unit_price, ordered_at, is_return)

    def columns(self, lines: list[int], records: list[list[str]]) -> LineColumns | None:
        """:meth:`__call__` of every record of a clean batch at once, column by column (a
        few C loops rather than a Python call per line), or None when any line does not
        pass a check at once: then each line goes through :meth:`__call__`, which gives the
        same values, skips and problems. Nothing is counted (``LineNumbers``) before every
        check passed; a file giving some lines a ``line_no`` and others none goes line by
        line too."""
        if not records:
            return None
        order_ids, item_ids = _stripped(records, self.order), _stripped(records, self.item)
        customers = _stripped(records, self.customer)
        if not (
            _ids_pass(order_ids, True) and _ids_pass(item_ids, True) and _ids_pass(customers, False)
        ):
            return None
        given = None if self.line_no is None else _stripped(records, self.line_no)
        counted = given is None or not any(given)  # numbered in file order (LineNumbers)
        if given is not None and not counted and not all(given):
            return None  # some lines given a number, some not: line by line
        raw_quantities = list(_field(records, self.quantity))
        raw_prices = list(_field(records, self.price))
        if not _plain_numbers("".join(raw_quantities), "\n".join(raw_prices), "".join(given or ())):
            return None
        try:
            quantities = list(map(int, raw_quantities))
            unit_prices = list(map(float, raw_prices))
            numbers = None if given is None or counted else list(map(int, given))
            ordered_at = self.stamps.many(_stripped(records, self.time), "ordered_at")
        except (ValueError, RowProblem):
            return None
        if not _numbers_pass(quantities, unit_prices) or (
            numbers is not None and not (min(numbers) >= 0 and max(numbers) <= LINE_NO_MAX)
        ):
            return None
        if self.is_return is None:
            is_returns = [quantity < 0 for quantity in quantities]
        else:
            words = list(map(str.lower, _stripped(records, self.is_return)))
            if not _BOOLEAN_WORDS.issuperset(words):
                return None
            is_returns = [
                word in TRUE_WORDS or (not word and quantity < 0)  # _return_word
                for word, quantity in zip(words, quantities, strict=True)
            ]
        line_nos = self.lines.many(order_ids) if numbers is None else numbers
        customer_ids = [customer or None for customer in customers]
        return _line_columns(
            lines,
            [order_ids, line_nos, customer_ids, item_ids, quantities, unit_prices, ordered_at],
            is_returns,
        )

    def _slow(self, record: Record) -> PurchaseValues | Skip:
        row = record if isinstance(record, dict) else dict(zip(self.header, record, strict=True))
        return standard_values(row, self.stamps, self.lines)


_BOOLEAN_WORDS = TRUE_WORDS | FALSE_WORDS


def _line_columns(
    lines: list[int],
    values: list[list[Any]],
    is_returns: list[bool],
    texts: list[list[str]] | None = None,
) -> LineColumns:
    """The columns of the lines kept: returns, and purchases of a positive quantity at a
    positive price (the others are adjustments, ``Purchase.is_purchase``)."""
    quantities, prices = values[4], values[5]
    keep = [
        is_return or (quantity > 0 and price > 0)
        for is_return, quantity, price in zip(is_returns, quantities, prices, strict=True)
    ]
    dropped, kept = _kept(keep, lines, *values, is_returns, *(texts or []))
    lines, order_ids, line_nos, customer_ids, item_ids, quantities, prices, ordered_at = kept[:8]
    descriptions, countries = (kept[9], kept[10]) if texts is not None else (None, None)
    return LineColumns(
        lines,
        order_ids,
        line_nos,
        customer_ids,
        item_ids,
        quantities,
        prices,
        ordered_at,
        kept[8],
        dropped,
        descriptions,
        countries,
    )


def _return_word(word: str, default: bool) -> bool | None:
    """:func:`boolean` of a stripped, lowercase word; None if it is none."""
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False if word else default
    return None


def online_retail_line(
    row: dict[str, str], stamps: Timestamps, lines: LineNumbers
) -> RetailLine | Skip:
    check_width(row)
    invoice = ident(row, "InvoiceNo") or ""
    line_no = lines.next(invoice)
    quantity = integer(row, "Quantity", -QUANTITY_MAX, QUANTITY_MAX)
    unit_price = number(row, "UnitPrice", -PRICE_MAX, PRICE_MAX)
    ordered_at = stamps(row, "InvoiceDate")
    customer = ident(row, "CustomerID", required=False)
    is_return = invoice.startswith("C")
    if not is_return and (quantity <= 0 or unit_price <= 0):
        return Skip("adjustment")
    item_id = ident(row, "StockCode") or ""
    values = (
        invoice,
        line_no,
        retail_customer_id(customer),
        item_id,
        quantity,
        unit_price,
        ordered_at,
    )
    description = text(row, "Description", required=False, limit=TEXT_MAX["title"])
    country = text(row, "Country", required=False, limit=TEXT_MAX["country"])
    return RetailLine((*values, is_return), description or "", country or "")


_TITLE_MAX, _COUNTRY_MAX = TEXT_MAX["title"], TEXT_MAX["country"]


class RetailLines:
    """:func:`online_retail_line` of records (field lists) of a file with this header, faster.

    As :class:`StandardLines`: the usual line is read straight from its fields with the same
    checks (ids printable and short, numbers in range, texts short and without NUL); a line
    any check does not pass at once, or a marker, goes to :func:`online_retail_line` as a
    row, which returns the same values or raises the problem. The line is counted
    (``LineNumbers``) only once every check passed, so each line is counted exactly once
    either way, adjustments included (as :func:`online_retail_line` counts them)."""

    def __init__(self, header: list[str], stamps: Timestamps, lines: LineNumbers) -> None:
        self.header, self.stamps, self.lines = header, stamps, lines
        self.cached = stamps.cache
        at = {name: n for n, name in enumerate(header)}  # as dict(zip): the last one wins
        self.invoice, self.item, self.customer = at["InvoiceNo"], at["StockCode"], at["CustomerID"]
        self.quantity, self.price, self.time = at["Quantity"], at["UnitPrice"], at["InvoiceDate"]
        self.description, self.country = at["Description"], at["Country"]
        self.numbers_from_file = False  # lines are numbered in file order: none repeats

    def __call__(self, record: Record) -> RetailLine | Skip:
        if isinstance(record, dict):
            return self._slow(record)
        invoice = record[self.invoice].strip()
        item_id = record[self.item].strip()
        customer = record[self.customer].strip()
        description = record[self.description].strip()
        country = record[self.country].strip()
        if not (
            0 < len(invoice) <= ID_MAX
            and 0 < len(item_id) <= ID_MAX
            and len(customer) <= ID_MAX
            and _plain_ids(invoice + item_id + customer)  # ident's checks, at once
            and len(description) <= _TITLE_MAX
            and len(country) <= _COUNTRY_MAX
            and "\x00" not in description + country  # text's checks
        ):
            return self._slow(record)
        if not _plain_numbers(record[self.quantity], record[self.price], ""):
            return self._slow(record)
        try:
            quantity = int(record[self.quantity])  # int() and float() strip blanks themselves
            unit_price = float(record[self.price])
            raw = record[self.time].strip()
            ordered_at = self.cached.get(raw) or self.stamps.of(raw, "InvoiceDate")
        except (ValueError, RowProblem):
            return self._slow(record)
        if not (
            -QUANTITY_MAX <= quantity <= QUANTITY_MAX
            and -PRICE_MAX <= unit_price <= PRICE_MAX  # NaN and infinities are not
        ):
            return self._slow(record)
        line_no = self.lines.next(invoice)
        is_return = invoice.startswith("C")
        if not is_return and (quantity <= 0 or unit_price <= 0):
            return _ADJUSTMENT
        values = (invoice, line_no, retail_customer_id(customer or None), item_id, quantity)
        return RetailLine((*values, unit_price, ordered_at, is_return), description, country)

    def columns(self, lines: list[int], records: list[list[str]]) -> LineColumns | None:
        """:meth:`__call__` of every record of a clean batch at once, as
        :meth:`StandardLines.columns` does: None when any line does not pass a check at
        once (then each goes through :meth:`__call__`); nothing counted before."""
        if not records:
            return None
        invoices, item_ids = _stripped(records, self.invoice), _stripped(records, self.item)
        customers = _stripped(records, self.customer)
        descriptions = _stripped(records, self.description)
        countries = _stripped(records, self.country)
        if not (
            _ids_pass(invoices, True)
            and _ids_pass(item_ids, True)
            and _ids_pass(customers, False)
            and _texts_pass(descriptions, _TITLE_MAX)
            and _texts_pass(countries, _COUNTRY_MAX)
        ):
            return None
        raw_quantities = list(_field(records, self.quantity))
        raw_prices = list(_field(records, self.price))
        if not _plain_numbers("".join(raw_quantities), "\n".join(raw_prices), ""):
            return None
        try:
            quantities = list(map(int, raw_quantities))
            unit_prices = list(map(float, raw_prices))
            ordered_at = self.stamps.many(_stripped(records, self.time), "InvoiceDate")
        except (ValueError, RowProblem):
            return None
        if not _numbers_pass(quantities, unit_prices):
            return None
        line_nos = self.lines.many(invoices)
        is_returns = list(map(str.startswith, invoices, repeat("C")))
        ids = {customer: retail_customer_id(customer or None) for customer in set(customers)}
        customer_ids = list(map(ids.__getitem__, customers))
        return _line_columns(
            lines,
            [invoices, line_nos, customer_ids, item_ids, quantities, unit_prices, ordered_at],
            is_returns,
            [descriptions, countries],
        )

    def _slow(self, record: Record) -> RetailLine | Skip:
        row = record if isinstance(record, dict) else dict(zip(self.header, record, strict=True))
        return online_retail_line(row, self.stamps, self.lines)


def retail_customer_id(value: str | None) -> str | None:
    """The customer id an online-retail file's ``CustomerID`` (read by :func:`ident`) is
    stored under: ``17850.0`` (the UCI file's float) and ``17850`` are the same customer;
    ids stay strings. Only there: in the standard formats ``10.0`` is a customer of its own.
    Erasure cleans kept files by the same rule (``data.erasure_files``)."""
    if value is None:
        return None
    return value[:-2] if value.endswith(".0") else value


def customer_row(
    row: dict[str, str],
    stamps: Timestamps,
    now: datetime | None,
    default_locale: Locale = FALLBACK_LOCALE,
) -> Customer:
    """A customers row, held to the bounds the API holds a customer to (``domain``): the
    locale one of ``LOCALES``, a consent given by ``now`` and a birthday from 1900 to
    ``now`` (``now`` None: neither checked, as for a stored profile: ``profiles`` holds
    only the values a change gives to them, or an old import would block every change).
    A row without a locale gets ``default_locale``, the shop's ``[shop] default_locale``."""
    check_width(row)
    basis_raw = (text(row, "consent_basis", required=False, limit=32) or "none").lower()
    try:
        basis = ConsentBasis(basis_raw)
    except ValueError:
        known = ", ".join(member.value for member in ConsentBasis)
        raise RowProblem("consent_basis", f"is not one of {known}", basis_raw) from None
    consent_at = stamps(row, "consent_at") if row.get("consent_at", "").strip() else None
    if basis is not ConsentBasis.NONE and consent_at is None:
        raise RowProblem("consent_at", f"is required for consent_basis {basis.value}", "")
    late = None if consent_at is None or now is None else future_problem(consent_at, now)
    if late:
        raise RowProblem("consent_at", late, row["consent_at"].strip())
    locale = text(row, "locale", required=False) or default_locale
    wrong = locale_problem(locale)
    if wrong:
        raise RowProblem("locale", wrong, locale)
    email = text(row, "email", required=False, redact=True)
    if email is not None and not email.isprintable():  # see address_problem
        raise RowProblem("email", address_problem(email), "<redacted>")
    wrong = None if email is None else email_problem(email)
    if wrong:
        raise RowProblem("email", wrong, "<redacted>")
    return Customer(
        id=ident(row, "id") or "",
        email=email,
        # a name is never shown: a problem's line names no customer, so an erasure could
        # not find it in the run record or a refused file's .errors.txt (see shown)
        first_name=text(row, "first_name", required=False, redact=True),
        locale=locale,
        time_zone=_zone_name(row),
        country=text(row, "country", required=False),
        birthday=day(row, "birthday", now),
        consent_basis=basis,
        consent_at=consent_at,
        consent_source=text(row, "consent_source", required=False),
        objected_to_profiling=boolean(row, "objected_to_profiling", default=False),
    )


def address_problem(email: str) -> str:
    """Why an address with a character that is not printable (``str.isprintable``: a
    control, a line break, a zero-width or bidi format character, a no-break space) is no
    address: none is ever part of one, and a copy of an erased address with one slipped in
    would not match its tombstone (``store.tombstones``). Names the code point only."""
    bad = next(c for c in email if not c.isprintable())
    return f"contains a non-printable character (U+{ord(bad):04X})"


def _zone_name(row: dict[str, str]) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name = text(row, "time_zone", required=False)
    if name is None:
        return None
    problem = zone_name_problem(name)
    if problem:
        raise RowProblem("time_zone", problem, name)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RowProblem("time_zone", "is not an IANA time zone", name) from None
    except OSError:  # a name the zone database cannot open as a file: "a/../b", very long
        raise RowProblem("time_zone", "is not an IANA time zone", name) from None
    return name


def item_row(row: dict[str, str]) -> Item:
    check_width(row)
    price = number(row, "price", 0.0, PRICE_MAX)
    return Item(
        id=ident(row, "id") or "",
        title=text(row, "title") or "",
        category=text(row, "category") or "",
        price=price,
        in_stock=boolean(row, "in_stock", default=True),
        url=web_url(row, "url"),
        image_url=web_url(row, "image_url"),
        is_service=boolean(row, "is_service", default=False),
    )


def collect(
    path: Path,
    rows: Iterator[tuple[int, dict[str, str]]],
    parse: Callable[[dict[str, str]], T | Skip],
    *,
    max_listed: int = 20,
    key: Callable[[T], str] | None = None,
) -> tuple[list[T], dict[str, int], int]:
    """Parse every row; raise one DataImportError listing the problems, else return
    ``(values, skipped counts by reason, rows read)``. With ``key`` (a row's id) an id seen
    again is a problem of its line that names the line it was first on: which of the two
    rows would count? (Only ids are kept for that, never the rows' other fields.)"""
    values: list[T] = []
    skipped: dict[str, int] = {}
    problems: list[Problem] = []
    first: dict[str, int] = {}
    more = read = 0
    for line, row in rows:
        read += 1
        try:
            value = parse(row)
            if key is not None and not isinstance(value, Skip):
                _once(first, key(value), line)
        except RowProblem as exc:
            if len(problems) < max_listed:
                problems.append(Problem(exc.message, line=line, column=exc.column, value=exc.value))
            else:
                more += 1
            continue
        if isinstance(value, Skip):
            skipped[value.reason] = skipped.get(value.reason, 0) + 1
        else:
            values.append(value)
    if problems:
        raise DataImportError(path, problems, more=more)
    return values, skipped, read


def _once(first: dict[str, int], row_id: str, line: int) -> None:
    """Note ``row_id``'s first line; a RowProblem when an earlier line had it."""
    seen = first.setdefault(row_id, line)
    if seen != line:
        raise RowProblem("id", f"the same id as line {seen} (an id once per file)", row_id)


# --- writers: the standard formats, so generated data goes through the same importer ------


def _write(path: Path, header: tuple[str, ...], rows: Iterator[tuple[object, ...]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(("" if value is None else value for value in row) for row in rows)


def _iso(value: datetime | date | None) -> str | None:
    return None if value is None else value.isoformat()


def write_purchases(path: Path, rows: list[Purchase]) -> None:
    header = (*STANDARD_COLUMNS, *STANDARD_OPTIONAL)
    _write(
        path,
        header,
        (
            (
                p.order_id,
                p.customer_id,
                p.item_id,
                p.quantity,
                plain_number(p.unit_price),
                _iso(p.ordered_at),
                p.line_no,
                str(p.is_return).lower(),
            )
            for p in rows
        ),
    )


def write_customers(path: Path, rows: list[Customer]) -> None:
    header = (*CUSTOMER_COLUMNS, *CUSTOMER_OPTIONAL)
    _write(
        path,
        header,
        (
            (
                c.id,
                c.email,
                c.first_name,
                c.locale,
                c.time_zone,
                c.country,
                _iso(c.birthday),
                c.consent_basis.value,
                _iso(c.consent_at),
                c.consent_source,
                str(c.objected_to_profiling).lower(),
            )
            for c in rows
        ),
    )


def write_items(path: Path, rows: list[Item]) -> None:
    header = (*ITEM_COLUMNS, *ITEM_OPTIONAL)
    _write(
        path,
        header,
        (
            (
                i.id,
                i.title,
                i.category,
                plain_number(i.price),
                str(i.in_stock).lower(),
                i.url,
                i.image_url,
                str(i.is_service).lower(),
            )
            for i in rows
        ),
    )
