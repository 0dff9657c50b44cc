"""What the layers serving one request tell each other.

The envelope makes a RequestState current for the request's thread (a context variable);
routing, authentication and rate limiting write to it, the envelope reads it back for
headers, the access line and metrics. See docs/envelope.md.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

# The methods SayPI reports as they are. Any other method is text a client
# chose: metrics count it as "other" (bounded label values), and the access
# log scrubs it like every other client-chosen string.
STANDARD_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestState:
    __slots__ = (
        "client_addr",
        "environ",
        "rate_limit",
        "refusal",
        "request_id",
        "route",
        "user_id",
        "user_public_id",
    )

    def __init__(self, environ: dict, request_id: str, client_addr: str):
        self.environ = environ  # the WSGI environ, for headers read on hot paths
        self.request_id = request_id
        self.client_addr = client_addr
        self.route = "unmatched"  # the route template, once routing matched one
        self.user_id: int | None = None  # the authenticated user, if any
        self.user_public_id: str | None = None
        self.rate_limit = None  # the last rate-limit Decision taken for this request
        self.refusal: Exception | None = None  # an error to answer before any handler runs


_CURRENT: ContextVar[RequestState] = ContextVar("saypi_request_state")


def enter(state: RequestState) -> Token:
    """Make `state` the current request's, in this thread; give the token to `leave`."""
    return _CURRENT.set(state)


def leave(token: Token) -> None:
    _CURRENT.reset(token)


def request_state() -> RequestState:
    """The state of the request being served (only inside a request: LookupError outside)."""
    return _CURRENT.get()


def request_state_or_none() -> RequestState | None:
    return _CURRENT.get(None)
