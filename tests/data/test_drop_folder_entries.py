"""Drop-folder entries that are not plain data files: a symbolic link is set aside, not
followed; a folder or a pipe named like a data file is set aside once, never opened; a
hidden name is left alone. The other files of the run are imported all the same."""

from __future__ import annotations

import gzip
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from recocamp.data import drop_folder
from recocamp.data.drop_folder import import_drop_folder
from recocamp.data.ingest import Importer, ImportReport
from recocamp.settings import Settings
from recocamp.store.schema import customers, purchases
from tests.conftest import NOW, write_csv

PEOPLE = ["id", "email", "first_name", "consent_basis", "consent_at"]
OTTO = ["c2", "otto@example.test", "Otto", "double_opt_in", "2011-06-01T10:00:00Z"]
ORDERS = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"]
OPENED: list[list[str]] = []  # while watched (opened()): every path opened, as given


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and OPENED and isinstance(args[0], str | bytes | os.PathLike):
        OPENED[-1].append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # for good (a hook cannot be removed): it records only when watched


@contextmanager
def opened() -> Iterator[list[str]]:
    """The paths this process opens meanwhile (Python's ``open`` audit event)."""
    OPENED.append([])
    try:
        yield OPENED[-1]
    finally:
        OPENED.pop()


def drop_settings(tmp_path: Path) -> Settings:
    folders = {"drop_dir": tmp_path / "incoming", "processed_dir": tmp_path / "incoming" / "done"}
    return Settings(signing_key=SecretStr("k" * 32), ingest=folders)


def settled(*paths: Path) -> None:
    """Modified long ago (the entry itself, not a link's target): ready to be taken."""
    for path in paths:
        os.utime(path, (0, 0), follow_symlinks=False)


def counted(engine: sa.Engine) -> tuple[set[str], int]:
    with engine.connect() as connection:
        people = set(connection.execute(sa.select(customers.c.id)).scalars())
        lines = connection.execute(sa.select(sa.func.count()).select_from(purchases))
        return people, int(lines.scalar_one())


def test_a_symbolic_link_is_set_aside_without_its_target_being_read(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """``purchases-1.csv`` → a file the uploader could not read themselves: it was
    followed and imported (and a broken one quoted into ``rejected/*.errors.txt``). Now
    the link itself goes to ``rejected/``; the target is not opened, moved or changed. A
    link to nothing was skipped every run without a word."""
    settings = drop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    secret = write_csv(
        tmp_path / "secret.csv", ORDERS, [["o1", "c9", "secret-item", 1, 2.5, "2011-08-01"]]
    )
    content = secret.read_bytes()
    (drop / "purchases-1.csv").symlink_to(secret)
    (drop / "items-1.csv").symlink_to(tmp_path / "nothing.csv")
    people = write_csv(drop / "customers-1.csv", PEOPLE, [OTTO])
    settled(secret, drop / "purchases-1.csv", drop / "items-1.csv", people)

    with opened() as paths:
        report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected, report.waiting) == (1, 2, 0)
    assert counted(engine) == ({"c2"}, 0)  # the link's orders were not imported
    assert not any(path.endswith("secret.csv") for path in paths)
    assert secret.read_bytes() == content
    rejected = drop / "rejected"
    for name, target in (("purchases-1.csv", secret), ("items-1.csv", tmp_path / "nothing.csv")):
        assert (rejected / name).is_symlink() and (rejected / name).readlink() == target
        reasons = (rejected / f"{name}.errors.txt").read_text()
        assert "a symbolic link, not a file: links in the drop folder are not followed" in reasons
    assert "secret-item" not in (rejected / "purchases-1.csv.errors.txt").read_text()
    assert sorted(p.name for p in drop.iterdir()) == ["rejected"]
    assert import_drop_folder(engine, settings, NOW).rejected == 0  # once


