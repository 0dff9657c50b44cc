"""Live streams without I/O: Grip-Sig checks, recovery links, Grip-Last, the direct slots."""

from __future__ import annotations

import time

import jwt

from app.api.streams import StreamSlots, parse_stream_id, retry_hint
from app.http.grip import (
    LINK_SECONDS,
    Grip,
    control_channel,
    conversation_channel,
    last_ids,
    user_channel,
)
from app.relay.pushpin import coalesce

KEY = "grip-unit-key-0123456789abcdef-0123456789"


def token(payload: dict, key: str = KEY, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def test_only_an_unexpired_token_signed_with_our_key_passes():
    grip, later = Grip(KEY), int(time.time()) + 60
    assert grip.verified(token({"iss": "pushpin", "exp": later}))
    assert not grip.verified(None) and not grip.verified("")
    assert not grip.verified(token({"iss": "pushpin", "exp": later},
                                   "another-key-0123456789abcdef-01234567"))
    assert not grip.verified(token({"iss": "pushpin", "exp": int(time.time()) - 60}))
    assert not grip.verified(token({"iss": "pushpin"}))  # exp is required
    assert not grip.verified(token({"exp": later}, None, "none"))
    assert not grip.verified("a.b.c")
    assert not Grip(None).verified(token({"exp": later}))  # no key: nothing passes


def test_a_recovery_link_names_its_stream_and_cannot_be_altered():
    grip = Grip(KEY)
    link = grip.link_token(0x1234, None)
    assert grip.link_stream(link) == (0x1234, None)
    narrowed = grip.link_token(0x1234, 0xABC)
    assert grip.link_stream(narrowed) == (0x1234, 0xABC)
    other_user = link.replace("0000000000001234", "0000000000001235", 1)
    assert grip.link_stream(other_user) is None
    assert Grip("another-key-0123456789abcdef-01234567").link_stream(link) is None
    assert grip.link_stream(None) is None and grip.link_stream("x") is None
    assert Grip(None).link_stream(link) is None
    expiry = link.split(".")[2]
    later = link.replace(f".{expiry}.", f".{int(expiry, 16) + 3600:x}.", 1)
    assert grip.link_stream(later) is None  # the expiry is under the MAC too


def test_a_recovery_link_expires():
    now = [1_000_000.0]
    grip = Grip(KEY, clock=lambda: now[0])
    link = grip.link_token(0x1234, 0xABC)
    now[0] += LINK_SECONDS - 1
    assert grip.link_stream(link) == (0x1234, 0xABC)
    now[0] += 2
    assert grip.link_stream(link) is None


def test_grip_last_headers_by_channel():
    assert last_ids(["u.1f; last-id=evt_a", 'c.1f.2; last-id="evt_b"']) == {
        "u.1f": "evt_a", "c.1f.2": "evt_b"}
    assert last_ids(["u.1f; last-id=evt_a, x.1f; last-id=evt_c"]) == {
        "u.1f": "evt_a", "x.1f": "evt_c"}
    assert last_ids(["nonsense"]) == {}
    assert (user_channel(31), conversation_channel(31, 2), control_channel(31)) == \
        ("u.1f", "c.1f.2", "x.1f")


def test_stream_ids_include_the_position_before_any_event():
    user = 0x42
    assert parse_stream_id(f"evt_{user:016x}{0:016x}", user) == 0
    assert parse_stream_id(f"evt_{user:016x}{7:016x}", user) == 7
    assert parse_stream_id(f"evt_{user + 1:016x}{7:016x}", user) is None
    assert parse_stream_id("evt_nope", user) is None


def test_direct_slots_are_bounded_and_say_when_one_frees():
    counts: list[int] = []
    slots = StreamSlots(2, counts.append)
    first, second = slots.take(30), slots.take(3)
    assert first is not None and second is not None
    assert slots.take(30) is None
    assert 1 <= slots.seconds_to_free() <= 3
    slots.release(second)
    slots.release(second)  # twice: counted once
    assert slots.take(30) is not None
    assert counts == [1, 2, 1, 2]
    assert StreamSlots(0).take(30) is None


def test_the_retry_hint_is_drawn_per_stream():
    hints = {retry_hint() for _ in range(50)}
    assert len(hints) > 10
    assert all(1000 <= int(h.split()[1]) <= 5000 for h in hints)


def item(channel: str, seq: int) -> dict:
    return {"channel": channel, "id": f"evt_{seq}", "prev-id": f"evt_{seq - 1}",
            "formats": {"http-stream": {"content": f"id: evt_{seq}\n\n"}}}


def test_a_batchs_items_of_one_channel_go_as_one_in_their_order():
    items = [item("u", 4), item("c", 4), item("u", 5), item("u", 6), item("c", 6)]
    items[4]["prev-id"] = "evt_4"  # the conversation's events are 4 and 6
    assert coalesce(items) == [
        {"channel": "u", "id": "evt_6", "prev-id": "evt_3",
         "formats": {"http-stream": {"content": "id: evt_4\n\nid: evt_5\n\nid: evt_6\n\n"}}},
        {"channel": "c", "id": "evt_6", "prev-id": "evt_3",
         "formats": {"http-stream": {"content": "id: evt_4\n\nid: evt_6\n\n"}}}]
    # The items given are left as they were (several channels share one formats dict).
    assert items[0]["formats"]["http-stream"]["content"] == "id: evt_4\n\n"

