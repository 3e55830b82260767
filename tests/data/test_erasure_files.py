"""The files erasure cleans, read as streams: a kept file of many MB is scrubbed and
exported in memory far below its size, a file with nothing to clean is not touched, a
gzip bomb is refused while it is read, and a symbolic link is never followed."""

from __future__ import annotations

import gzip
import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from recocamp import privacy
from recocamp.data import erasure_files
from recocamp.data.ingest import Importer
from recocamp.settings import Settings
from tests.conftest import NOW

T = TypeVar("T")
HEADER = "order_id,customer_id,item_id,quantity,unit_price,ordered_at\r\n"
ERASED = "c1"
ADDRESS = "erin@example.test"


def order(n: int, customer: str) -> str:
    return f"o{n},{customer},i{n % 97},1,2.50,2011-07-01T10:00:00Z\r\n"


def kept_orders(path: Path, lines: int, theirs: set[int]) -> list[str]:
    """A purchases file as the drop folder keeps it, written line by line: ``c1``'s orders
    on the lines in ``theirs``; returns its lines as the scrub must leave them."""
    expected = [HEADER]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(HEADER)
        for n in range(lines):
            out.write(order(n, ERASED if n in theirs else f"c{n % 5000 + 2}"))
            expected.append(order(n, "" if n in theirs else f"c{n % 5000 + 2}"))
    return expected


def erased(engine: sa.Engine, tmp_path: Path) -> bytes | None:
    """A store in which ``c1`` was erased; the tombstones' key."""
    settings = Settings(signing_key=SecretStr("k" * 32))
    key = settings.signing_key_bytes()
    people = tmp_path / "people.csv"
    people.write_text(f"id,email\n{ERASED},{ADDRESS}\nc2,otto@example.test\n")
    Importer(engine, zone=ZoneInfo("UTC"), now=NOW, erasure_key=key).customers(people)
    assert privacy.erase(engine, settings, ERASED, NOW, via="test") is not None
    return key


def peak_of(call: Callable[[], T]) -> tuple[T, int]:
    """What ``call`` returns and the most memory Python held meanwhile (tracemalloc)."""
    tracemalloc.start()
    try:
        return call(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_kept_file_is_scrubbed_in_memory_far_below_its_size(tmp_path: Path) -> None:
    """A 7 MB file took several times its size: read whole, then split into rows."""
    kept = tmp_path / "processed" / "purchases-1.csv"
    expected = kept_orders(kept, 160_000, {0, 80_000, 159_999})
    os.chmod(kept, 0o640)
    os.utime(kept, ns=(1_000_000_000, 2_000_000_000))
    size = kept.stat().st_size
    assert size > 7_000_000

    done, peak = peak_of(lambda: erasure_files.scrub([kept.parent], [ERASED], []))
    assert peak < 1_000_000, f"{peak:,} bytes held for a file of {size:,}"
    assert (done.rewritten, done.failed) == ([kept], [])
    with kept.open(encoding="utf-8", newline="") as handle:
        assert handle.readlines() == expected  # c1's orders kept as guest lines
    assert kept.stat().st_mtime_ns == 2_000_000_000  # the retention clock
    assert kept.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in kept.parent.iterdir()] == [kept.name]  # no temporary file left


