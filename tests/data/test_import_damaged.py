"""Files a careless or hostile shop drops: damaged gzip, headers that are data. Each is
refused with a problem that says where, exit 2, nothing written, and no address shown."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from recocamp.data.drop_folder import import_drop_folder
from recocamp.data.ingest import Importer
from recocamp.errors import DataImportError
from recocamp.settings import Settings
from recocamp.store.schema import items, purchases
from tests.conftest import NOW

HEADER = b"order_id,customer_id,item_id,quantity,unit_price,ordered_at\n"
LINE = b"A%d,c1,i1,1,2.5,2025-01-01T10:00:00Z\n"


def damaged_gzip(body: bytes) -> bytes:
    """A gzip file whose deflate stream holds ``body`` and then a block of the reserved
    type: zlib raises ``zlib.error`` ("invalid block type") there, where a flipped bit in
    a real file's middle may too (not only a CRC or length error at its end)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = packer.compress(body) + packer.flush(zlib.Z_FULL_FLUSH)
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + stream + b"\x07" + b"\x00" * 16


def orders(lines: int) -> bytes:
    return HEADER + b"".join(LINE % n for n in range(lines))


def test_a_gzip_damaged_inside_its_deflate_stream_is_refused_naming_the_line(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """``zlib.error`` is neither an OSError nor an EOFError: it escaped the importer as a
    crash (a traceback, not exit 2)."""
    path = tmp_path / "purchases.csv.gz"
    path.write_bytes(damaged_gzip(orders(20_000)))
    importer = Importer(engine, zone=ZoneInfo("Europe/Berlin"), now=NOW)
    with pytest.raises(DataImportError) as raised:
        importer.purchases(path)
    text = str(raised.value)
    assert "invalid block type" in text and "line " in text
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(purchases)).scalar() == 0


def test_a_damaged_gzip_in_the_drop_folder_is_set_aside_and_the_others_imported(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """The crash ended the drop folder's run with the file still there: every later run
    failed on it again, and no file after it was ever imported."""
    drop = tmp_path / "incoming"
    drop.mkdir()
    settings = Settings(signing_key=SecretStr("k" * 32), ingest={"drop_dir": drop})
    (drop / "purchases-1.csv.gz").write_bytes(damaged_gzip(orders(20_000)))
    (drop / "purchases-2.csv").write_bytes(orders(3))
    for path in drop.iterdir():
        os.utime(path, (0, 0))
    report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected) == (1, 1)
    assert (drop / "rejected" / "purchases-1.csv.gz").exists()


