"""`python -m bench peer` refuses to report unless every row answers the peer's bytes."""

from __future__ import annotations

import pytest

from bench.peer import PEER, BodiesDiffer, check_same_bodies, markdown

REQUESTS = [("GET", f"/conversations/cv_{n:016x}", f"tok{n}", "") for n in range(3)]


class FakeServer:
    def __init__(self, answer):
        self.answer = answer

    def get(self, target, headers):
        return self.answer(target, headers)


def same(target, _headers):
    return 200, target.encode() + b'{"lines":[]}'


def test_identical_bodies_are_compared_for_every_request():
    servers = {PEER: FakeServer(same), "saypi_off": FakeServer(same)}
    assert check_same_bodies(servers, REQUESTS) == len(REQUESTS)


def test_one_byte_of_difference_refuses_the_report():
    def other(target, headers):
        status, body = same(target, headers)
        return status, body.replace(b"[]", b"[ ]") if target.endswith("1") else body

    servers = {PEER: FakeServer(same), "saypi_pg": FakeServer(other)}
    with pytest.raises(BodiesDiffer, match="saypi_pg"):
        check_same_bodies(servers, REQUESTS)


def test_a_peer_that_fails_refuses_the_report():
    with pytest.raises(BodiesDiffer):
        check_same_bodies({PEER: FakeServer(lambda t, h: (422, b""))}, REQUESTS)


def test_the_table_has_a_row_per_server_with_its_ratios():
    rows = {key: {"title": key, "rps": rps, "runs_rps": [rps], "p99_ms": 1.0,
                  "app_cpu_us_per_request": 500.0, "x_peer": rps / 2000, "x_flask": 1.0}
            for key, rps in ((PEER, 2000.0), ("saypi_pg", 1800.0))}
    text = markdown({"rows": rows, "generated_at": "now", "same_bytes": {
        "compared": 20, "response_bytes": 6800}, "bench_settings": {
        "connections": 32, "wrk_threads": 2, "runs": 3, "seconds": 10}})
    assert "| saypi_pg | 1,800 | 1,800 | 1.0 | 500.0 | 0.9 | 1.0 |" in text
