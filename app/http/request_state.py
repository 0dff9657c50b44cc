"""What the layers serving one request tell each other.

The WSGI envelope (app/http/envelope.py) creates a RequestState for every
request and makes it current for the thread serving it; inside Flask,
routing records the route, authentication the user and the rate-limit
decision. After the app has answered, the envelope reads it back for the
response headers, the access log and the metrics. One small object instead
of Flask's `g`, which is gone by the time the envelope needs it.

The current state lives in a context variable, as Flask's own request does:
reading it costs a few dozen nanoseconds, against about half a microsecond
for each attribute read through Flask's `request` proxy, and a request reads
it several times.
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
