"""Public ids: a prefix and 16 hex digits of a random 63-bit number (`usr_`, `cv_`, `ln_`).

The database keeps the number; clients see only the prefixed form, which
reveals neither row counts nor creation order.
"""

from __future__ import annotations

import re
import secrets

USER, CONVERSATION, LINE = "usr", "cv", "ln"
_PATTERN = re.compile(r"([a-z]+)_([0-9a-f]{16})")


def template(prefix: str) -> str:
    """The %-format of this kind's public ids: `template(LINE) % number` is the line's id."""
    return f"{prefix}_%016x"


# Precomputed for the encoders, which build an id per object of every read.
USER_ID, CONVERSATION_ID, LINE_ID = template(USER), template(CONVERSATION), template(LINE)


def new_number() -> int:
    """A random positive 63-bit number (fits PostgreSQL's bigint)."""
    return secrets.randbits(63) or 1


def encode(prefix: str, number: int) -> str:
    return template(prefix) % number


def decode(prefix: str, public_id: str) -> int | None:
    """The number behind a public id of this kind, or None for anything malformed."""
    match = _PATTERN.fullmatch(public_id)
    if match is None or match.group(1) != prefix:
        return None
    number = int(match.group(2), 16)
    return number if 0 < number < 2**63 else None
