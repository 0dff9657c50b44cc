"""What the API answers with: the output schemas, and the fast encoders that equal them.

The marshmallow schemas are the description (the OpenAPI document is made from them); the
hot reads build the same JSON directly, because they run for every line of every read.
A unit test keeps each fast encoder equal to its schema's dump.
"""

from __future__ import annotations

from json.encoder import encode_basestring as json_string

from marshmallow import Schema, fields

from app.api import samples
from app.cowsay.cache import Renderer
from app.domain import ids
from app.domain.models import BUILTIN_MOODS, Conversation, Line, Mood
from app.http.doc import BodyDoc, list_of
from app.http.fields import Bool, PublicId, Text, Timestamp, rfc3339
from app.http.tokens import TokenSigner

DEFAULT_ANIMAL = "default"


# --- users --------------------------------------------------------------------------------
class UserOut(Schema):
    id = PublicId(ids.USER)
    name = Text(allow_none=True)  # null until given
    email = Text(allow_none=True)
    created_at = Timestamp()

    openapi = BodyDoc("A user.", lambda renderer: UserOut().dump(samples.USER))


class CreatedUserOut(UserOut):
    token = Text(metadata={"description": "Bearer token; shown only in this response."})

    openapi = BodyDoc(
        "A new user, with the token shown only this once.",
        lambda renderer: CreatedUserOut().dump({
            **samples.USER._asdict(),
            "token": TokenSigner(("an example secret, not used",)).sign(samples.USER.id)}),
        notes={"token": "Bearer token for `Authorization: Bearer <token>`; shown only in "
                        "this response."})


USER_OUT, CREATED_USER_OUT = UserOut(), CreatedUserOut()


# --- moods --------------------------------------------------------------------------------
class MoodOut(Schema):
    name = Text()
    eyes = Text()
    tongue = Text()
    user_defined = Bool()

    openapi = BodyDoc(
        "A mood: the eyes and tongue an animal is drawn with.",
        lambda renderer: MoodOut().dump(samples.SLEEPY),
        notes={"name": "The mood's own name, in the case it was created with.",
               "user_defined": "`false` for the eight built-ins."})


MOOD_OUT = MoodOut()
MOOD_LIST = list_of("MoodList", MoodOut, "mood", lambda renderer: {
    "type": "mood", "has_more": True, "data": [MOOD_OUT.dump(m) for m in BUILTIN_MOODS[:2]]})


def mood_json(mood: Mood) -> dict:
    """What MOOD_OUT.dump gives, built directly."""
    return {"name": mood.name, "eyes": mood.eyes, "tongue": mood.tongue,
            "user_defined": mood.user_defined}


# --- lines --------------------------------------------------------------------------------
_OUTPUT_NOTE = "The rendered cowsay art, final newline included, as `cowsay` prints it."


class LineOut(Schema):
    id = PublicId(ids.LINE)
    animal = Text()
    think = Bool()
    mood = Text()
    text = Text()
    output = Text()
    created_at = Timestamp()

    openapi = BodyDoc(
        "A line: what an animal says or thinks.",
        lambda renderer: render_line(samples.LINE, renderer),
        notes={"mood": "The mood's own name.", "output": _OUTPUT_NOTE},
        text_example=lambda renderer: render_line(samples.LINE, renderer)["output"])


LINE_OUT = LineOut()
LINE_LIST = list_of("LineList", LineOut, "line", lambda renderer: {
    "type": "line", "has_more": False, "data": [render_line(samples.LINE, renderer)]})


def line_json(line: Line, output: str) -> dict:
    """What LINE_OUT.dump gives, built directly: it runs for every line of every read."""
    return {"id": ids.LINE_ID % line.id, "animal": line.animal, "think": line.think,
            "mood": line.mood.name, "text": line.text, "output": output,
            "created_at": rfc3339(line.created_at)}


