"""What the layers serving one request tell each other.

The WSGI envelope (app/middleware.py) creates a RequestState for every
request and puts it in the WSGI environ; inside Flask, routing records the
route, authentication the user and the rate-limit decision. After the app
has answered, the envelope reads it back for the response headers, the
access log and the metrics. One small object instead of Flask's `g`, which
is gone by the time the envelope needs it.
"""

from __future__ import annotations

from flask import request

ENVIRON_KEY = "saypi.request"


class RequestState:
    __slots__ = (
        "client_addr",
        "rate_limit",
        "refusal",
        "request_id",
        "route",
        "user_id",
        "user_public_id",
    )

    def __init__(self, request_id: str, client_addr: str):
        self.request_id = request_id
        self.client_addr = client_addr
        self.route = "unmatched"  # the route template, once routing matched one
        self.user_id: int | None = None  # the authenticated user, if any
        self.user_public_id: str | None = None
        self.rate_limit = None  # the last rate-limit Decision taken for this request
        self.refusal: Exception | None = None  # an error to answer before any handler runs


def request_state() -> RequestState:
    """The state of the request being served (only inside a request)."""
    return request.environ[ENVIRON_KEY]
