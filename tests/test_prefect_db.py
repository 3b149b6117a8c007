"""The migrated Prefect database template: made once after the first run, copied into new Prefect homes."""

from __future__ import annotations

import json
import sqlite3

import pytest

from bigbang import prefect_db
from tests.conftest import DEMO

pytestmark = pytest.mark.engine


def _schema(path) -> list[tuple[str, str, list[str]]]:
    """Every table, index and trigger, each definition as its sorted lines: alembic's batch operations on
    SQLite re-create tables with their constraints in no fixed order, so two of Prefect's own migrations
    of a new database differ in that order only."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    return sorted((kind, name, sorted(line.strip().rstrip(",") for line in sql.splitlines())) for kind, name, sql in rows)


def _revision(path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_first_run_makes_the_template_and_a_new_home_starts_from_it(bigbang, bb_env, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("BIGBANG_CACHE", str(cache))
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)
    template = prefect_db.template_path()
    assert template is not None and not template.exists()

    # A new home without a template: Prefect migrates its own database, as before; the run's end starts
    # making the template in the background.
    first_home = tmp_path / "first-home"
    env = {**bb_env, "BIGBANG_CACHE": str(cache), "PREFECT_HOME": str(first_home)}
    first = bigbang("run", DEMO, "--quiet", "--zero-duration", env=env)
    assert first.returncode in (0, 1), first.stderr[-2000:]  # the demo fails one device on purpose
    assert prefect_db.wait_until_made(timeout=180), (cache / "prefect-db" / "make.log").read_text()[-2000:]
    assert template.stat().st_mode & 0o077 == 0  # the user's only

    # The template is what Prefect's migrations make: the same tables, indexes and triggers, the same revision.
    assert _schema(template) == _schema(first_home / "prefect.db")
    assert _revision(template) == _revision(first_home / "prefect.db")

    # Another new home gets the template before Prefect's server starts there, and Prefect runs on it.
    second_home = tmp_path / "second-home"
    assert prefect_db.seed(second_home / "prefect.db")
    assert (second_home / "prefect.db").read_bytes() == template.read_bytes()
    env = {**env, "PREFECT_HOME": str(second_home)}
    second = bigbang("run", DEMO, "--quiet", "--zero-duration", env=env)
    assert second.returncode in (0, 1), second.stderr[-2000:]
    runs = json.loads(bigbang("runs", "--json", env=env).stdout)
    assert [r["status"] for r in runs[:2]] == ["completed", "completed"]
    assert _schema(second_home / "prefect.db") == _schema(first_home / "prefect.db")


def test_a_database_that_exists_or_that_the_user_chose_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("BIGBANG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)
    template = prefect_db.template_path()
    assert template is not None
    assert not prefect_db.seed(tmp_path / "home" / "prefect.db")  # no template yet: Prefect migrates
    template.parent.mkdir(parents=True)
    template.write_bytes(b"not a database")  # damaged: removed, to be made again; Prefect migrates this home
    assert not prefect_db.seed(tmp_path / "damaged" / "prefect.db")
    assert not template.exists() and not (tmp_path / "damaged" / "prefect.db").exists()
    with sqlite3.connect(template) as conn:  # what the template holds that seed() checks: a revision
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES ('a3b9c7d2e5f1')")
    made = template.read_bytes()

    existing = tmp_path / "used" / "prefect.db"
    existing.parent.mkdir()
    existing.write_bytes(b"a database with flow runs")
    assert not prefect_db.seed(existing)
    assert existing.read_bytes() == b"a database with flow runs"

    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://prefect@db/prefect")
    assert not prefect_db.seed(tmp_path / "pg-home" / "prefect.db")
    assert not (tmp_path / "pg-home" / "prefect.db").exists()
    assert prefect_db.seed(tmp_path / "pg-home" / "bigbang-warm.db", chosen_by_bigbang=True)  # the warm server's own
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL")

    profile_home = tmp_path / "profile-home"
    profile_home.mkdir()
    (profile_home / "profiles.toml").write_text('[profiles.default]\nPREFECT_API_DATABASE_CONNECTION_URL = "x"\n')
    assert not prefect_db.seed(profile_home / "prefect.db")

    monkeypatch.setenv(prefect_db.TEMPLATE_ENV, "0")
    assert not prefect_db.seed(tmp_path / "off" / "prefect.db")
    assert not prefect_db.make_in_background()
    monkeypatch.delenv(prefect_db.TEMPLATE_ENV)

    fresh = tmp_path / "a home #1 at 100% ?" / "prefect.db"  # what a URI would misread, in the path
    assert prefect_db.seed(fresh)
    assert fresh.read_bytes() == made and fresh.stat().st_mode & 0o077 == 0
    assert not any(p.name.endswith(".seeding") for p in fresh.parent.iterdir())
