"""Files and directories the engine creates are its user's alone: 0600 and 0700 (issue 18).

The SQLite database holds the history (personal data), so the file, its -wal and -shm files
and the directories made for it must not be readable by the group or the world, even when
the engine is started with a careless umask (000).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from engine.store.migrate import upgrade
from engine.store.sql import RelayLease, create_db_engine


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def umask_000(*command: str) -> list[str]:
    """`command` started by a shell that set umask 000 first (not preexec_fn: unsafe in a
    process with threads, as a test session may be)."""
    return ["sh", "-c", 'umask 000 && exec "$@"', "sh", *command]


@pytest.fixture
def careless_umask() -> Iterator[None]:
    """The process's umask at 000, as a hostile or careless start would leave it."""
    before = os.umask(0)
    try:
        yield
    finally:
        os.umask(before)


def test_dossier_db_upgrade_under_umask_000_creates_0600_and_0700(tmp_path: Path) -> None:
    database = tmp_path / "state" / "deep" / "engine.db"
    done = subprocess.run(
        umask_000(
            sys.executable, "-m", "dossier.cli", "db", "upgrade", "--url", f"sqlite:///{database}"
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert mode(tmp_path / "state") == 0o700
    assert mode(tmp_path / "state" / "deep") == 0o700
    assert mode(database) == 0o600
    for left in database.parent.iterdir():  # -wal, -shm if SQLite kept them
        assert mode(left) & 0o077 == 0, left


def test_the_cli_sets_a_private_umask_whatever_it_was_started_with(tmp_path: Path) -> None:
    code = (
        "import os; from dossier.cli import main; main(['config', '--json']);"
        " print('umask', oct(os.umask(0)))"
    )
    done = subprocess.run(
        umask_000(sys.executable, "-c", code),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "umask 0o77"


def test_the_store_makes_its_files_private_under_umask_000(
    tmp_path: Path, careless_umask: None
) -> None:
    # The store alone (a library user, a test): no CLI has set the umask.
    database = tmp_path / "made" / "here" / "engine.db"
    db = create_db_engine(f"sqlite:///{database}")
    lease = RelayLease(db)
    try:
        upgrade(db)
        with db.connect() as connection:  # the WAL and shared-memory files exist while open
            connection.execute(text("SELECT count(*) FROM history")).scalar_one()
            files = {p.name: mode(p) for p in database.parent.iterdir()}
            assert {"engine.db", "engine.db-wal", "engine.db-shm"} <= set(files)
            assert lease.held()
            lock = database.parent / "engine.db-relay.lock"
            assert mode(lock) == 0o600
            assert all(m == 0o600 for m in files.values()), files
        assert mode(database.parent) == mode(database.parent.parent) == 0o700
    finally:
        lease.release()
        db.dispose()


def test_an_existing_database_readable_by_others_is_tightened(tmp_path: Path) -> None:
    database = tmp_path / "old.db"
    db = create_db_engine(f"sqlite:///{database}")
    upgrade(db)
    db.dispose()
    os.chmod(database, 0o644)  # as versions before issue 18 left it
    os.chmod(tmp_path, 0o755)
    db = create_db_engine(f"sqlite:///{database}")
    try:
        with db.connect() as connection:
            assert connection.execute(text("PRAGMA secure_delete")).scalar_one() == 1
        assert mode(database) == 0o600
        assert mode(tmp_path) == 0o755, "a directory the engine did not make is not its to change"
    finally:
        db.dispose()


def _posix_locks_of_this_process(*paths: Path) -> int:
    """POSIX locks this process holds on these files (/proc/locks, by inode)."""
    inodes = {path.stat().st_ino for path in paths if path.exists()}
    held = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "POSIX" in fields and str(os.getpid()) in fields:
            inode = int(fields[fields.index(str(os.getpid())) + 1].rsplit(":", 1)[1])
            held += inode in inodes
    return held


def test_making_a_second_engine_keeps_the_first_one_s_sqlite_locks(tmp_path: Path) -> None:
    """SQLite's locks are POSIX locks, which closing any descriptor of the file releases: making
    the files private must not open them while this process has the database open (a
    migration's engine beside the batch's). With its locks gone a connection's snapshot goes
    stale for other processes' writes, and a checkpoint can delete what a reader reads."""
    database = tmp_path / "locks.db"
    first = create_db_engine(f"sqlite:///{database}")
    upgrade(first)
    shm = Path(f"{database}-shm")
    try:
        with first.connect() as connection:
            connection.execute(text("SELECT count(*) FROM dossiers")).scalar()  # a read lock
            before = _posix_locks_of_this_process(database, shm)
            assert before > 0
            second = create_db_engine(f"sqlite:///{database}")
            assert _posix_locks_of_this_process(database, shm) == before
            second.dispose()
    finally:
        first.dispose()
