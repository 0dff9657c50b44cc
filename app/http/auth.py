"""Bearer authentication and per-caller rate limiting, as wrappers around handlers.

`required` verifies the token, applies the user's limit and refuses a deleted user's token;
`public` applies the address's limit. Decisions go to the request's state for the RateLimit
headers; heavy renders are charged afterwards. See docs/envelope.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from app.domain import ids
from app.http.errors import AuthInvalid, AuthRequired, RateLimited
from app.http.ratelimit import IP_POLICY, POLICY_NAMES, USER_POLICY
from app.http.request_state import request_state


def current_user() -> int:
    """The authenticated user's id; only valid inside a `required` handler."""
    user = request_state().user_id
    if user is None:
        raise RuntimeError("current_user() outside an authenticated route")
    return user


class Authenticator:
    """`presence.ensure()` makes a deleted user's token `auth_invalid`. `renders_missed`
    (the serving thread's cache misses since it last asked) and `renders_per_admission`
    make the user's limit count work: each `renders_per_admission` renders a request
    missed cost it one more admission, charged once it has answered."""

    def __init__(self, tokens, presence, limiter=None,
                 renders_missed: Callable[[], int] | None = None,
                 renders_per_admission: int = 0):
        self.tokens = tokens
        self.presence = presence  # ensure(): auth_invalid once the current user is deleted
        self.limiter = limiter
        self._renders_missed = renders_missed if renders_per_admission > 0 else None
        self._renders_per_admission = renders_per_admission
        # The policies that limit anything: a disabled one costs a request nothing.
        self._limited = frozenset() if limiter is None else \
            frozenset(name for name in POLICY_NAMES if limiter.policy(name) is not None)

    def _limit(self, policy: str, key: str) -> None:
        decision = self.limiter.check(policy, key)
        if decision is None:
            return
        request_state().rate_limit = decision
        if not decision.allowed:
            raise RateLimited(decision.retry_after)

    def _charge(self, state, key: str, extra: int) -> None:
        decision = self.limiter.charge(USER_POLICY, key, extra)
        if decision is not None:
            state.rate_limit = decision  # the headers tell the client what is left

    def _client_key(self) -> str:
        return request_state().client_addr or "unknown"

    def required(self, handler: Callable) -> Callable:
        """The handler runs only for a valid bearer token of a user who still exists, within
        the user's rate limit."""

        limits_users = USER_POLICY in self._limited
        limits_addresses = IP_POLICY in self._limited

        @functools.wraps(handler)
        def wrapped(*args, **kwargs):
            state = request_state()
            scheme, _, token = state.environ.get("HTTP_AUTHORIZATION", "").partition(" ")
            token = token.strip()
            if not token or scheme.lower() != "bearer":
                if limits_addresses:
                    self._limit(IP_POLICY, self._client_key())
                raise AuthRequired()
            user_id = self.tokens.verify(token)
            if user_id is None:
                if limits_addresses:
                    self._limit(IP_POLICY, self._client_key())
                raise AuthInvalid()
            state.user_id = user_id
            state.user_public_id = ids.encode(ids.USER, user_id)
            if limits_users:
                self._limit(USER_POLICY, str(user_id))
            self.presence.ensure()
            missed = self._renders_missed
            if missed is None or not limits_users:
                return handler(*args, **kwargs)
            missed()  # what this thread missed before: not this request's work
            try:
                return handler(*args, **kwargs)
            finally:
                extra = missed() // self._renders_per_admission
                if extra:
                    self._charge(state, str(user_id), extra)

        return wrapped

    def public(self, handler: Callable) -> Callable:
        """The handler runs for anyone within the client address's rate limit."""

        limits_addresses = IP_POLICY in self._limited

        @functools.wraps(handler)
        def wrapped(*args, **kwargs):
            if limits_addresses:
                self._limit(IP_POLICY, self._client_key())
            return handler(*args, **kwargs)

        return wrapped
