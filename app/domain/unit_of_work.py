"""A unit of work as handlers see it: one open transaction they pass on, never open."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol


class UnitOfWork(Protocol):
    """One transaction that the repository calls given it join; opaque above the store."""


class Transactions(Protocol):
    def unit_of_work(self) -> AbstractContextManager[UnitOfWork]: ...
