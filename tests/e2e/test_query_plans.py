"""Every list query is index-backed keyset pagination: shown with EXPLAIN on 100k rows."""

from __future__ import annotations

import psycopg
import pytest

from app.domain.pages import Page
from app.store import conversations, lines, moods
from app.store.keyset import keyset_sql

USER = 42
ROWS = 100_000


@pytest.fixture(scope="module")
def big_db(postgres):
    url = postgres.new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO users (id) SELECT g FROM generate_series(1, 1000) g")
        conn.execute("INSERT INTO moods (user_id, name, eyes, tongue) "
                     "SELECT 1 + g %% 1000, 'm' || g, 'oo', '  ' "
                     "FROM generate_series(1, %s) g", (ROWS,))
        conn.execute(
            "INSERT INTO conversations (rid, user_id, heading) "
            "SELECT g, 1 + g %% 100, 'h' || g FROM generate_series(1, %s) g", (ROWS,))
        conn.execute(
            "INSERT INTO lines (rid, conversation_id, mood_id, animal, think, text) "
            "SELECT g, 1 + g %% 1000, 1, 'default', false, 'x' FROM generate_series(1, %s) g",
            (ROWS,))
        conn.execute("ANALYZE")
    return url


def plan(url: str, sql: str, params: dict) -> str:
    with psycopg.connect(url, cursor_factory=psycopg.ClientCursor) as conn:
        rows = conn.execute("EXPLAIN " + sql, params).fetchall()
    return "\n".join(row[0] for row in rows)


@pytest.mark.parametrize("page", [Page(10), Page(10, starting_after="x"),
                                  Page(10, ending_before="x")])
def test_conversation_list_uses_an_index(big_db, page):
    cursor = conversations._LIST_CURSOR if page.cursor else None
    sql = keyset_sql(conversations._LIST_ITEMS, cursor, page)
    text = plan(big_db, sql, {"user_id": USER, "cursor": 4242, "limit_plus_one": 11})
    assert "Seq Scan on conversations" not in text, text
    assert "conversations_user_id_id_idx" in text, text


@pytest.mark.parametrize("page", [Page(10), Page(10, starting_after="x"),
                                  Page(10, ending_before="x")])
def test_line_list_uses_an_index(big_db, page):
    cursor = lines._LIST_CURSOR if page.cursor else None
    sql = keyset_sql(lines._LIST_ITEMS, cursor, page, key="l.id",
                     scope_exists=f"EXISTS ({lines._OWNED_CONVERSATION})")
    with psycopg.connect(big_db) as conn:
        rid = conn.execute("SELECT rid FROM conversations WHERE id = 3").fetchone()[0]
    text = plan(big_db, sql, {"user_id": 4, "conversation": rid, "cursor": 5003,
                              "limit_plus_one": 11})
    assert "Seq Scan on lines" not in text, text
    assert "lines_conversation_id_id_idx" in text, text


def test_mood_list_and_conversation_read_use_indexes(big_db):
    sql = keyset_sql(moods._LIST_ITEMS, moods._LIST_CURSOR, Page(10, starting_after="x"))
    text = plan(big_db, sql, {"user_id": USER, "cursor": "young", "limit_plus_one": 11})
    assert "Seq Scan on moods" not in text, text
    text = plan(big_db, conversations._GET_WITH_LINES.replace("%s", "%(v)s", 1)
                .replace("%s", "%(u)s", 1), {"v": 7, "u": 8})
    assert "Seq Scan on conversations" not in text and "Seq Scan on lines" not in text, text


def test_batch_statements_resolve_moods_and_conversations_by_index(big_db):
    from app.domain.models import NewLine
    from app.store.new_lines import line_params

    batch = line_params(USER, [NewLine("default", False, mood, "x")
                               for mood in ("m42", "borg", "M1042", "nope")])
    with psycopg.connect(big_db) as conn:
        rid = conn.execute("SELECT rid FROM conversations WHERE user_id = %s LIMIT 1",
                           (USER,)).fetchone()[0]
    text = plan(big_db, lines._CREATE_MANY, {**batch, "conversation": rid, "cap": 1000})
    assert "Seq Scan on moods" not in text and "Seq Scan on conversations" not in text, text
    assert "moods_owner_name_key" in text and "conversations_rid_key" in text, text
    text = plan(big_db, conversations._CREATE_WITH_LINES,
                {**batch, "cap": 1000, "line_cap": 1000, "rid": 1, "heading": "h"})
    assert "Seq Scan on moods" not in text and "Seq Scan on users" not in text, text