def test_a_large_file_kept_after_an_erasure_is_cleaned_in_memory_far_below_its_size(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """What the drop folder runs after each import: the file's ids are looked up in the
    tombstones as it is read (it read the texts of every kept file first, whole)."""
    key = erased(engine, tmp_path)
    kept = tmp_path / "processed" / "purchases-1.csv"
    expected = kept_orders(kept, 160_000, {3, 159_999})
    size = kept.stat().st_size

    rewritten, peak = peak_of(lambda: erasure_files.drop_erased(engine, key, [kept]))
    assert rewritten == 1
    # the look-up of its 5,000 customers' hashes (at most VALUE_BATCH at once), not the file
    assert peak < 3_000_000, f"{peak:,} bytes held for a file of {size:,}"
    with kept.open(encoding="utf-8", newline="") as handle:
        assert handle.readlines() == expected


def test_values_looked_up_in_small_batches_find_every_erased_customer(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 7 values, 20 remembered as looked up: the erased id is found however the
    batches fall, in a file and in the reasons beside it."""
    monkeypatch.setattr(erasure_files, "VALUE_BATCH", 7)
    monkeypatch.setattr(erasure_files, "CHECKED_MAX", 20)
    key = erased(engine, tmp_path)
    kept = tmp_path / "rejected" / "purchases-1.csv"
    expected = kept_orders(kept, 400, {3, 390})
    reasons = kept.with_name("purchases-1.csv.errors.txt")
    lines = [f"line {n}, column 'customer_id': 'c{n}' is not known\n" for n in range(400)]
    reasons.write_text("".join(lines))

    assert erasure_files.drop_erased(engine, key, [kept, reasons]) == 2
    with kept.open(encoding="utf-8", newline="") as handle:
        assert handle.readlines() == expected
    assert reasons.read_text() == "".join(lines[:1] + lines[2:])


def test_the_export_reads_a_large_kept_file_in_memory_far_below_its_size(
    tmp_path: Path,
) -> None:
    kept = tmp_path / "processed" / "purchases-1.csv.gz"
    plain = tmp_path / "plain.csv"
    kept_orders(plain, 160_000, {5, 159_998})
    kept.parent.mkdir()
    with plain.open("rb") as source, gzip.open(kept, "wb", compresslevel=1) as out:
        out.writelines(source)
    size = plain.stat().st_size

    (found, unreadable), peak = peak_of(
        lambda: erasure_files.holding([kept.parent], [ERASED], [ADDRESS])
    )
    assert peak < 1_000_000, f"{peak:,} bytes held for a file of {size:,}"
    assert unreadable == []
    assert [row["order_id"] for row in found[str(kept)]] == ["o5", "o159998"]


def test_a_file_with_nothing_to_clean_is_not_touched(tmp_path: Path) -> None:
    """Read to its end, neither rewritten nor replaced: the same file (inode), bytes and
    times, whatever its line ends (a rewrite writes CSV's own)."""
    folder = tmp_path / "rejected"
    folder.mkdir()
    others = folder / "customers-2.csv"
    others.write_bytes(b"id,email\nc2,otto@example.test\nc3,ida@example.test\n")
    reasons = folder / "customers-2.csv.errors.txt"
    reasons.write_text("line 2, column 'consent_basis': 'maybe' is not a basis\n")
    before = {path: (path.stat(), path.read_bytes()) for path in (others, reasons)}

    done = erasure_files.scrub([folder], [ERASED], [ADDRESS])
    assert (done.rewritten, done.failed) == ([], [])
    for path, (found, data) in before.items():
        now = path.stat()
        assert (now.st_ino, now.st_mtime_ns, now.st_ctime_ns) == (
            found.st_ino,
            found.st_mtime_ns,
            found.st_ctime_ns,
        )
        assert path.read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in before)


def test_a_gzip_bomb_is_refused_while_it_is_read(tmp_path: Path) -> None:
    """120 MB of one-letter fields gzip to 117 KB: past 1,000 times its size. Reported as a
    file that cannot be cleaned (and is not whole in an export), left as it is, and never
    held: it was decompressed whole into memory, up to the limit, before it was refused."""
    folder = tmp_path / "processed"
    folder.mkdir()
    bomb = folder / "purchases-1.csv.gz"
    filler = ("x," * 499_999 + "x\n").encode() * 120
    bomb.write_bytes(gzip.compress(HEADER.encode() + order(1, ERASED).encode() + filler))
    data = bomb.read_bytes()
    assert len(data) * 1_000 < len(filler)  # past the limit (deflate's best is ~1,030)

    done, scrubbing = peak_of(lambda: erasure_files.scrub([folder], [ERASED], [ADDRESS]))
    assert (done.rewritten, done.failed) == ([], [bomb])
    (found, unreadable), exporting = peak_of(
        lambda: erasure_files.holding([folder], [ERASED], [ADDRESS])
    )
    assert (found, unreadable) == ({}, [str(bomb)])
    assert bomb.read_bytes() == data and [p.name for p in folder.iterdir()] == [bomb.name]
    assert max(scrubbing, exporting) < 20_000_000  # a line (and its row) at a time


def test_a_link_among_the_kept_files_is_not_followed(tmp_path: Path) -> None:
    """A link set aside by the drop folder (``rejected/purchases-9.csv`` → a file of the
    worker's own): its target is neither read into an export nor rewritten, and the link
    stays a link."""
    target = tmp_path / "elsewhere.csv"
    kept_orders(target, 3, {1})
    data = target.read_bytes()
    folder = tmp_path / "rejected"
    folder.mkdir()
    link = folder / "purchases-9.csv"
    link.symlink_to(target)

    assert erasure_files.holding([folder], [ERASED], [ADDRESS]) == ({}, [])
    done = erasure_files.scrub([folder], [ERASED], [ADDRESS])
    assert (done.rewritten, done.failed) == ([], [])
    assert link.is_symlink() and target.read_bytes() == data


@pytest.mark.parametrize("name", ["purchases-1.csv", "purchases-1.csv.gz"])
def test_a_file_that_opens_with_a_byte_order_mark_is_cleaned_of_its_first_column(
    tmp_path: Path, name: str
) -> None:
    """A spreadsheet's UTF-8 export starts with a byte order mark; the import reads past it.
    With ``customer_id`` the first column, the scrub read its name as ``\\ufeffcustomer_id``
    and left the erased customer's id in the kept file."""
    folder = tmp_path / "done"
    folder.mkdir()
    text = "\ufeffcustomer_id,order_id,item_id\r\nc1,o1,i1\r\nc2,o2,i2\r\n".encode()
    path = folder / name
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)

    done = erasure_files.scrub([folder], [ERASED], [])
    assert done.rewritten == [path] and not done.failed
    data = path.read_bytes()
    cleaned = gzip.decompress(data) if name.endswith(".gz") else data
    assert cleaned.decode() == "\ufeffcustomer_id,order_id,item_id\r\n,o1,i1\r\nc2,o2,i2\r\n"


def test_a_hard_link_among_the_kept_files_is_neither_read_nor_rewritten(tmp_path: Path) -> None:
    """A hard link set aside by the drop folder (``rejected/purchases-9.csv``, a second name
    of a file elsewhere): the drop folder never read it, so its rows are not recocamp's. They
    went into the customer's export, and the scrub and ``drop_erased`` replaced the link by a
    cleaned copy (the other name kept every row, now also copied into ``rejected/``)."""
    target = tmp_path / "elsewhere.csv"
    kept_orders(target, 3, {1})
    data = target.read_bytes()
    folder = tmp_path / "rejected"
    folder.mkdir()
    link = folder / "purchases-9.csv"
    os.link(target, link)

    assert erasure_files.holding([folder], [ERASED], [ADDRESS]) == ({}, [])
    done = erasure_files.scrub([folder], [ERASED], [ADDRESS])
    assert (done.rewritten, done.failed) == ([], [])
    assert link.stat().st_ino == target.stat().st_ino and target.read_bytes() == data


def test_a_hard_link_kept_after_an_import_is_not_cleaned(engine: sa.Engine, tmp_path: Path) -> None:
    """drop_erased reads only files of one name: a hard link set aside is not read."""
    key = erased(engine, tmp_path)
    target = tmp_path / "elsewhere.csv"
    kept_orders(target, 3, {1})
    data = target.read_bytes()
    link = tmp_path / "rejected" / "purchases-9.csv"
    link.parent.mkdir()
    os.link(target, link)

    assert erasure_files.drop_erased(engine, key, [link]) == 0
    assert link.stat().st_ino == target.stat().st_ino and target.read_bytes() == data


def test_an_error_report_is_cleaned_of_the_id_as_written_not_of_another_case(
    tmp_path: Path,
) -> None:
    """Customer ids are case-sensitive (``C1`` and ``c1`` are two customers): a refused
    file's ``.errors.txt`` line naming ``'c1'`` went into ``C1``'s export and was removed
    by ``C1``'s erasure, because the quoted ids were compared lower-cased, as addresses are."""
    folder = tmp_path / "rejected"
    folder.mkdir()
    reasons = folder / "purchases-2.csv.errors.txt"
    others = "line 2, column 'customer_id': 'c1' bought item 'i9' that is not in the catalogue\n"
    theirs = "line 3, column 'customer_id': 'C1' bought item 'i9' that is not in the catalogue\n"
    reasons.write_text(others + theirs)

    found, unreadable = erasure_files.holding([folder], ["C1"], [])
    assert (found, unreadable) == ({str(reasons): [theirs.rstrip("\n")]}, [])
    done = erasure_files.scrub([folder], ["C1"], [])
    assert (done.rewritten, done.failed) == ([reasons], [])
    assert reasons.read_text() == others


def test_a_message_is_theirs_by_the_customer_its_send_key_names_whole(tmp_path: Path) -> None:
    """A send key is ``campaign/customer/period`` and customer ids may hold ``/``: the
    stand-in ESP's message to customer ``a/c1`` (key ``winback/a/c1/2024-W10``) went into
    ``c1``'s export and was removed by ``c1``'s erasure, as its key holds ``/c1/``."""
    folder = tmp_path / "fake-esp"
    folder.mkdir()
    messages = folder / "messages.jsonl"
    others = '{"To": "ann@example.test", "send_key": "winback/a/c1/2024-W10"}\n'
    theirs = '{"To": "someone@example.test", "send_key": "winback/c1/2024-W10"}\n'
    messages.write_text(others + theirs)

    found, unreadable = erasure_files.holding([folder], [ERASED], [])
    assert (found, unreadable) == ({str(messages): [json.loads(theirs)]}, [])
    done = erasure_files.scrub([folder], [ERASED], [])
    assert (done.rewritten, done.failed) == ([messages], [])
    assert messages.read_text() == others


RETAIL = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\r\n"


def retail_line(invoice: int, customer: str) -> str:
    return f"{invoice},85123A,HEART,1,12/1/2010 8:26,2.55,{customer},United Kingdom\r\n"


def test_a_trailing_dot_zero_is_dropped_only_where_the_import_drops_it(tmp_path: Path) -> None:
    """Ids are strings, compared as written: ``10.0`` and ``10`` are two customers. The scrub
    dropped a trailing ``.0`` from every id it read, so erasing ``10`` blanked ``10.0``'s
    order lines too (and exported them as ``10``'s), and erasing ``10.0`` left its own lines.
    Only an online-retail file's ``CustomerID`` (the UCI file's floats, ``17850.0``) is
    stored without it, and there ``10.0`` is customer ``10``'s line."""
    folder = tmp_path / "processed"
    folder.mkdir()
    standard = folder / "purchases-1.csv"
    standard.write_text(HEADER + order(1, "10") + order(2, "10.0") + order(3, "110.0"))
    retail = folder / "online-retail-1.csv"
    retail.write_text(RETAIL + retail_line(1, "10.0") + retail_line(2, "10.5"))

    found, unreadable = erasure_files.holding([folder], ["10"], [])
    assert unreadable == []
    assert [row["order_id"] for row in found[str(standard)]] == ["o1"]
    assert [row["InvoiceNo"] for row in found[str(retail)]] == ["1"]
    done = erasure_files.scrub([folder], ["10"], [])
    assert (sorted(done.rewritten), done.failed) == ([retail, standard], [])
    assert standard.read_bytes().decode() == HEADER + order(1, "") + order(2, "10.0") + order(
        3, "110.0"
    )
    assert retail.read_bytes().decode() == RETAIL + retail_line(1, "") + retail_line(2, "10.5")

    done = erasure_files.scrub([folder], ["10.0"], [])  # a customer of the standard file
    assert (done.rewritten, done.failed) == ([standard], [])
    assert standard.read_bytes().decode() == HEADER + order(1, "") + order(2, "") + order(
        3, "110.0"
    )
