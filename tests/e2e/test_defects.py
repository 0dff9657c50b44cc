"""Regressions for defects that black-box and fault testing found (issue #12).

Each test here failed against the code before its fix, over real HTTP.
"""

from __future__ import annotations

import socket

import httpx
import pytest

from app.client import AuthInvalidError, Client


@pytest.fixture
def anon(shared_server):
    client = Client(shared_server.url)
    yield client
    client.close()


def raw_request(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are and read the answer until the server closes or 1 s of silence."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        sock.settimeout(1.0 if timeout > 1 else timeout)
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def status_and_json(response: bytes) -> tuple[int, dict]:
    import json

    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


# --- 1. a user whose lines use their own mood can be deleted --------------------------
def test_user_whose_lines_use_their_own_mood_is_deleted_with_everything(anon, shared_server):
    user = anon.create_user(name="Moody")
    me = anon.with_token(user["token"])
    me.put_mood("happy", eyes="^^")
    convo = me.create_conversation("with a mood of my own")
    me.create_line(convo["id"], text="hello", mood="happy")
    me.create_line(convo["id"], text="and the default", mood="default")
    me.delete_user(user["id"])
    assert me.last_response.status_code == 204
    with pytest.raises(AuthInvalidError):
        me.get_user(user["id"])
    with pytest.raises(AuthInvalidError):
        me.list_conversations()


# --- 2. chunked bodies over MAX_BODY_BYTES are refused, not truncated ---------------------
def chunked(body: bytes, size: int = 4096) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
             for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def chunked_post(url: str, path: str, token: str, content_type: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n"
            f"Connection: close\r\n\r\n").encode()
    return raw_request(url, head + chunked(body))


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded",
                                          "application/json"])
def test_chunked_body_over_the_limit_is_413_and_creates_nothing(anon, shared_server,
                                                                  content_type):
    user = anon.create_user()
    me = anon.with_token(user["token"])
    heading = "h" * 70_000  # over the default MAX_BODY_BYTES of 64 KiB
    body = (f"heading={heading}".encode() if content_type.endswith("urlencoded")
            else b'{"heading": "%s"}' % heading.encode())
    status, error = status_and_json(chunked_post(shared_server.url, "/conversations",
                                                 user["token"], content_type, body))
    assert status == 413
    assert error["code"] == "payload_too_large" and error["data"] == {"max_bytes": 65536}
    assert me.list_conversations().data == []


def test_chunked_body_within_the_limit_is_read_whole(anon, shared_server):
    user = anon.create_user()
    body = b'{"heading": "' + b"c" * 100 + b'"}'
    status, convo = status_and_json(chunked_post(shared_server.url, "/conversations",
                                                 user["token"], "application/json", body))
    assert status == 201 and convo["heading"] == "c" * 100


# --- 3. client input that used to raise inside the app ----------------------------------
def test_a_limit_of_thousands_of_digits_is_invalid_params(anon):
    user = anon.create_user()
    response = httpx.get(f"{anon.base_url}/conversations", params={"limit": "9" * 5000},
                         headers={"Authorization": f"Bearer {user['token']}"})
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_params"
    assert response.json()["data"] == [{"params": ["limit"],
                                        "message": "must be an integer between 1 and 100"}]


def test_a_malformed_chunk_size_is_invalid_request(anon, shared_server):
    user = anon.create_user()
    head = (f"POST /conversations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{user['token']}\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    status, error = status_and_json(raw_request(shared_server.url, head + b"zz\r\n{}\r\n0\r\n\r\n"))
    assert status == 400 and error["code"] == "invalid_request"
    assert "Traceback" not in shared_server.logs()
