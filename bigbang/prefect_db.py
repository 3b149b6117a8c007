"""A migrated, empty Prefect database, made once per machine and Prefect version, copied into new homes.

A run in a new Prefect home (a new project, a CI job, a bench) used to wait while Prefect's embedded
server created its SQLite database: Prefect's migrations, ~10 s of CPU on a 2-core machine, most of it
alembic reflecting each table for its SQLite batch operations. The result is the same file every time
for one Prefect version, so bigbang makes it once, with Prefect's own command
(`prefect server database upgrade`), keeps it in the user's cache directory
(`~/.cache/bigbang/prefect-db/prefect-VERSION.db`, or under `$BIGBANG_CACHE`) and copies it into a home
that has no database yet, before Prefect's server starts there. Prefect still runs its migrations on
start: at the template's revision they find nothing to do, and a template that somehow lagged would be
upgraded like any old database.

The template is made in the background after the first run that had to migrate, or by
`python -m bigbang.prefect_db --make`. `BIGBANG_PREFECT_TEMPLATE=0` turns all this off. A database
URL the user set for Prefect (PostgreSQL, another file) is left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bigbang.user_dirs import cache_root

TEMPLATE_ENV = "BIGBANG_PREFECT_TEMPLATE"
# Where Prefect reads a database URL from the environment (its current and its older setting name).
_DATABASE_SETTINGS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


def enabled() -> bool:
    return os.environ.get(TEMPLATE_ENV, "1").strip().lower() not in ("0", "no", "false", "off")


def _prefect_version() -> str | None:
    try:
        return importlib.metadata.version("prefect")
    except importlib.metadata.PackageNotFoundError:
        return None


def template_dir() -> Path:
    return cache_root() / "prefect-db"


def template_path() -> Path | None:
    version = _prefect_version()
    return template_dir() / f"prefect-{version}.db" if version else None


def _user_chose_a_database(home: Path) -> bool:
    if any(os.environ.get(name) for name in _DATABASE_SETTINGS):
        return True
    with contextlib.suppress(OSError):  # a Prefect profile in that home may name one too
        return "DATABASE_CONNECTION_URL" in (home / "profiles.toml").read_text(encoding="utf-8")
    return False


def seed(database: Path, *, chosen_by_bigbang: bool = False) -> bool:
    """Copy the template to `database` if that file does not exist yet; True if it did. Never replaces a
    database: the copy is linked into place, which fails if another process made one meanwhile. Unless
    bigbang itself points Prefect at `database` (the warm server's), a database the user set is kept."""
    if not enabled() or database.exists() or (not chosen_by_bigbang and _user_chose_a_database(database.parent)):
        return False
    template = template_path()
    if template is None or not template.is_file():
        return False
    database.parent.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(f".{database.name}.{os.getpid()}.seeding")
    try:
        shutil.copyfile(template, partial)
        os.chmod(partial, 0o600)
        if not _revision(partial):  # a damaged template: make it again, and let Prefect migrate this once
            with contextlib.suppress(OSError):
                template.unlink()
            return False
        os.link(partial, database)
    except FileExistsError:
        return False
    except OSError:
        return False  # a cache or home we cannot use: Prefect migrates a new database, as without a template
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()
    return True


def _revision(database: Path) -> str | None:
    """The alembic revision a Prefect database records, None if it cannot be read as one."""
    try:
        # as_uri() escapes what a URI would misread in the path ("?", "#", "%", spaces)
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _lock_file() -> Path:
    return template_dir() / "make.lock"


def _making() -> bool:
    """Whether a process is making the template now (it holds the lock)."""
    try:
        fd = os.open(_lock_file(), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this call took
    return False


def make_in_background() -> bool:
    """Start making the template unless it exists or is being made; True if this call started it."""
    template = template_path()
    if not enabled() or template is None or template.is_file() or _making():
        return False
    directory = template_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = open(directory / "make.log", "ab")  # noqa: SIM115 - handed to the child
    except OSError:
        return False
    subprocess.Popen([sys.executable, "-m", "bigbang.prefect_db", "--make"], stdin=subprocess.DEVNULL,
                     stdout=log, stderr=log, start_new_session=True, env=dict(os.environ))
    log.close()
    return True


def wait_until_made(timeout: float) -> bool:
    """Wait while a template is being made; True if the template exists at the end."""
    deadline = time.monotonic() + timeout
    while _making() and time.monotonic() < deadline:
        time.sleep(0.2)
    template = template_path()
    return template is not None and template.is_file()


def make() -> int:
    """Make the template with Prefect's own migration command (the background process's body); 0 when it
    exists at the end."""
    template = template_path()
    if template is None:
        print("Prefect is not installed: no template to make", file=sys.stderr)
        return 1
    directory = template_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(_lock_file(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return 0  # another process makes it
    try:
        if template.is_file():
            return 0
        with tempfile.TemporaryDirectory(dir=directory, prefix=".making-") as scratch:
            partial = Path(scratch) / "prefect.db"
            env = {k: v for k, v in os.environ.items() if k not in _DATABASE_SETTINGS and k != "PREFECT_API_URL"}
            env.update(PREFECT_HOME=scratch, PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{partial}")
            started = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                                  env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"Prefect's migration failed ({done.returncode}): {done.stderr[-2000:]}", file=sys.stderr)
                return 1
            with contextlib.closing(sqlite3.connect(partial)) as conn:
                # One self-contained file: nothing left in a write-ahead log beside it.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("PRAGMA journal_mode=DELETE")
            if not _revision(partial):
                print("Prefect's migration left no revision behind", file=sys.stderr)
                return 1
            os.chmod(partial, 0o600)
            os.replace(partial, template)
            print(f"made {template} in {time.monotonic() - started:.1f} s", file=sys.stderr)
        return 0
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bigbang.prefect_db", description=__doc__.split("\n")[0])
    parser.add_argument("--make", action="store_true", help="make the template now (if it is missing)")
    args = parser.parse_args(argv)
    if args.make:
        return make()
    template = template_path()
    print(template if template is not None and template.is_file() else "no template")
    return 0


if __name__ == "__main__":
    sys.exit(main())
