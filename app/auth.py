"""Bearer authentication and per-caller rate limiting, as wrappers around handlers.

`required` verifies the token with no database round trip, then applies the
user's rate limit; `public` applies the client address's limit. Failed
authentication is limited per address too. Decisions are left in `g` for the
middleware to turn into RateLimit headers on whatever response follows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from flask import g, request

from app import ids
from app.errors import AuthInvalid, AuthRequired, RateLimited


def current_user() -> int:
    """The authenticated user's id; only valid inside a `required` handler."""
    return g.user_id


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
        g.rate_limit = decision
        if not decision.allowed:
            raise RateLimited(decision.retry_after)

    def _client_key(self) -> str:
        return g.get("client_addr") or request.remote_addr or "unknown"

    def required(self, handler: Callable) -> Callable:
        """The handler runs only for a valid bearer token within the user's rate limit."""

        @functools.wraps(handler)
        def wrapped(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                self._limit("ip", self._client_key())
                raise AuthRequired()
            user_id = self.tokens.verify(token.strip())
            if user_id is None:
                self._limit("ip", self._client_key())
                raise AuthInvalid()
            g.user_id = user_id
            g.user_public_id = ids.encode(ids.USER, user_id)
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
