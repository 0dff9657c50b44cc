"""What the domain refuses, as small exceptions carrying the data a message needs.

Repositories and handlers raise these; they know nothing of HTTP. How each
reads to a client is decided once, in the HTTP layer, never by a handler.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of the refusals a caller can act on."""


class UserGone(DomainError):
    """The authenticated user no longer exists (deleted since the token was issued)."""


class LimitReached(DomainError):
    """A cap would be exceeded: `kind` is CONVERSATIONS, MOODS, LINES or WEBHOOK_ENDPOINTS,
    `cap` the cap."""

    CONVERSATIONS, MOODS, LINES = "conversations", "moods", "lines"
    WEBHOOK_ENDPOINTS = "webhook_endpoints"

    def __init__(self, kind: str, cap: int):
        super().__init__(kind, cap)
        self.kind = kind
        self.cap = cap


class ConversationMissing(DomainError):
    """The conversation does not exist or belongs to someone else."""


class MoodMissing(DomainError):
    """The mood is neither built in nor the user's.

    For several new lines at once, `positions` are the (0-based) places of
    those whose mood is missing; empty for a single line.
    """

    def __init__(self, positions: tuple[int, ...] = ()):
        super().__init__(positions)
        self.positions = tuple(positions)


class WriteRaced(DomainError):
    """A write of the same user committed while this one waited for the user's lock and
    changed what this one had read (a mood deleted under a new line). The transaction is
    spoiled; running its whole unit of work again sees the change and answers for it."""


class MoodInUse(DomainError):
    """Lines still use this mood; `count` says how many."""

    def __init__(self, count: int):
        super().__init__(count)
        self.count = count


class EmailTaken(DomainError):
    """Another user registered this email (case-insensitively)."""

    def __init__(self, email: str | None):
        super().__init__(email)
        self.email = email


class CursorNotFound(DomainError):
    """A list's cursor (`param`: starting_after or ending_before) names no object of it."""

    def __init__(self, param: str):
        super().__init__(param)
        self.param = param
