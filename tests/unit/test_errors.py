"""The table of codes and the domain mapping: every code once, every domain refusal mapped."""

from __future__ import annotations

import pytest

from app.domain import errors as domain
from app.http.errors import (
    ALL_ERRORS,
    CODES,
    DOMAIN_ERRORS,
    ActionNotAllowed,
    InvalidParams,
    ServiceUnavailable,
    from_domain,
)


def test_one_constructor_and_one_status_per_code():
    assert [e.code for e in ALL_ERRORS] == list(CODES)
    for error in ALL_ERRORS:
        assert error.status == CODES[error.code].status


def test_every_domain_error_is_mapped():
    kinds = {cls for cls in vars(domain).values()
             if isinstance(cls, type) and issubclass(cls, domain.DomainError)
             and cls is not domain.DomainError}
    assert kinds == set(DOMAIN_ERRORS)


@pytest.mark.parametrize(("error", "code", "message"), [
    (domain.UserGone(), "auth_invalid", "The bearer token is not valid."),
    (domain.ConversationMissing(), "not_found", "The requested resource does not exist."),
    (domain.MoodMissing(), "invalid_params",
     "Parameter `mood` must name a built-in mood or one of yours."),
    (domain.LimitReached(domain.LimitReached.CONVERSATIONS, 1000), "action_not_allowed",
     "You may not create more than 1000 conversations."),
    (domain.LimitReached(domain.LimitReached.MOODS, 100), "action_not_allowed",
     "You may not create more than 100 moods."),
    (domain.LimitReached(domain.LimitReached.LINES, 7), "action_not_allowed",
     "You may not add more than 7 lines to a conversation."),
    (domain.MoodInUse(1), "action_not_allowed",
     "You may not delete a mood associated with 1 conversation line."),
    (domain.MoodInUse(3), "action_not_allowed",
     "You may not delete a mood associated with 3 conversation lines."),
    (domain.EmailTaken("a@b.c"), "action_not_allowed",
     "You may not use email a@b.c, which is already registered."),
    (domain.CursorNotFound("ending_before"), "invalid_params",
     "Parameter `ending_before` must refer to an existing object."),
])
def test_domain_errors_read_as_the_contract_says(error, code, message):
    api = from_domain(error)
    assert (api.code, api.message) == (code, message)


def test_constructors_take_the_rows_fields():
    assert ActionNotAllowed(action="go").data == {"action": "go"}
    assert ServiceUnavailable().retry_after == 1
    assert InvalidParams.one("limit", "is bad").data == [{"params": ["limit"],
                                                           "message": "is bad"}]
    with pytest.raises(TypeError):
        ActionNotAllowed()
    with pytest.raises(TypeError):
        ActionNotAllowed("go", reason="no")
