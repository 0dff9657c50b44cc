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
@pytest.mark.parametrize("batch", [False, True], ids=["one-line", "batch"])
def test_a_line_whose_mood_is_deleted_while_it_waits_is_refused_as_missing_mood(
        start_server, idempotent, batch):
    server = start_server()
    anon = Client(server.url)
    user = anon.create_user(name="Racer")
    me = anon.with_token(user["token"])
    me.put_mood("fleeting", eyes="oo")
    convo = me.create_conversation("races")["id"]
    dsn = server.env["DATABASE_URL"]
    headers = {"Authorization": f"Bearer {user['token']}"}
    if idempotent:
        headers["Idempotency-Key"] = f"race-{batch}"
    line = {"text": "too late", "mood": "fleeting"}
    path = f"/conversations/{convo}/lines" + ("/batch" if batch else "")
    body = {"lines": [line]} if batch else line
    answers: list[httpx.Response] = []

    with psycopg.connect(dsn) as holder:
        # The user's row lock, which every write of theirs takes first: the line's
        # statement starts (its snapshot still has the mood) and waits here.
        holder.execute("SELECT id FROM users WHERE name = 'Racer' FOR UPDATE")
        writer = threading.Thread(target=lambda: answers.append(
            httpx.post(server.url + path, json=body, headers=headers, timeout=30)))
        writer.start()
        waiting = False
        for _ in range(200):
            waiting = holder.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()").fetchone()[0] > 0
            if waiting:
                break
            time.sleep(0.05)
        assert waiting, "the line's statement never waited for the user's lock"
        holder.execute("DELETE FROM moods WHERE name = 'fleeting'")
    writer.join(30)

    answer = answers[0]
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "invalid_params"
    assert me.list_lines(convo).data == []
    if idempotent:  # the refusal is what the key replays
        again = httpx.post(server.url + path, json=body, headers=headers, timeout=30)
        assert again.status_code == 400 and again.headers.get("Idempotent-Replayed") == "true"
