"""The hot paths build JSON directly; these tests keep it identical to the marshmallow schemas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from app.api.conversations import ITEM_OUT, item_json
from app.api.lines import LINE_OUT, line_json
from app.api.moods import MOOD_OUT, mood_json
from app.fields import rfc3339
from app.models import Conversation, Line, Mood

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
