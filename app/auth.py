"""Bearer authentication and per-caller rate limiting, as wrappers around handlers.

`required` verifies the token with no database round trip, then applies the
user's rate limit; `public` applies the client address's limit. Failed
authentication is limited per address too. Decisions are left in the request's state for
the middleware to turn into RateLimit headers on whatever response follows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from app import ids
from app.errors import AuthInvalid, AuthRequired, RateLimited
from app.request_state import request_state


def current_user() -> int:
    """The authenticated user's id; only valid inside a `required` handler."""
    return request_state().user_id


class Authenticator:
    def __init__(self, tokens, limiter=None):
        self.tokens = tokens
        self.limiter = limiter

    def _limit(self, policy: str, key: str) -> None:
        if self.limiter is None:
            return
        decision = self.limiter.check(policy, key)
        if decision is None:
            return
        request_state().rate_limit = decision
        if not decision.allowed:
            raise RateLimited(decision.retry_after)

    def _client_key(self) -> str:
        return request_state().client_addr or "unknown"

    def required(self, handler: Callable) -> Callable:
        """The handler runs only for a valid bearer token within the user's rate limit."""

        @functools.wraps(handler)
        def wrapped(*args, **kwargs):
            state = request_state()
            header = state.environ.get("HTTP_AUTHORIZATION", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                self._limit("ip", self._client_key())
                raise AuthRequired()
            user_id = self.tokens.verify(token.strip())
            if user_id is None:
                self._limit("ip", self._client_key())
                raise AuthInvalid()
            state.user_id = user_id
            state.user_public_id = ids.encode(ids.USER, user_id)
            self._limit("user", str(user_id))
            return handler(*args, **kwargs)

        return wrapped

    def public(self, handler: Callable) -> Callable:
        """The handler runs for anyone within the client address's rate limit."""

        @functools.wraps(handler)
        def wrapped(*args, **kwargs):
            self._limit("ip", self._client_key())
            return handler(*args, **kwargs)

        return wrapped
