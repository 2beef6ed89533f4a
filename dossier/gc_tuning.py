"""Garbage-collector settings for a process that applies batches of inputs.

The engine allocates many small, short-lived containers per input (decoded JSON, snapshots,
rows) and frees nearly all of them by reference counting. Python's cyclic collector still runs
its youngest generation every 700 allocations and, every hundred of those, walks every object
the process holds: the catalogue, the calendar, the loaded modules. Freezing what start-up
loaded takes it out of those walks for good, and a larger young threshold makes the remaining
collections rare. Both are process-wide, so only entry points call this, never library code.
"""

from __future__ import annotations

import gc


def tune_for_batches(young_threshold: int) -> None:
    """Freeze what is alive now and collect the young generation every `young_threshold`
    allocations; call once start-up has loaded what the process keeps for its lifetime.
    0 leaves the collector as Python configured it."""
    if young_threshold <= 0:
        return
    gc.collect()  # what start-up left as garbage is freed, not frozen with the rest
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)
