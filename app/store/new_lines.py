"""Several new lines in one statement: the SQL that creating a batch of lines shares.

The lines travel as one array per column, unnested `WITH ORDINALITY` so their order survives;
the statement resolves each mood (built-in or the user's, case-insensitively), so a batch is
one round trip. A statement that inserts nothing leaves the caller to ask why (`refusal_facts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.domain import ids
from app.domain.models import NewLine

# `resolved`: the new lines, in order, with their moods; a line whose mood is
# neither built in nor the user's is missing from it. Moods are matched on
# the (owner, lower(name)) index: built-ins are owner 0 there.
RESOLVED_LINES = """
given AS (
    SELECT * FROM unnest(%(rids)s::bigint[], %(animals)s::text[], %(thinks)s::boolean[],
                         %(texts)s::text[], %(moods)s::text[])
             WITH ORDINALITY AS i(rid, animal, think, text, mood, ord)),
resolved AS (
    SELECT given.ord, given.rid, given.animal, given.think, given.text, m.id AS mood_id,
           m.name AS mood_name, m.eyes, m.tongue, m.user_id IS NOT NULL AS user_defined
    FROM given JOIN moods m ON coalesce(m.user_id, 0) IN (0, %(user_id)s)
                           AND lower(m.name) = lower(given.mood))"""

# Inserts `resolved` into the conversation `convo` (a CTE with its `id`), in order.
INSERT_RESOLVED = """
inserted AS (
    INSERT INTO lines (rid, conversation_id, mood_id, animal, think, text)
    SELECT r.rid, convo.id, r.mood_id, r.animal, r.think, r.text
    FROM resolved r CROSS JOIN convo
    ORDER BY r.ord
    RETURNING id, rid, animal, think, text, created_at)"""

# The inserted lines as line_from_row reads them (and their order, `inserted.id`).
INSERTED_COLUMNS = ("inserted.rid, inserted.animal, inserted.think, inserted.text, "
                    "inserted.created_at, resolved.mood_name, resolved.eyes, resolved.tongue, "
                    "resolved.user_defined")

ALL_RESOLVED = "(SELECT count(*) FROM resolved) = %(n)s"

# The 0-based positions of the lines whose mood is missing.
MISSING_MOODS = """
ARRAY(SELECT i.ord - 1 FROM unnest(%(moods)s::text[]) WITH ORDINALITY AS i(mood, ord)
      WHERE NOT EXISTS (SELECT 1 FROM moods m WHERE coalesce(m.user_id, 0) IN (0, %(user_id)s)
                                                AND lower(m.name) = lower(i.mood))
      ORDER BY i.ord)"""


def line_params(user_id: int, lines: Sequence[NewLine]) -> dict[str, Any]:
    """The statement parameters of `lines`: one array per column, and a new id for each."""
    return {"user_id": user_id, "n": len(lines),
            "rids": [ids.new_number() for _ in lines],
            "animals": [line.animal for line in lines],
            "thinks": [line.think for line in lines],
            "texts": [line.text for line in lines],
            "moods": [line.mood for line in lines]}
