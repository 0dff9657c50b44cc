"""The two reference apps, written only for the benchmark, served on SayPI's gunicorn settings.

    python -m bench.reference_apps hello|read

Both read SayPI's own settings (app.config.Config, so the same environment
gives the same WEB_CONCURRENCY, THREADS, DB_POOL_*, REUSE_PORT...) and use
SayPI's gunicorn options (app.ops.serve.gunicorn_options) without its lifecycle
hooks and with gunicorn's stock gthread worker class. Each worker builds its app after fork.

- hello: GET /hello answers a constant JSON object. The framework's ceiling.
- read: GET /conversations/<id> runs the same single statement as SayPI's
  GET /conversations/{id} on an autocommit connection from a psycopg pool and
  answers the same JSON, byte for byte (the benchmark checks), with nothing
  else: no token check (the user id is read from the token's public part),
  no logging, metrics, ETag or security headers; renders are memoised in a
  plain dict (the cost of a render-cache hit, nothing more).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC

from flask import Flask, Response, request
from gunicorn.app.base import BaseApplication

JSON_TYPE = "application/json; charset=utf-8"
HELLO = b'{"hello":"world"}'

# The statement SayPI's ConversationRepository.get ran when the benchmark was
# written (app/store/conversations.py, _GET_WITH_LINES). Kept here as a fixed
# baseline; the benchmark reports whether SayPI still runs the same text.
GET_WITH_LINES = """
SELECT c.rid, c.heading, c.created_at,
       l.rid, l.animal, l.think, l.text, l.created_at,
       m.name, m.eyes, m.tongue, m.user_id IS NOT NULL
FROM conversations c
LEFT JOIN lines l ON l.conversation_id = c.id
LEFT JOIN moods m ON m.id = l.mood_id
WHERE c.rid = %s AND c.user_id = %s
ORDER BY l.id
"""

_HOOKS = ("on_starting", "post_worker_init", "worker_exit", "child_exit", "logger_class")


def hello_app() -> Flask:
    app = Flask("bench-hello")

    @app.get("/hello")
    def hello() -> Response:
        return Response(HELLO, content_type=JSON_TYPE)

    @app.get("/ready")
    def ready() -> Response:
        return Response(b"ok")

    return app


def conversation_body(rows, output) -> bytes:
    """SayPI's JSON of one conversation from GET_WITH_LINES' rows (at least one), each
    line's art from `output(animal, eyes, tongue, think, text)`: both reference apps."""
    first = rows[0]
    lines = [{"id": f"ln_{r[3]:016x}", "animal": r[4], "think": r[5], "mood": r[8],
              "text": r[6], "output": output(r[4], r[9], r[10], r[5], r[6]),
              "created_at": _timestamp(r[7])}
             for r in rows if r[3] is not None]
    body = {"id": f"cv_{first[0]:016x}", "heading": first[1],
            "created_at": _timestamp(first[2]), "lines": lines}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _timestamp(value) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def read_app(config, dsn: str) -> Flask:
    from psycopg_pool import ConnectionPool

    from app.cowsay import CowLibrary, cow_search_path, render

    pool = ConnectionPool(dsn, min_size=config.db_pool_min, max_size=config.db_pool_max,
                          timeout=config.db_pool_timeout,
                          kwargs={"autocommit": True, "options": "-c TimeZone=UTC"},
                          open=True, name="bench-read")
    pool.wait(timeout=30)
    library = CowLibrary.load(cow_search_path(config.cowpath), logging.getLogger("bench"))
    renders: dict[tuple, str] = {}
    app = Flask("bench-read")

    def output(animal: str, eyes: str, tongue: str, think: bool, text: str) -> str:
        key = (animal, eyes, tongue, think, text)
        found = renders.get(key)
        if found is None:
            cow = library.get(animal) or library.get("default")
            found = renders[key] = render(cow, eyes, tongue, think, text)
        return found

    @app.get("/conversations/<cid>")
    def get_conversation(cid: str) -> Response:
        public_user = request.headers.get("Authorization", "")[7:].partition(".")[0]
        user_id = int(public_user[4:], 16)
        rid = int(cid[3:], 16)
        with pool.connection() as conn:
            rows = conn.execute(GET_WITH_LINES, (rid, user_id)).fetchall()
        if not rows:
            return Response(b'{"code":"not_found"}', status=404, content_type=JSON_TYPE)
        return Response(conversation_body(rows, output), content_type=JSON_TYPE)

    @app.get("/ready")
    def ready() -> Response:
        return Response(b"ok")

    return app


class ReferenceServer(BaseApplication):
    def __init__(self, options: dict, build):
        self.options = options
        self.build = build
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        return self.build()


def reference_options(config) -> dict:
    """SayPI's gunicorn options for this config, without SayPI's lifecycle hooks."""
    from app.ops.serve import gunicorn_options

    options = gunicorn_options(config, logging.getLogger("saypi-bench-reference"))
    for name in _HOOKS:
        options.pop(name, None)
    options["worker_class"] = "gthread"  # stock gthread, whatever subclass SayPI uses
    options["proc_name"] = "saypi-bench-reference"
    return options


def main(argv: list[str]) -> int:
    from app.config import Config

    if len(argv) != 2 or argv[1] not in ("hello", "read"):
        sys.stderr.write("usage: python -m bench.reference_apps hello|read\n")
        return 2
    kind = argv[1]
    config = Config.from_env(os.environ, [])
    dsn = os.environ.get("DATABASE_URL", "")
    if kind == "read" and not dsn:
        sys.stderr.write("the read reference needs DATABASE_URL\n")
        return 2

    def build():
        return hello_app() if kind == "hello" else read_app(config, dsn)

    ReferenceServer(reference_options(config), build).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
