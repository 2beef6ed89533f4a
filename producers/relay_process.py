"""The outbox relay in a child process of the engine.

Publishing costs about as much interpreter time per output as applying an input does (building
records, the producer's sender thread, marking rows sent). In the engine's process it shares
one interpreter lock with the consumer and the batch thread; in a child it runs on the other
core. The database is the only thing the two share: the engine commits rows to the outbox, the
child publishes and marks them sent, exactly as the in-process relay does, so a crash of either
loses nothing.

Two pipes join them. Down the first the engine sends a byte after every commit (a wake-up) and
closes it to stop the child; the second carries back what was published, so `/metrics` stays
one endpoint. Pipes rather than `multiprocessing.Event`: an event's condition deadlocks its
`set()` for good once a waiter has been killed, and the child may be. The child dies with the
engine (PR_SET_PDEATHSIG, an end-of-file on the first pipe, and a watch on its parent): a
`kill -9` of the engine must not leave an orphan publishing beside its next incarnation.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from engine.application.ports import OutboxMessage
from producers.relay import RelayJob

log = logging.getLogger(__name__)

PublishedRows = Callable[[Sequence[tuple[int | None, str]], float], None]
# Builds the child's relay, given what to call after each publication. It crosses into a
# spawned process, so it must pickle: a module-level function, or a partial of one
# (dossier.composition.relay_for_child).
RelayAssembly = Callable[[Callable[[list[OutboxMessage]], None]], RelayJob]

_PR_SET_PDEATHSIG = 1
_RESTART_DELAY_S = 1.0


class RelayProcess:
    """Starts, wakes, watches and stops the relay child; restarts it if it dies on its own."""

    def __init__(self, assemble: RelayAssembly, on_published: PublishedRows | None = None) -> None:
        self._assemble = assemble
        self._on_published = on_published
        self._context = multiprocessing.get_context("spawn")  # no forked threads or pools
        self._lock = threading.Lock()
        self._stopping = False
        self._process: Any = None
        self._waker: Connection | None = None
        self._reports: Connection | None = None
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="relay-watch", daemon=True)
        self._watcher.start()

    def set(self) -> None:
        """Wake the child: something was committed. Never blocks: if the pipe is full, a
        wake-up is pending already."""
        with self._lock:
            waker = self._waker
            if waker is None:
                return
            with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
                waker.send_bytes(b"")

    def stop(self, timeout_s: float = 60.0) -> None:
        """Ask the child to publish what is committed and exit; kill it after `timeout_s`."""
        with self._lock:
            self._stopping = True
            if self._waker is not None:
                self._waker.close()  # end of file: the child's signal to finish
                self._waker = None
        process = self._process
        if process is not None:
            process.join(timeout_s)
            if process.is_alive():
                log.warning("outbox relay did not stop in %.0f s; killing it", timeout_s)
                process.kill()
                process.join(5)
        if self._watcher is not None:
            self._watcher.join(5)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _spawn(self) -> None:
        wake_reader, waker = self._context.Pipe(duplex=False)
        reports, reporter = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=relay_main,
            args=(self._assemble, wake_reader, reporter, os.getpid()),
            name="dossier-relay",
            daemon=True,
        )
        process.start()
        # The child holds the only other ends: end of file on either side means the other left.
        wake_reader.close()
        reporter.close()
        # Wake-ups are five bytes, written whole or not at all (below PIPE_BUF).
        os.set_blocking(waker.fileno(), False)
        with self._lock:
            self._process, self._waker, self._reports = process, waker, reports

    def _watch(self) -> None:
        while True:
            reports = self._reports
            assert reports is not None
            try:
                rows, at = reports.recv()
            except (EOFError, OSError):
                reports.close()
                self._process.join(5)
                with self._lock:
                    if self._stopping:
                        return
                    if self._waker is not None:
                        self._waker.close()
                        self._waker = None
                self.restarts += 1
                log.error(
                    "outbox relay process exited (code %s); restarting it",
                    self._process.exitcode,
                )
                time.sleep(_RESTART_DELAY_S)
                with self._lock:
                    if self._stopping:
                        return
                self._spawn()
                continue
            if self._on_published is not None:
                try:
                    self._on_published(rows, at)
                except Exception:  # metrics must never stop publication
                    log.exception("relay publication hook failed")


class _EngineSignals:
    """The child's view of the engine: the wake-up flag the relay waits on, and `halt`, set
    when the engine closes the pipe or is gone."""

    def __init__(self, wake_reader: Connection, parent_pid: int) -> None:
        self._reader = wake_reader
        self._parent_pid = parent_pid
        self.halt = threading.Event()

    def is_set(self) -> bool:
        return False

    def set(self) -> None:
        return None

    def clear(self) -> None:
        return None

    def wait(self, timeout: float | None = None) -> bool:
        try:
            if self._reader.poll(timeout):
                while self._reader.poll(0):
                    self._reader.recv_bytes()
                return True
        except (EOFError, OSError):
            self.halt.set()
            return True
        if os.getppid() != self._parent_pid:
            self.halt.set()
            return True
        return False


def relay_main(
    assemble: RelayAssembly, wake_reader: Connection, report: Connection, parent_pid: int
) -> None:
    """The child: publish until the engine stops it or is gone."""
    _die_with_parent()
    # The engine decides when to stop: a Ctrl-C reaches the whole process group, and the
    # child must still publish what the engine's last batch committed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def published(messages: list[OutboxMessage]) -> None:
        with contextlib.suppress(OSError):  # the engine is gone: nobody to tell
            report.send(([(m.id, m.topic) for m in messages], time.monotonic()))

    job = assemble(published)
    signals = _EngineSignals(wake_reader, parent_pid)
    try:
        job.run(signals.halt, signals)
    finally:
        job.close()
        report.close()


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, whatever way it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
