"""Animals: the .cow files found on COWPATH, the system's cowsay and the bundled ones."""

from __future__ import annotations

from flask import Response

from app.http import respond


def handle_list_animals(library, presence):
    """GET /animals: every animal's name, sorted."""
    body = respond.Static.json({"animals": library.names()})

    def handler() -> Response:
        presence.ensure()
        return body.response()

    return handler
