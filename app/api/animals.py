"""Animals: the .cow files found on COWPATH, the system's cowsay and the bundled ones."""

from __future__ import annotations

from flask import Response

from app.cowsay.library import CowLibrary
from app.http import respond
from app.http.doc import Component, Doc, Success
from app.http.routing import Handler


def handle_list_animals(library: CowLibrary) -> Handler:
    """GET /animals: every animal's name, sorted."""
    body = respond.Static.json({"animals": library.names()})

    def handler() -> Response:
        return body.response()

    return handler


# --- descriptions for the OpenAPI document -----------------------------------------------

ANIMAL_LIST = Component("AnimalList", {
    "type": "object", "required": ["animals"], "additionalProperties": False,
    "properties": {"animals": {"type": "array", "items": {"type": "string"},
                               "description": "Animal names, sorted."}}},
    lambda renderer: {"animals": ["cat", "default", "fish", "owl", "robot", "turtle"]})
LIST_ANIMALS_DOC = Doc(
    handle_list_animals, "Animals", etag=True,
    success=(Success(200, "Every animal this server can render.", ANIMAL_LIST),),
    notes="Animals are the `.cow` files found in each directory of `COWPATH`, then the "
          "system's cowsay directories, then those bundled with SayPI; the first file of "
          "a name wins. The list is not paginated.")
