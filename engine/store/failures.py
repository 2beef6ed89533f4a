"""Which database failures are the infrastructure's (retry) and which an input's (set aside)."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout


def is_infrastructure_failure(exc: BaseException) -> bool:
    """A failure of the database or the network, which retrying the same inputs may cure, as
    opposed to one that the inputs cause (a bug an input triggers, a value the store refuses)."""
    if isinstance(exc, OperationalError | InterfaceError | DisconnectionError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OSError | MemoryError)
