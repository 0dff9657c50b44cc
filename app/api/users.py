"""Users: sign up (the only unauthenticated write), read, change, delete."""

from __future__ import annotations

from flask import Response
from marshmallow import Schema

from app.api.common import parse_id
from app.api.encoders import CREATED_USER_OUT, USER_OUT
from app.api.encoders import CreatedUserOut as CreatedUserOut
from app.api.encoders import UserOut as UserOut
from app.domain import ids
from app.domain.repositories import Users
from app.domain.unit_of_work import UnitOfWork
from app.http import respond
from app.http.auth import current_user
from app.http.doc import Doc, ParamsDoc, Success
from app.http.errors import AuthInvalid, NotFound
from app.http.fields import Email, Text
from app.http.presence import UserPresence
from app.http.routing import Handler
from app.http.tokens import TokenSigner

EMAIL_NOTES = {"email": "Unique case-insensitively; stored as given."}


class CreateUser(Schema):
    name = Text(min_length=1, max_length=100)
    email = Email()

    openapi = ParamsDoc(notes=EMAIL_NOTES)


class UpdateUser(Schema):
    name = Text(min_length=1, max_length=100, allow_none=True)  # null clears
    email = Email(allow_none=True)

    openapi = ParamsDoc(notes=EMAIL_NOTES)


def handle_create_user(users: Users, tokens: TokenSigner) -> Handler:
    """POST /users: create a user and return their token (shown only this once)."""
    schema = CreateUser()

    def handler(uow: UnitOfWork | None) -> Response:
        params = respond.decode(schema)
        user = users.create(params.get("name"), params.get("email"), uow=uow)
        body = CREATED_USER_OUT.dump({**user._asdict(), "token": tokens.sign(user.id)})
        return respond.created(body, location=f"/users/{body['id']}")

    return handler


def _own_id(public_id: str) -> int:
    user_id = parse_id(ids.USER, public_id)
    if user_id != current_user():
        raise NotFound()
    return user_id


def handle_get_user(users: Users) -> Handler:
    """GET /users/{id}: your own user object."""

    def handler(user_id: str) -> Response:
        user = users.get(_own_id(user_id))
        if user is None:
            raise AuthInvalid()
        return respond.ok(USER_OUT.dump(user))

    return handler


def handle_update_user(users: Users) -> Handler:
    """PATCH /users/{id}: change name and/or email; null clears; nothing given changes nothing."""
    schema = UpdateUser()

    def handler(user_id: str) -> Response:
        own = _own_id(user_id)
        params = respond.decode(schema)
        user = users.update(own, params)
        if user is None:
            raise AuthInvalid()
        return respond.ok(USER_OUT.dump(user))

    return handler


def handle_delete_user(users: Users, presence: UserPresence) -> Handler:
    """DELETE /users/{id}: delete the user and everything they own; the token stops working."""

    def handler(user_id: str) -> Response:
        own = _own_id(user_id)
        if not users.delete(own):
            raise AuthInvalid()
        presence.deleted(own)
        return respond.no_content()

    return handler


# --- descriptions for the OpenAPI document -----------------------------------------------

CREATE_USER_DOC = Doc(
    handle_create_user, "Users",
    success=(Success(201, "The new user, with its token.", CreatedUserOut),),
    conflicts=("use email ada@example.com, which is already registered",),
    request_example={"name": "Ada", "email": "ada@example.com"},
    notes="Both parameters are optional: `{}` creates a user with `null` name and email. "
          "The token authenticates every other endpoint; it cannot be shown again. "
          "Idempotency keys of this endpoint are scoped by client address. "
          "The new user is reached with the returned token, e.g. "
          "`GET /users/{user_id}` with the `id` of this response.")
GET_USER_DOC = Doc(
    handle_get_user, "Users", etag=True, errors=(NotFound,),
    success=(Success(200, "Your user object.", UserOut),))
UPDATE_USER_DOC = Doc(
    handle_update_user, "Users", errors=(NotFound,),
    success=(Success(200, "The changed user object.", UserOut),),
    conflicts=("use email ada@example.com, which is already registered",),
    request_example={"name": "Ada Lovelace", "email": None})
DELETE_USER_DOC = Doc(
    handle_delete_user, "Users", errors=(NotFound,),
    success=(Success(204, "Deleted, with its moods, conversations and lines."),))
