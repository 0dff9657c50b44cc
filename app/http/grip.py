"""GRIP: telling a request that came through Pushpin from one that did not, and the links
Pushpin follows to recover a stream. See docs/streams.md.

Grip-Sig is a JWT (HS256) signed with GRIP_KEY; PyJWT checks it. A recovery link
names its stream and carries a MAC under the same key, since Pushpin sends no bearer.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import jwt

_LINK = re.compile(r"([0-9a-f]{16})\.([0-9a-f]{16}|-)\.([0-9a-f]{32})")
_LAST = re.compile(r"\s*([^;\s]+)\s*;\s*last-id=\"?([^\";\s]+)\"?\s*")


def user_channel(user_id: int) -> str:
    """Every event of the user."""
    return f"u.{user_id:x}"


def conversation_channel(user_id: int, conversation: int) -> str:
    """The events of one conversation of the user."""
    return f"c.{user_id:x}.{conversation:x}"


def control_channel(user_id: int) -> str:
    """Nothing but the instruction to close the user's streams (the user was deleted)."""
    return f"x.{user_id:x}"


class Grip:
    """Checks Grip-Sig and makes and checks recovery links; without a key, nothing passes."""

    def __init__(self, key: str | None):
        self.key = key

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def verified(self, signature: str | None) -> bool:
        """Whether `signature` (the Grip-Sig header) is a valid, unexpired token of our key."""
        if self.key is None or not signature:
            return False
        try:
            jwt.decode(signature, self.key, algorithms=["HS256"],
                       options={"require": ["exp"], "verify_aud": False})
        except jwt.PyJWTError:
            return False
        return True

    def _mac(self, user: str, conversation: str) -> str:
        assert self.key is not None
        message = f"saypi-stream-link:{user}:{conversation}".encode()
        return hmac.new(self.key.encode(), message, hashlib.sha256).hexdigest()[:32]

    def link_token(self, user_id: int, conversation: int | None) -> str:
        """The `link` parameter of the stream's recovery link."""
        user = f"{user_id:016x}"
        convo = "-" if conversation is None else f"{conversation:016x}"
        return f"{user}.{convo}.{self._mac(user, convo)}"

    def link_stream(self, token: str | None) -> tuple[int, int | None] | None:
        """(user, conversation or None) that a link token names, if its MAC is ours."""
        if self.key is None or token is None:
            return None
        match = _LINK.fullmatch(token)
        if match is None:
            return None
        user, convo, mac = match.groups()
        if not hmac.compare_digest(mac, self._mac(user, convo)):
            return None
        return int(user, 16), None if convo == "-" else int(convo, 16)


def last_ids(values: list[str]) -> dict[str, str]:
    """Pushpin's Grip-Last headers (`channel; last-id=...`, one or several) by channel."""
    found = {}
    for value in values:
        for part in value.split(","):
            match = _LAST.fullmatch(part)
            if match is not None:
                found[match.group(1)] = match.group(2)
    return found
