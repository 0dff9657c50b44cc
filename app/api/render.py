"""Rendering without storing: what a line with these parameters would look like."""

from __future__ import annotations

from flask import Response

from app.api.encoders import RenderOut as RenderOut
from app.api.lines import (
    LINE_EXAMPLE,
    CreateLine,
    line_problems,
    new_line,
)
from app.cowsay.cache import Renderer
from app.domain.models import BUILTIN_MOODS_BY_NAME, Mood
from app.domain.repositories import Moods
from app.http import respond
from app.http.auth import current_user
from app.http.doc import Doc, Success
from app.http.routing import Handler


def handle_render(moods: Moods, renderer: Renderer) -> Handler:
    """POST /render: render a line's parameters as cowsay art, storing nothing."""
    schema = CreateLine()

    def handler() -> Response:
        user = current_user()
        own: dict[str, Mood] = {}

        def mood_known(name: str) -> bool:
            mood = moods.get(user, name)
            if mood is not None:
                own[name] = mood
            return mood is not None

        line = new_line(respond.decode(
            schema, check=lambda valid: line_problems(valid, renderer.library, mood_known)))
        mood = BUILTIN_MOODS_BY_NAME.get(line.mood.lower()) or own[line.mood]
        output = renderer.render(line.animal, mood.eyes, mood.tongue, line.think, line.text)
        if respond.wants_text():
            return respond.text(output)
        return respond.ok({"output": output})

    return handler


# --- descriptions for the OpenAPI document -----------------------------------------------

RENDER_DOC = Doc(
    handle_render, "Lines",
    success=(Success(200, "The rendered art.", RenderOut,
                     text="With `Accept: text/plain`: the rendered text itself."),),
    request_example=LINE_EXAMPLE,
    notes="The parameters are validated exactly as `POST /conversations/{conversation_id}/lines` "
          "validates them (a built-in mood or one of yours, case-insensitively), and the "
          "output is what that line's `output` would be. Nothing is stored, so the request "
          "takes no `Idempotency-Key` (repeating it is harmless) and the response carries no "
          "`Location`.")