def test_a_folder_or_a_pipe_named_like_a_data_file_is_set_aside_once_unopened(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """``purchases-2.csv/`` and a named pipe ``customers-0.csv`` were skipped every run
    without a word (reading the pipe would have waited for ever). Each is moved as it is to
    ``rejected/``, saying what it is, counted once; the files beside them are imported."""
    settings = drop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    folder = drop / "purchases-2.csv"
    folder.mkdir()
    write_csv(folder / "purchases-3.csv", ORDERS, [["o1", "c2", "i1", 1, 2.5, "2011-08-01"]])
    pipe = drop / "customers-0.csv"
    os.mkfifo(pipe)
    people = write_csv(drop / "customers-1.csv", PEOPLE, [OTTO])
    settled(folder, pipe, people)

    with opened() as paths:
        report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected, report.waiting) == (1, 2, 0)
    assert counted(engine) == ({"c2"}, 0)
    entries = ("purchases-2.csv", "customers-0.csv")
    read = [path for path in paths if not path.endswith(".errors.txt")]  # those are written
    assert not [path for path in read if any(entry in path for entry in entries)]
    rejected = drop / "rejected"
    assert (rejected / "purchases-2.csv" / "purchases-3.csv").is_file()
    assert stat.S_ISFIFO((rejected / "customers-0.csv").lstat().st_mode)
    assert (
        "a folder, not a file: only files are imported"
        in (rejected / "purchases-2.csv.errors.txt").read_text()
    )
    assert (
        "a named pipe (FIFO), not a file" in (rejected / "customers-0.csv.errors.txt").read_text()
    )
    assert sorted(p.name for p in drop.iterdir()) == ["rejected"]
    again = import_drop_folder(engine, settings, NOW)
    assert (again.imported, again.rejected, again.waiting) == (0, 0, 0)


def test_hidden_names_are_left_alone(engine: sa.Engine, tmp_path: Path) -> None:
    """macOS's ``._purchases-1.csv`` was refused as of an unknown kind every time a Mac
    copied a file in, and so was an upload still being written as ``.customers-2.csv``
    (set aside half-written, for good). Names starting with ``.`` are not looked at."""
    settings = drop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    apple = drop / "._purchases-1.csv"
    apple.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    partial = drop / ".customers-2.csv"
    partial.write_text(",".join(PEOPLE) + "\nc3,ida@example.test,Ida,double_opt_in,2011-")
    people = write_csv(drop / "customers-1.csv", PEOPLE, [OTTO])
    settled(apple, partial, people)
    before = {path: path.read_bytes() for path in (apple, partial)}

    report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected, report.waiting) == (1, 0, 0)
    assert counted(engine) == ({"c2"}, 0)
    assert {path: path.read_bytes() for path in (apple, partial)} == before
    assert sorted(p.name for p in drop.iterdir()) == ["._purchases-1.csv", ".customers-2.csv"]


def test_a_link_swapped_in_after_the_look_is_not_read(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An uploader who swaps a link in for a file between the drop folder's look at the
    entry (a file then) and the import got the link's target imported: the import followed
    links. The drop folder's import opens with ``O_NOFOLLOW``: the link is not read, the
    entry (changed) waits, and the next run sets the link aside."""
    settings = drop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    secret = write_csv(
        tmp_path / "secret.csv", ORDERS, [["o1", "c9", "secret-item", 1, 2.5, "2011-08-01"]]
    )
    secret_gz = tmp_path / "secret.csv.gz"
    secret_gz.write_bytes(gzip.compress(secret.read_bytes()))
    targets = {"purchases-1.csv": secret, "purchases-2.csv.gz": secret_gz}
    for name in targets:
        write_csv(drop / name, ORDERS, [["o2", "c2", "i1", 1, 2.5, "2011-08-01"]])
        settled(drop / name)

    class Swapped(Importer):
        def purchases(self, path: Path, fmt: str = "standard") -> ImportReport:
            path.unlink()  # the uploader's swap, after the look
            path.symlink_to(targets[path.name])
            settled(path)
            return super().purchases(path, fmt)

    monkeypatch.setattr(drop_folder, "Importer", Swapped)
    report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected, report.waiting) == (0, 0, 2)
    assert counted(engine) == (set(), 0)
    monkeypatch.undo()
    again = import_drop_folder(engine, settings, NOW)
    assert (again.imported, again.rejected) == (0, 2)
    assert counted(engine) == (set(), 0)
    for name in targets:
        assert (drop / "rejected" / name).is_symlink()
        assert "secret-item" not in (drop / "rejected" / f"{name}.errors.txt").read_text()


def test_a_name_with_a_line_break_or_an_escape_writes_one_plain_log_line(
    engine: sa.Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever may drop files names them: a name holding a line break wrote a log line of
    the uploader's own making (``… ERROR recocamp.worker: …`` under the worker's), and one
    holding an escape sequence drove the operator's terminal. Names are logged escaped."""
    settings = drop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    forged = "\n2026-01-15 12:00:00,000 ERROR recocamp.worker: \x1b[2Jforged"
    good = write_csv(drop / f"customers-1{forged}.csv", PEOPLE, [OTTO])
    bad = write_csv(drop / f"customers-2{forged}.csv", ["id"], [["c3"]])
    settled(good, bad)
    with caplog.at_level("INFO"):
        report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected) == (1, 1)
    lines = [record.getMessage() for record in caplog.records]
    assert lines and not [line for line in lines if "\n" in line or "\x1b" in line]
    assert any("customers-1\\n2026-01-15" in line for line in lines)


