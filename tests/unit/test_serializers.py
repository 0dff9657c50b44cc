"""The hot paths build JSON directly; these tests keep it identical to the marshmallow schemas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from app.api.encoders import ITEM_OUT, LINE_OUT, MOOD_OUT, item_json, line_json, mood_json
from app.domain.models import Conversation, Line, Mood
from app.http.fields import rfc3339

MOMENTS = [datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
           datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
           datetime(2026, 6, 1, 23, 30, tzinfo=timezone(timedelta(hours=-7)))]


def test_rfc3339_is_utc_with_z():
    assert rfc3339(MOMENTS[0]) == "2026-01-02T03:04:05.678901Z"
    assert rfc3339(MOMENTS[1]) == "2026-01-02T03:04:05Z"
    assert rfc3339(MOMENTS[2]) == "2026-06-02T06:30:00Z"


def test_line_json_matches_the_schema():
    for moment in MOMENTS:
        for mood in (Mood("dead", "xx", "U ", False), Mood("Sly", "<>", "  ", True)):
            line = Line(0x0123456789ABCDEF, "cat", True, mood, "hi\nthere", moment)
            expected = LINE_OUT.dump({"id": line.id, "animal": line.animal,
                                      "think": line.think, "mood": mood.name,
                                      "text": line.text, "output": "art\n",
                                      "created_at": moment})
            assert line_json(line, "art\n") == expected


def test_conversation_and_mood_json_match_the_schemas():
    for moment in MOMENTS:
        convo = Conversation(42, "Heading", moment)
        assert item_json(convo) == ITEM_OUT.dump(convo)
    for mood in (Mood("default", "oo", "  ", False), Mood("Mine", "^^", "P ", True)):
        assert mood_json(mood) == MOOD_OUT.dump(mood)


AWKWARD_TEXTS = ["plain", "", "quote \" backslash \\ slash /", "tab\tnew\nline\r\n",
                 "controls \x01\x08\x0c\x1f\x7f", "wide 漢字 and emoji 🐄", "</script>",
                 "separators \u2028\u2029", "  leading and trailing  ", "x" * 400]


def test_conversation_body_is_the_encoded_conversation_json():
    """GET /conversations/{id} writes its body from cached pieces; it must equal the encoder's."""
    import logging

    from app.api.encoders import conversation_body, conversation_json
    from app.cowsay import BUNDLED_COW_DIR, CowLibrary, Renderer
    from app.http.respond import encode_json

    renderer = Renderer(CowLibrary.load([BUNDLED_COW_DIR], logging.getLogger("test")))
    moods = (Mood("dead", "xx", "U ", False), Mood('say "hi"', "\\\\", "\t ", True))
    animals = ("default", "owl", "gone-since")  # an animal no longer on the cow path
    lines = tuple(
        Line(0x0123456789ABCDEF + i, animals[i % 3], i % 2 == 0, moods[i % 2], text,
             MOMENTS[i % 3])
        for i, text in enumerate(AWKWARD_TEXTS))
    for heading in ("Heading", 'with "quotes" \\ and 🐄', "\x00nul"):
        for subset in ((), lines[:1], lines):
            convo = Conversation(42, heading, MOMENTS[0], subset)
            expected = encode_json(conversation_json(convo, renderer))
            assert conversation_body(convo, renderer) == expected
            # twice: the second time the outputs come from the render cache
            assert conversation_body(convo, renderer) == expected