def line_json_text(line: Line, renderer: Renderer) -> str:
    """encode_json(render_line(line, renderer)) as text, character for character.

    Built from the render cache's ready-escaped output: escaping the art is
    most of what encoding a read costs.
    """
    mood = line.mood
    try:
        output = renderer.render_json(line.animal, mood.eyes, mood.tongue, line.think, line.text)
    except KeyError:
        output = renderer.render_json(DEFAULT_ANIMAL, mood.eyes, mood.tongue, line.think,
                                      line.text)
    return (f'{{"id":"{ids.LINE_ID % line.id}","animal":{json_string(line.animal)},'
            f'"think":{"true" if line.think else "false"},"mood":{json_string(mood.name)},'
            f'"text":{json_string(line.text)},"output":{output},'
            f'"created_at":"{rfc3339(line.created_at)}"}}')


def render_line(line: Line, renderer: Renderer) -> dict:
    """The line's JSON, with its output rendered from the mood as it is now.

    A line whose animal has since disappeared from the cow path is drawn by
    the default animal rather than failing the whole conversation.
    """
    mood = line.mood
    try:
        output = renderer.render(line.animal, mood.eyes, mood.tongue, line.think, line.text)
    except KeyError:
        output = renderer.render(DEFAULT_ANIMAL, mood.eyes, mood.tongue, line.think, line.text)
    return line_json(line, output)


class RenderOut(Schema):
    output = Text()

    openapi = BodyDoc(
        "What a line with the given parameters would show; nothing is stored.",
        lambda renderer: RenderOut().dump({"output": render_line(samples.LINE,
                                                                 renderer)["output"]}),
        notes={"output": _OUTPUT_NOTE},
        text_example=lambda renderer: render_line(samples.LINE, renderer)["output"])


# --- conversations ------------------------------------------------------------------------
class ConversationListItemOut(Schema):
    id = PublicId(ids.CONVERSATION)
    heading = Text()
    created_at = Timestamp()

    openapi = BodyDoc("A conversation as lists show it (no `lines`).",
                      lambda renderer: ConversationListItemOut().dump(samples.CONVERSATION))


class ConversationOut(ConversationListItemOut):
    lines = fields.List(fields.Nested(LineOut))

    openapi = BodyDoc(
        "A conversation with all its lines, oldest first.",
        lambda renderer: conversation_json(samples.CONVERSATION, renderer),
        text_example=lambda renderer: conversation_text(samples.CONVERSATION, renderer))


ITEM_OUT = ConversationListItemOut()
CONVERSATION_LIST = list_of("ConversationList", ConversationListItemOut, "conversation",
                            lambda renderer: {"type": "conversation", "has_more": False,
                                              "data": [ITEM_OUT.dump(samples.CONVERSATION)]})


def item_json(convo: Conversation) -> dict:
    """What ITEM_OUT.dump gives, built directly."""
    return {"id": ids.CONVERSATION_ID % convo.id, "heading": convo.heading,
            "created_at": rfc3339(convo.created_at)}


def conversation_json(convo: Conversation, renderer: Renderer) -> dict:
    body = item_json(convo)
    body["lines"] = [render_line(line, renderer) for line in convo.lines or ()]
    return body


def conversation_body(convo: Conversation, renderer: Renderer) -> bytes:
    """encode_json(conversation_json(convo, renderer)), byte for byte, from each line's JSON
    text (see line_json_text)."""
    lines = ",".join([line_json_text(line, renderer) for line in convo.lines or ()])
    return (f'{{"id":"{ids.CONVERSATION_ID % convo.id}","heading":{json_string(convo.heading)},'
            f'"created_at":"{rfc3339(convo.created_at)}","lines":[{lines}]}}').encode()


def conversation_text(convo: Conversation, renderer: Renderer) -> str:
    outputs = "".join(render_line(line, renderer)["output"] for line in convo.lines or ())
    return f"{convo.heading}\n\n{outputs}"
