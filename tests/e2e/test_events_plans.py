"""GET /events costs the same at 10 events as at 1,000,000: the pages buffers each list query
touches, counted by EXPLAIN (ANALYZE, BUFFERS) on the generic plan production uses."""

from __future__ import annotations

import json
import re

import psycopg
import pytest

from app.store import events

BIG, SMALL = 1, 2  # users with 1,000,000 and 10 events
BIG_EVENTS = 1_000_000
CONVERSATIONS = 100
TYPES = {"user_id": "bigint", "cursor": "bigint", "limit_plus_one": "int",
         "retention_hours": "int", "types": "text[]", "conversation": "bigint", "seq": "bigint"}


@pytest.fixture(scope="module")
def events_db(postgres):
    url = postgres.new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id, event_seq) VALUES (%s, %s), (%s, 10)",
                     (BIG, BIG_EVENTS, SMALL))
        # All lines, in 100 conversations, but for three user.updated at the very start:
        # the statistics see one type, so a plan may take any filter to match nearly
        # every row, and a scan that is not on the filter's index reads the whole log
        # for the types that have no events at all (line.deleted, mood.*).
        for user, count in ((BIG, BIG_EVENTS), (SMALL, 10)):
            conn.execute(
                "INSERT INTO events (user_id, seq, last_seq, type, conversation, data) "
                "SELECT %(user)s, g, g, CASE WHEN g <= 3 THEN 'user.updated' "
                "  ELSE 'line.created' END, "
                "  CASE WHEN g <= 3 THEN NULL ELSE g %% %(convos)s END, "
                "  jsonb_build_array(jsonb_build_array(g, 'default', false, 'Moo.', 0, 'tired', "
                "                                      '--', '  ', false)) "
                "FROM generate_series(1, %(count)s) g",
                {"user": user, "count": count, "convos": CONVERSATIONS})
        conn.execute("VACUUM ANALYZE events")
    return url


def buffers(url: str, sql: str, params: dict) -> int:
    """Shared buffers the statement touches, run as a prepared statement on its generic plan
    (the pool's connections set plan_cache_mode=force_generic_plan)."""
    names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
    text = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m.group(1)) + 1}", sql)
    text = text.replace("%%", "%")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE q({', '.join(TYPES[n] for n in names)}) AS {text}")
        values = ", ".join(f"%({n})s" for n in names)
        plan = psycopg.ClientCursor(conn).execute(  # EXECUTE takes literals, not binds
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE q({values})", params).fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    top = plan[0]["Plan"]
    assert "Seq Scan" not in json.dumps(plan), plan
    return top["Shared Hit Blocks"] + top["Shared Read Blocks"]


CASES = {
    "first page": (False, False, False, {}),
    "after a cursor": (False, False, False, {"cursor": 5}),
    "before a cursor": (False, False, True, {"cursor": 9}),
    "one type": (True, False, False, {"types": ["user.updated"], "cursor": 5}),
    "a rare type": (True, False, False, {"types": ["mood.created"]}),
    "a prefix": (True, False, False, {"types": ["line.created", "line.deleted"],
                                      "cursor": 5}),
    "a conversation": (True, True, False, {"types": list(events.CONVERSATION_TYPES),
                                           "conversation": 7}),
    "a conversation and a type": (True, True, True, {"types": ["line.deleted"],
                                                     "conversation": 7, "cursor": 9}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_page_of_a_million_events_costs_what_a_page_of_ten_does(events_db, case):
    filtered, conversation, backward, extra = CASES[case]
    sql = events._LISTS[(filtered, conversation, backward)]
    default_cursor = 2**63 - 1 if backward else 0
    cost = {}
    for user, count in ((SMALL, 10), (BIG, BIG_EVENTS)):
        params = {"user_id": user, "limit_plus_one": 11, "retention_hours": 720,
                  "types": [], "conversation": None, "cursor": default_cursor, **extra}
        if "cursor" in extra:  # the same place from the end: the newest events
            params["cursor"] = count - 10 + extra["cursor"]
        cost[count] = buffers(events_db, sql, params)
    # One more B-tree level or two per index, nothing that grows with the log.
    assert cost[BIG_EVENTS] <= cost[10] + 40, cost


def test_one_event_is_read_by_its_key(events_db):
    small = buffers(events_db, events._GET, {"user_id": SMALL, "seq": 5,
                                             "retention_hours": 720})
    big = buffers(events_db, events._GET, {"user_id": BIG, "seq": 500_000,
                                           "retention_hours": 720})
    assert big <= small + 4


def test_the_purge_takes_the_oldest_by_the_created_at_index(events_db):
    with psycopg.connect(events_db) as conn:
        plan = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN SELECT ctid FROM events WHERE created_at < now() - interval '1 hour' "
            "ORDER BY created_at LIMIT 1000").fetchall())
    assert "events_created_at_idx" in plan, plan
