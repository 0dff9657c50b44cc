"""A write that races another write of the same user: the mood a new line names is deleted
while the line's statement waits for the user's lock. Outside or inside an idempotent
request, the line is refused as one naming a missing mood, never a 500."""

from __future__ import annotations

import threading
import time

import httpx
import psycopg
import pytest

from app.client import Client


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
@pytest.mark.parametrize("kind", ["line", "batch", "conversation"])
def test_a_line_whose_mood_is_deleted_while_it_waits_is_refused_as_missing_mood(
        start_server, idempotent, kind):
    server = start_server()
    anon = Client(server.url)
    user = anon.create_user(name="Racer")
    me = anon.with_token(user["token"])
    me.put_mood("fleeting", eyes="oo")
    convo = me.create_conversation("races")["id"]
    dsn = server.env["DATABASE_URL"]
    headers = {"Authorization": f"Bearer {user['token']}"}
    if idempotent:
        headers["Idempotency-Key"] = f"race-{kind}"
    line = {"text": "too late", "mood": "fleeting"}
    path, body = {
        "line": (f"/conversations/{convo}/lines", line),
        "batch": (f"/conversations/{convo}/lines/batch", {"lines": [line]}),
        "conversation": ("/conversations", {"heading": "born late", "lines": [line]}),
    }[kind]
    answers: list[httpx.Response] = []

    # pg_stat_activity is read once per transaction: the watcher asks in a new one each time.
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn, autocommit=True) as watcher:
        # The user's row lock, which every write of theirs takes first: the line's
        # statement starts (its snapshot still has the mood) and waits here.
        holder.execute("SELECT id FROM users WHERE name = 'Racer' FOR UPDATE")
        writer = threading.Thread(target=lambda: answers.append(
            httpx.post(server.url + path, json=body, headers=headers, timeout=30)))
        writer.start()
        deadline, waiting = time.monotonic() + 30, False
        while not waiting and time.monotonic() < deadline and not answers:
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()").fetchone()[0] > 0
            time.sleep(0.05)
        assert waiting, f"the write never waited for the user's lock: {answers}"
        holder.execute("DELETE FROM moods WHERE name = 'fleeting'")
    writer.join(30)

    answer = answers[0]
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "invalid_params"
    assert me.list_lines(convo).data == []
    assert [c["heading"] for c in me.list_conversations().data] == ["races"]
    if idempotent:  # the refusal is what the key replays
        again = httpx.post(server.url + path, json=body, headers=headers, timeout=30)
        assert again.status_code == 400 and again.headers.get("Idempotent-Replayed") == "true"
