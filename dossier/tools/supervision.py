"""Running `dossier run` as a child process and knowing when it has caught up.

The main job, the end-to-end tests and the crash test all drive the real engine process, the
way an operator's supervisor would: start it, send it SIGTERM (or SIGKILL), start it again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from dossier.settings import Settings
from dossier.tools.workload import end_offsets
from engine.events import INBOUND_TOPICS
from engine.store.sql import SqlUnitOfWork, create_db_engine


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process see exactly these settings."""
    import dataclasses

    env: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if value is not None:
            env[f.metadata["env"]] = str(value)
    return env


class EngineProcess:
    def __init__(
        self, settings: Settings, log_path: Path, extra_env: Mapping[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.extra_env = dict(extra_env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        env = {**os.environ, **settings_env(self.settings), **self.extra_env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dossier.cli", "run"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, as an operator would: the batch in hand is finished and committed."""
        return self._signal(signal.SIGTERM, timeout_s)

    def kill(self) -> int:
        """SIGKILL: no chance to finish anything."""
        return self._signal(signal.SIGKILL, 30.0)

    def _signal(self, signum: int, timeout_s: float) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        code = self.process.returncode
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return int(code)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Progress:
    consumed: int  # inputs whose positions the database committed
    produced: int  # inputs on the inbound topics
    outbox_backlog: int

    @property
    def caught_up(self) -> bool:
        return self.consumed >= self.produced and self.outbox_backlog == 0


def progress(settings: Settings) -> Progress:
    topics = [settings.topic(t) for t in INBOUND_TOPICS]
    ends = end_offsets(settings, topics)
    db = create_db_engine(settings.database_url)
    try:
        with SqlUnitOfWork(db) as uow:
            positions = uow.repo.load_positions(settings.consumer_group)
            backlog = uow.repo.outbox_backlog()
    finally:
        db.dispose()
    consumed = sum(min(positions.get(slot, 0), end) for slot, end in ends.items())
    return Progress(consumed, sum(ends.values()), backlog)


def wait_caught_up(
    settings: Settings,
    timeout_s: float,
    engine: EngineProcess | None = None,
    poll_s: float = 0.5,
) -> Progress:
    """Block until the engine committed every input and published every output."""
    deadline = time.monotonic() + timeout_s
    last = Progress(0, 0, 0)
    while time.monotonic() < deadline:
        if engine is not None and not engine.alive():
            raise RuntimeError(f"the engine exited early:\n{engine.log_tail()}")
        try:
            last = progress(settings)
        except Exception:  # the schema may not exist yet while the engine starts
            time.sleep(poll_s)
            continue
        if last.caught_up and last.produced > 0:
            return last
        time.sleep(poll_s)
    tail = engine.log_tail() if engine is not None else ""
    raise TimeoutError(f"engine did not catch up in {timeout_s:.0f} s: {last}\n{tail}")
