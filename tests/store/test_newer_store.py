"""A store that a newer recocamp migrated (a deploy rolled back, an older install on another
machine): every command told the user to run ``recocamp db upgrade``, which then died with a
traceback (alembic's "Can't locate revision identified by …"). Both now say what happened."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from recocamp.cli import app
from recocamp.errors import StoreError
from recocamp.store.engine import current_revision, make_engine, require_current, upgrade

NEWER = "0999"


def newer_store(path: Path) -> sa.Engine:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with engine.begin() as connection:  # as a later version's migration leaves it
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": NEWER})
    return engine


def test_a_store_of_a_newer_version_is_refused_saying_so(tmp_path: Path) -> None:
    engine = newer_store(tmp_path / "s.db")
    for call in (require_current, upgrade):
        with pytest.raises(StoreError, match=f"revision {NEWER}.*newer recocamp") as refused:
            call(engine)
        assert "db upgrade" not in str(refused.value)
    assert current_revision(engine) == NEWER  # nothing written
    engine.dispose()


def test_db_upgrade_of_a_newer_store_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    newer_store(tmp_path / "s.db").dispose()
    (tmp_path / "settings.toml").write_text(f'database_url = "sqlite:///{tmp_path / "s.db"}"\n')
    runner = CliRunner()
    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 1, upgraded.output
    assert "Traceback" not in upgraded.output and "newer recocamp" in upgraded.output
    listed = runner.invoke(app, ["runs", "list"])
    assert listed.exit_code == 1 and "newer recocamp" in listed.output
    assert "run `recocamp db upgrade`" not in listed.output
