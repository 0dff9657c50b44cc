"""Bearer tokens: the user's public id and an HMAC-SHA256 over it with a server secret.

Verified without a database round trip, in constant time; the first secret signs, all
verify (rotation). A deleted user's id is gone from the database, so tokens need no
per-user state to be revoked. See docs/envelope.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading

from app.domain import ids

_CONTEXT = b"saypi-token-v1:"
# How every token begins: a user's public id and the dot before its MAC (a regular
# expression, for `search`; whatever follows is the secret part).
SIGNED_ID = r"usr_[0-9a-f]{16}\."


class TokenSigner:
    """Signs and verifies tokens; remembers the last `remember` tokens it found valid.

    Validity depends only on the secrets, so a token seen valid stays valid and the memo saves
    the HMACs; only valid tokens are kept. Lookups take no lock, inserts and evictions one.
    See docs/envelope.md.
    """

    def __init__(self, secrets: tuple[str, ...], remember: int = 10_000):
        if not secrets:
            raise ValueError("at least one secret is required")
        self._keys = tuple(s.encode() for s in secrets)
        self._valid: dict[str, int] = {}
        self._remember = remember
        self._inserting = threading.Lock()

    def _mac(self, key: bytes, public_id: str) -> str:
        digest = hmac.new(key, _CONTEXT + public_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, user_id: int) -> str:
        public_id = ids.encode(ids.USER, user_id)
        return f"{public_id}.{self._mac(self._keys[0], public_id)}"

    def verify(self, token: str) -> int | None:
        """The user id the token was signed for, or None if it is not a valid token."""
        known = self._valid.get(token)
        if known is not None:
            return known
        user_id = self._verify(token)
        if user_id is not None and self._remember > 0:
            with self._inserting:
                while len(self._valid) >= self._remember:
                    del self._valid[next(iter(self._valid))]
                self._valid[token] = user_id
        return user_id

    def remembered(self) -> int:
        """How many valid tokens the memo holds (at most `remember`)."""
        return len(self._valid)

    def _verify(self, token: str) -> int | None:
        if not token.isascii() or len(token) > 200:
            return None
        public_id, dot, mac = token.partition(".")
        if not dot:
            return None
        user_id = ids.decode(ids.USER, public_id)
        if user_id is None:
            return None
        valid = False
        for key in self._keys:  # check every key, so timing does not reveal which matched
            valid |= hmac.compare_digest(self._mac(key, public_id), mac)
        return user_id if valid else None
