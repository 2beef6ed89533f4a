"""`dossier replay`'s progress line: a long replay says how far it is, a short one says nothing."""

from __future__ import annotations

import io

from dossier.replay.serial import FOLDED, MERGED, ProgressLine


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_a_long_replay_is_told_every_few_seconds_with_what_is_left_to_fold() -> None:
    clock, stream = _Clock(), io.StringIO()
    told = ProgressLine(stream, every=5.0, clock=clock)
    clock.now = 103.0
    told(FOLDED, 1, 20)  # within the first 5 s: nothing
    assert _lines(stream) == []
    clock.now = 110.0
    told(FOLDED, 5, 20)
    clock.now = 112.0
    told(FOLDED, 6, 20)  # 2 s after the last line: nothing
    clock.now = 120.0
    told(FOLDED, 20, 20)
    clock.now = 121.0
    told(MERGED, 1, 7)  # a new step is told at once, without an estimate
    clock.now = 122.0
    told(MERGED, 2, 7)
    assert _lines(stream) == [
        "dossier replay: 5 of 20 batches folded, 10 s, about 30 s more to fold",
        "dossier replay: 20 of 20 batches folded, 20 s",
        "dossier replay: 1 of 7 tables merged, 21 s",
    ]


def test_a_short_replay_prints_nothing() -> None:
    clock, stream = _Clock(), io.StringIO()
    told = ProgressLine(stream, every=5.0, clock=clock)
    for n in range(1, 4):
        clock.now += 1.0
        told(FOLDED, n, 3)
    clock.now += 0.5
    told(MERGED, 1, 7)  # a new step, but nothing was printed before
    assert _lines(stream) == []
