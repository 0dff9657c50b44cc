"""The AUTHED guard's presence cache: a deleted user's token is auth_invalid from then on."""

from __future__ import annotations

import logging

import pytest

from app.http.errors import AuthInvalid
from app.http.presence import UserPresence
from app.http.request_state import RequestState, enter, leave


class LaggingUsers:
    """Users whose existence check answers from before the deletions (a lagging read)."""

    def __init__(self) -> None:
        self.asked = 0

    def exists(self, user_id: int) -> bool:
        self.asked += 1
        return True


def as_user(user_id: int):
    state = RequestState({}, "req-1", "127.0.0.1")
    state.user_id = user_id
    return enter(state)


def test_a_user_whose_deletion_was_noticed_is_refused_whatever_the_lookup_says():
    users = LaggingUsers()
    presence = UserPresence(users, logging.getLogger("test"))
    presence._listening_now()
    presence._deleted(7)
    token = as_user(7)
    try:
        with pytest.raises(AuthInvalid):
            presence.ensure()
        with pytest.raises(AuthInvalid):  # and never cached as alive
            presence.ensure()
    finally:
        leave(token)


def test_a_confirmed_user_is_asked_once_while_the_listener_runs():
    users = LaggingUsers()
    presence = UserPresence(users, logging.getLogger("test"))
    presence._listening_now()
    token = as_user(8)
    try:
        presence.ensure()
        presence.ensure()
    finally:
        leave(token)
    assert users.asked == 1
