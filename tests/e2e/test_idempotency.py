"""Idempotency keys end to end: replay byte for byte, conflicts, concurrency, crashes, expiry."""

from __future__ import annotations

import time
import uuid

import httpx
import psycopg
import pytest

from app.client import Client
from tests.conftest import run_threads


@pytest.fixture(scope="module")
def shared_server(deployed_server):
    """Each deployment in turn (tests/conftest.py deployed_server)."""
    return deployed_server


@pytest.fixture
def user(shared_server):
    created = Client(shared_server.url).create_user()
    return Client(shared_server.url, token=created["token"])


def key() -> str:
    return f"key-{uuid.uuid4()}"


def post(client: Client, path: str, body, idem: str | None, **headers) -> httpx.Response:
    all_headers = dict(headers)
    if idem is not None:
        all_headers["Idempotency-Key"] = idem
    if isinstance(body, bytes):
        return client.request("POST", path, content=body, headers=all_headers)
    return client.request("POST", path, json=body, headers=all_headers)


def count_conversations(client: Client) -> int:
    return len(list(client.iter_conversations()))


def twice(user, params: dict):
    """The same POST /conversations sent twice with one new key: (original, replay)."""
    k = key()
    first, second = (post(user, "/conversations", params, k) for _ in range(2))
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    return first, second


def test_replay_after_success_is_byte_for_byte(user):
    first, second = twice(user, {"heading": "Once"})
    assert first.status_code == second.status_code == 201
    assert second.headers["location"] == first.headers["location"]
    assert count_conversations(user) == 1


def test_recorded_4xx_is_replayed(user):
    first, second = twice(user, {"heading": ""})
    assert first.status_code == second.status_code == 400


def test_json_and_form_with_equal_values_match(user):
    k = key()
    convo = user.create_conversation("Forms")
    path = f"/conversations/{convo['id']}/lines"
    first = post(user, path, {"text": "hi", "think": True}, k)
    second = post(user, path, b"text=hi&think=true", k,
                  **{"Content-Type": "application/x-www-form-urlencoded"})
    assert first.status_code == 201 and second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert len(list(user.iter_lines(convo["id"]))) == 1


def test_same_key_with_other_parameters_or_path_is_422(user):
    k = key()
    assert post(user, "/conversations", {"heading": "A"}, k).status_code == 201
    response = post(user, "/conversations", {"heading": "B"}, k)
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    convo = user.create_conversation("Other")
    assert post(user, f"/conversations/{convo['id']}/lines", {"heading": "A"}, k
                ).status_code == 422


def test_keys_are_scoped_per_user(shared_server, user):
    other = Client(shared_server.url, token=Client(shared_server.url).create_user()["token"])
    k = key()
    assert post(user, "/conversations", {"heading": "Mine"}, k).status_code == 201
    response = post(other, "/conversations", {"heading": "Theirs"}, k)
    assert response.status_code == 201 and "idempotent-replayed" not in response.headers


def test_user_signup_is_idempotent_per_client_address(shared_server):
    anon = Client(shared_server.url)
    k = key()
    first = post(anon, "/users", {"name": "Once"}, k)
    second = post(anon, "/users", {"name": "Once"}, k)
    assert first.status_code == 201 and second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"


@pytest.mark.parametrize("bad", ["", "x" * 256, "tab\tkey", "caf\u00e9"])
def test_malformed_keys_are_invalid_params(user, bad):
    response = user.request("POST", "/conversations", json={"heading": "x"},
                            headers={"Idempotency-Key": bad.encode("utf-8")})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_params"
    assert response.json()["data"][0]["params"] == ["Idempotency-Key"]


def test_concurrent_identical_requests_create_exactly_one(shared_server, user):
    k = key()
    statuses: list[tuple[int, str | None]] = []

    def send() -> None:
        with httpx.Client(base_url=shared_server.url, timeout=30) as http:
            response = http.post("/conversations", json={"heading": "Race"},
                                 headers={"Authorization": f"Bearer {user.token}",
                                          "Idempotency-Key": k})
            statuses.append((response.status_code, response.headers.get("idempotent-replayed")))

    run_threads(send, [()] * 10)
    originals = [s for s in statuses if s == (201, None)]
    assert len(originals) == 1, statuses
    assert all(s in ((201, "true"), (409, None)) for s in statuses if s != (201, None)), statuses
    assert count_conversations(user) == 1


def test_failure_after_the_write_leaves_nothing_and_the_retry_creates_one(user):
    k = key()
    crashed = post(user, "/conversations", {"heading": "Crash"}, k,
                   **{"X-Fault-After-Write": "true"})
    assert crashed.status_code == 500
    assert count_conversations(user) == 0
    retried = post(user, "/conversations", {"heading": "Crash"}, k)
    assert retried.status_code == 201 and "idempotent-replayed" not in retried.headers
    again = post(user, "/conversations", {"heading": "Crash"}, k)
    assert again.headers["idempotent-replayed"] == "true"
    assert count_conversations(user) == 1


def test_keys_expire_after_24_hours_and_are_purged(start_server, postgres):
    url = postgres.new_database()
    server = start_server(url, PURGE_INTERVAL_SECONDS="0.5")
    client = Client(server.url, token=Client(server.url).create_user()["token"])
    k = key()
    assert post(client, "/conversations", {"heading": "Old"}, k).status_code == 201
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    reused = post(client, "/conversations", {"heading": "New"}, k)
    assert reused.status_code == 201 and "idempotent-replayed" not in reused.headers
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = conn.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0]
            if left == 0:
                break
            time.sleep(0.2)
    assert left == 0
