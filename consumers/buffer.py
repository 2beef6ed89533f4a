"""A stream buffer bounded in bytes as well as in records.

faust bounds each stream's buffer by a count of records (`stream_buffer_maxsize`): full, it
stops fetching the partition; drained, it fetches again. A count alone lets a sender who writes
large records (each under the broker's limit) fill the engine's memory: 8,000 records of 1 MiB
are 8 GiB. `ByteBoundedQueue` reports its size as the larger of its record count and its bytes
scaled onto the same range, so faust's own flow control (the full check, the pressure high and
drop marks, all read through `qsize()`) also holds when the bytes reach their bound, and the
ordinary small records never notice it.
"""

from __future__ import annotations

from typing import Any

from mode.utils.queues import ThrowableQueue


def record_bytes(event: Any) -> int:
    """Key and value bytes of a buffered faust event (or 0 for anything else)."""
    message = getattr(event, "message", None)
    if message is None:
        return 0
    return len(message.key or b"") + len(message.value or b"")


class ByteBoundedQueue(ThrowableQueue[Any]):
    def __init__(self, *args: Any, max_bytes: int, **kwargs: Any) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self.bytes = 0
        super().__init__(*args, **kwargs)

    def _put(self, item: Any) -> None:
        self.bytes += record_bytes(item)
        super()._put(item)

    def _get(self) -> Any:
        item = super()._get()
        self.bytes -= record_bytes(item)
        return item

    def clear(self) -> None:
        super().clear()
        self.bytes = 0

    def qsize(self) -> int:
        count = super().qsize()
        if self.maxsize <= 0 or self.bytes <= 0:
            return count
        scaled = -(-self.bytes * self.maxsize // self.max_bytes)  # ceiling division
        return max(count, scaled)
