"""What the worker's main loop learnt about a request before a thread took it over.

The worker sets it on the request's thread, the envelope reads it there: when
the request was complete (its wait for a thread counts against its budget for
database waits) and whether its body was refused unread (over MAX_BODY_BYTES).
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Admission:
    ready_at: float  # time.monotonic() when the head and body had arrived
    body_too_large: bool = False


_CURRENT: ContextVar[Admission | None] = ContextVar("saypi_admission", default=None)


def admit(admission: Admission) -> Token:
    """Make `admission` this thread's current one; give the token to `release`."""
    return _CURRENT.set(admission)


def release(token: Token) -> None:
    _CURRENT.reset(token)


def current() -> Admission | None:
    """The admission of the request this thread runs (None outside SayPI's worker)."""
    return _CURRENT.get()
