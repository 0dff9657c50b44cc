"""What the benchmark sends: one request list per scenario, built from the seeded data."""

from __future__ import annotations

import http.client
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.seed import Seeded, batch_body, line_body
from bench.wrk import write_requests

REQUESTS_PER_FILE = 5000
BATCH_LINES = 20  # lines per request of the batch scenario


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    app: str  # saypi, hello or read
    file: str  # request file name
    expect: tuple[int, ...] = (200,)


SCENARIOS: dict[str, Scenario] = {s.key: s for s in (
    Scenario("hello", "reference: bare Flask constant JSON hello", "hello", "hello"),
    Scenario("ref_get", "reference: bare Flask + pool, same query as GET /conversations/{id}",
             "read", "get"),
    Scenario("ref_get_cap", "reference: the same query, conversation of 1000 lines", "read",
             "get_cap"),
    Scenario("animals", "1. GET /animals", "saypi", "animals"),
    Scenario("get", "2. GET /conversations/{id} (10 lines)", "saypi", "get"),
    Scenario("list", "3. GET /conversations?limit=10", "saypi", "list"),
    Scenario("post_line", "4. POST /conversations/{id}/lines", "saypi", "post_line", (201,)),
    Scenario("post_batch", f"4b. POST /conversations/{{id}}/lines/batch ({BATCH_LINES} lines)",
             "saypi", "post_batch", (201,)),
    Scenario("mix", "5. mix: 60% GET conversation, 20% list, 20% POST line", "saypi", "mix",
             (200, 201)),
    Scenario("get_paced", "2 at half of its max throughput", "saypi", "get"),
    Scenario("list_paced", "3 at half of its max throughput", "saypi", "list"),
    Scenario("get_cap", "GET /conversations/{id} at the 1000-line cap", "saypi", "get_cap"),
    Scenario("list_large", "3 with 1M conversations in the table", "saypi", "list"),
)}


def build_request_files(directory: Path, seeded: Seeded) -> dict[str, Path]:
    """Write every request file; returns file name -> path."""
    rng = random.Random(7)
    n = REQUESTS_PER_FILE

    def pick(items: list, i: int):
        return items[i % len(items)]

    gets = [("GET", f"/conversations/{cid}", tok, "")
            for tok, cid in (pick(seeded.read_conversations, i) for i in range(n))]
    lists = []
    for i in range(n):
        if i % 2 == 0:
            tok = pick(seeded.readers, i)[1]
            lists.append(("GET", "/conversations?limit=10", tok, ""))
        else:
            tok, cursor = pick(seeded.list_cursors, i)
            lists.append(("GET", f"/conversations?limit=10&starting_after={cursor}", tok, ""))
    posts = [("POST", f"/conversations/{cid}/lines", tok, line_body(i, seeded.texts))
             for i, (tok, cid) in enumerate(pick(seeded.write_conversations, i)
                                            for i in range(n))]
    batches = [("POST", f"/conversations/{cid}/lines/batch", tok,
                batch_body(i, seeded.texts, BATCH_LINES))
               for i, (tok, cid) in enumerate(pick(seeded.write_conversations, i)
                                              for i in range(n // 5))]
    mix = gets[: n * 3 // 5] + lists[: n // 5] + posts[: n // 5]
    rng.shuffle(mix)
    animals = [("GET", "/animals", pick(seeded.readers, i)[1], "") for i in range(n)]
    hello = [("GET", "/hello", pick(seeded.readers, i)[1], "") for i in range(n)]
    cap_token, cap_id = seeded.cap_conversation
    get_cap = [("GET", f"/conversations/{cap_id}", cap_token, "")]
    files = {"get": gets, "list": lists, "post_line": posts, "post_batch": batches, "mix": mix,
             "animals": animals, "hello": hello, "get_cap": get_cap}
    return {name: write_requests(directory / f"{name}.requests", requests)
            for name, requests in files.items()}


def read_requests(path: Path) -> list[tuple[str, str, str, str]]:
    out = []
    with open(path) as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line:
                method, target, token, body = line.split("\t")
                out.append((method, target, token, body))
    return out


def replay(port: int, requests: list[tuple[str, str, str, str]], count: int) -> Counter:
    """Send `count` requests from the list in order, on one keep-alive connection.

    Returns how many got each status. Used to check the request lists before
    timing them and to drive the (untimed) round-trip count.
    """
    statuses: Counter = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for i in range(count):
            method, target, token, body = requests[i % len(requests)]
            headers = {"Accept": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            if body:
                headers["Content-Type"] = "application/json"
            conn.request(method, target, body=body.encode() if body else None, headers=headers)
            response = conn.getresponse()
            response.read()
            statuses[response.status] += 1
    finally:
        conn.close()
    return statuses
