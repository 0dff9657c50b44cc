"""The async peer, written only for the benchmark: FastAPI on uvicorn (uvloop, httptools).

    python -m bench.peer_app

GET /conversations/<id> runs the read reference's statement (bench/reference_apps.py)
on an autocommit connection from a psycopg `AsyncConnectionPool` and answers the same
JSON as SayPI, byte for byte (the benchmark checks and refuses to report otherwise),
each line's art rendered once per process and then memoised in a plain dict. Like the
read reference it skips everything else SayPI does: no token check (the user id is read
from the token's public part), no logging, metrics, ETag or security headers.

WEB_CONCURRENCY uvicorn workers (each its own event loop and pool of DB_POOL_MAX
connections) share one listening socket made by uvicorn's parent process.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import asynccontextmanager

# Imported here, not in create_app: FastAPI resolves the handlers' annotations (strings,
# with postponed evaluation) in this module's globals.
from fastapi import FastAPI, Request, Response

from bench.reference_apps import GET_WITH_LINES, JSON_TYPE, conversation_body

NOT_FOUND = b'{"code":"not_found"}'


def create_app():
    """The app of one uvicorn worker (uvicorn calls it after the worker started)."""
    from psycopg_pool import AsyncConnectionPool

    from app.config import Config
    from app.cowsay import CowLibrary, cow_search_path, render

    config = Config.from_env(os.environ, [])
    dsn = os.environ["DATABASE_URL"]
    pool = AsyncConnectionPool(dsn, min_size=config.db_pool_min, max_size=config.db_pool_max,
                               timeout=config.db_pool_timeout, open=False,
                               kwargs={"autocommit": True, "options": "-c TimeZone=UTC"},
                               name="bench-peer")
    library = CowLibrary.load(cow_search_path(config.cowpath), logging.getLogger("bench"))
    renders: dict[tuple, str] = {}

    def output(animal: str, eyes: str, tongue: str, think: bool, text: str) -> str:
        key = (animal, eyes, tongue, think, text)
        found = renders.get(key)
        if found is None:
            cow = library.get(animal) or library.get("default")
            found = renders[key] = render(cow, eyes, tongue, think, text)
        return found

    @asynccontextmanager
    async def lifespan(_app):
        await pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/conversations/{cid}")
    async def get_conversation(cid: str, request: Request) -> Response:
        public_user = request.headers.get("authorization", "")[7:].partition(".")[0]
        user_id = int(public_user[4:], 16)
        rid = int(cid[3:], 16)
        async with pool.connection() as conn:
            cursor = await conn.execute(GET_WITH_LINES, (rid, user_id))
            rows = await cursor.fetchall()
        if not rows:
            return Response(NOT_FOUND, status_code=404, media_type=JSON_TYPE)
        return Response(conversation_body(rows, output), media_type=JSON_TYPE)

    @app.get("/ready")
    async def ready() -> Response:
        return Response(b"ok")

    return app


def main(argv: list[str]) -> int:
    import uvicorn

    from app.config import Config

    if len(argv) != 1:
        sys.stderr.write("usage: python -m bench.peer_app\n")
        return 2
    if not os.environ.get("DATABASE_URL"):
        sys.stderr.write("the peer needs DATABASE_URL\n")
        return 2
    config = Config.from_env(os.environ, [])
    uvicorn.run("bench.peer_app:create_app", factory=True, host=config.host,
                port=config.port, workers=config.web_concurrency, loop="uvloop",
                http="httptools", access_log=False, log_level="warning",
                proxy_headers=False, server_header=False, date_header=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
