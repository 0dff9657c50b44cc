"""Whether the authenticated user still exists, for routes that read no user data.

Data routes notice a deleted user in their own query. Routes that touch no
table (`GET /animals`) ask here instead.
"""

from __future__ import annotations

from app.auth import current_user
from app.errors import AuthInvalid


class UserPresence:
    def __init__(self, users):
        self.users = users

    def ensure(self) -> None:
        if not self.users.exists(current_user()):
            raise AuthInvalid()