def test_a_gzip_cut_short_names_the_line_and_keeps_the_problems_before_it(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """A truncated upload: the problems of the lines read before the end came were
    dropped for one "unreadable content" naming no line."""
    body = HEADER + b"A0,c1,i1,x,2.5,2025-01-01T10:00:00Z\n" + orders(50_000)[len(HEADER) :]
    packed = gzip.compress(body)
    path = tmp_path / "purchases.csv.gz"
    path.write_bytes(packed[: len(packed) // 2])
    importer = Importer(engine, zone=ZoneInfo("Europe/Berlin"), now=NOW)
    with pytest.raises(DataImportError) as raised:
        importer.purchases(path)
    problems = raised.value.problems
    assert problems[0].line == 2 and problems[0].column == "quantity"
    assert problems[-1].line is not None and problems[-1].line > 2
    assert "ended before" in problems[-1].message


class Appender:
    """A progress sink that appends to the file as its reading starts: a feed still
    writing it (the hash is taken before, the lines read after)."""

    def __init__(self, path: Path, more: bytes) -> None:
        self.path, self.more = path, more

    def phase(self, label: str, total: int | None) -> None:
        if label.startswith("reading") and self.more:
            with self.path.open("ab") as handle:
                handle.write(self.more)
            self.more = b""

    def advance(self, amount: int) -> None:
        pass


@pytest.mark.parametrize("kind", ["purchases", "customers"])
def test_a_file_appended_to_while_it_is_read_is_refused_whole(
    engine: sa.Engine, tmp_path: Path, kind: str
) -> None:
    """What was stored was not the file its SHA-256 recorded: a file cut mid-order (the
    rest of the order came later) was stored as the orders it then held, and the complete
    file, imported next, was refused for those orders ("already stored with other lines")."""
    if kind == "purchases":
        path = tmp_path / "purchases.csv"
        path.write_bytes(orders(2))
        more = LINE % 7
    else:
        path = tmp_path / "customers.csv"
        path.write_bytes(b"id,email\nc1,a@example.test\n")
        more = b"c2,b@example.test\n"
    importer = Importer(
        engine, zone=ZoneInfo("Europe/Berlin"), now=NOW, progress=Appender(path, more)
    )
    with pytest.raises(DataImportError, match="changed while it was read"):
        getattr(importer, kind)(path)
    with engine.connect() as connection:
        for table in ("purchases", "customers", "import_runs"):
            count = connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
            assert count == 0, table
    again = Importer(engine, zone=ZoneInfo("Europe/Berlin"), now=NOW)
    report = getattr(again, kind)(path)
    assert report.imported == (3 if kind == "purchases" else 2)


def test_an_items_feed_without_a_column_changes_nothing_it_does_not_carry(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """A nightly price feed (``id, title, category, price``) reset every item's optional
    columns to their defaults: items out of stock were back in stock (offered in e-mails),
    links and pictures gone, and service items (postage, fees) offerable. A new item in
    such a feed gets the defaults."""
    full = tmp_path / "items-1.csv"
    full.write_text(
        "id,title,category,price,in_stock,url,image_url,is_service\n"
        "i1,Mug,home,4.5,false,https://shop.test/i1,https://shop.test/i1.jpg,false\n"
        "POST,Postage,service,3,true,,,true\n",
        encoding="utf-8",
    )
    prices = tmp_path / "items-2.csv"
    prices.write_text(
        "id,title,category,price\ni1,Mug,home,5\nPOST,Postage,service,3.5\ni2,Cup,home,2\n",
        encoding="utf-8",
    )
    importer = Importer(engine, zone=ZoneInfo("Europe/Berlin"), now=NOW)
    importer.items(full)
    importer.items(prices)
    with engine.connect() as connection:
        stored = {row.id: row for row in connection.execute(sa.select(items))}
    mug, postage, cup = stored["i1"], stored["POST"], stored["i2"]
    assert (mug.price, mug.in_stock, mug.url) == (5, False, "https://shop.test/i1")
    assert mug.image_url == "https://shop.test/i1.jpg"
    assert (postage.price, postage.is_service) == (3.5, True)
    assert (cup.in_stock, cup.url, cup.image_url, cup.is_service) == (True, None, None, False)


def test_a_wall_time_the_clocks_skip_is_refused_and_a_repeated_one_is_the_first(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """``2025-03-30T02:30`` never happens in Berlin (the clocks go from 02:00 to 03:00): it
    was stored as 03:30 without a word, where the CLI's date options refuse it. A file of
    such times is in another zone than it is read in (a UTC export without offsets): the
    line is a problem naming the zone. ``2025-10-26T02:30`` happens twice: the first (CEST)
    is taken, as documented; a file cannot be asked which it meant."""
    path = tmp_path / "purchases.csv"
    path.write_bytes(HEADER + b"A1,c1,i1,1,2.5,2025-03-30T02:30\nA2,c1,i1,1,2.5,2025-10-26T02:30\n")
    importer = Importer(engine, zone=ZoneInfo("Europe/Berlin"), now=NOW)
    with pytest.raises(DataImportError) as raised:
        importer.purchases(path)
    [problem] = raised.value.problems
    assert (problem.line, problem.column, problem.value) == (2, "ordered_at", "2025-03-30T02:30")
    assert "does not exist in Europe/Berlin" in problem.message
    path.write_bytes(HEADER + b"A2,c1,i1,1,2.5,2025-10-26T02:30\n")
    importer.purchases(path)
    with engine.connect() as connection:
        stored = connection.execute(sa.select(purchases.c.ordered_at)).scalar_one()
    assert stored.isoformat() == "2025-10-26T00:30:00+00:00"