def test_a_hard_link_is_set_aside_without_being_read(engine: sa.Engine, tmp_path: Path) -> None:
    """``purchases-1.csv``, a second name of a file elsewhere (``ln secret.csv``): the
    uploader may link a file they cannot read themselves (where hard links are not
    protected), and it was read, imported and its problems quoted into ``rejected/``, as a
    symbolic link's target was. An entry with more than one name is set aside as a link is,
    the file it names neither opened nor changed (its times included)."""
    settings = drop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    secret = write_csv(
        tmp_path / "secret.csv", ORDERS, [["o1", "c9", "secret-item", 1, 2.5, "2011-08-01"]]
    )
    os.link(secret, drop / "purchases-1.csv")
    people = write_csv(drop / "customers-1.csv", PEOPLE, [OTTO])
    settled(secret, people)
    before = (secret.read_bytes(), secret.stat().st_mtime_ns)

    with opened() as paths:
        report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected, report.waiting) == (1, 1, 0)
    assert counted(engine) == ({"c2"}, 0)  # the linked file's orders were not imported
    assert not any(path.endswith("purchases-1.csv") for path in paths)
    assert (secret.read_bytes(), secret.stat().st_mtime_ns) == before
    rejected = drop / "rejected"
    assert (rejected / "purchases-1.csv").stat().st_ino == secret.stat().st_ino
    reasons = (rejected / "purchases-1.csv.errors.txt").read_text()
    assert "a hard link (a file with 2 names)" in reasons
    assert "secret-item" not in reasons
    assert sorted(p.name for p in drop.iterdir()) == ["rejected"]
    assert import_drop_folder(engine, settings, NOW).rejected == 0  # once


def test_a_hard_link_swapped_in_after_the_look_is_not_read(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a symbolic link swapped in (above): the import itself refuses an entry with
    another name, the entry (changed) waits, and the next run sets it aside."""
    settings = drop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    secret = write_csv(
        tmp_path / "secret.csv", ORDERS, [["o1", "c9", "secret-item", 1, 2.5, "2011-08-01"]]
    )
    write_csv(drop / "purchases-1.csv", ORDERS, [["o2", "c2", "i1", 1, 2.5, "2011-08-01"]])
    settled(drop / "purchases-1.csv")

    class Swapped(Importer):
        def purchases(self, path: Path, fmt: str = "standard") -> ImportReport:
            path.unlink()  # the uploader's swap, after the look
            os.link(secret, path)
            settled(path)
            return super().purchases(path, fmt)

    monkeypatch.setattr(drop_folder, "Importer", Swapped)
    report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected, report.waiting) == (0, 0, 1)
    assert counted(engine) == (set(), 0)
    monkeypatch.undo()
    again = import_drop_folder(engine, settings, NOW)
    assert (again.imported, again.rejected) == (0, 1)
    assert counted(engine) == (set(), 0)
    assert "secret-item" not in (drop / "rejected" / "purchases-1.csv.errors.txt").read_text()
