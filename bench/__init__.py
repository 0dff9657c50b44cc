"""SayPI's benchmark: `make bench` (`python -m bench`).

SayPI is started exactly as production starts it (`run.py serve`: gunicorn
gthread workers, a real PostgreSQL, rate limits off) next to two reference
apps written only for the benchmark, on the same gunicorn settings:

- `hello`: a bare Flask app answering a constant JSON hello, the ceiling of
  the framework on this machine;
- `read`: bare Flask + a psycopg pool running the same single query as
  GET /conversations/{id} and answering the same JSON, with nothing else.

wrk (a separate process) drives every scenario on 127.0.0.1, each run bounded
in time; every SayPI figure is reported as a ratio to the references measured
in the same run. Database round trips per request are counted by a small
PostgreSQL wire-protocol proxy in a separate, untimed phase.

Modules: `settings` (environment knobs), `postgres` and `seed` (the database
and its data), `servers` (readiness, RSS, CPU), `reference_apps`, `wrk`
(load generation; `requests.lua`), `pgcount` (round-trip counting),
`scenarios` (what is measured), `session` (one run: database, servers,
measurements), `overload` and `heavy` (their own rows), `peer` and
`peer_app` (`python -m bench peer`: SayPI beside an async FastAPI + uvicorn
peer answering the same bytes), `report` (Markdown,
JSON, PNG), `profile` (py-spy on a worker under load), `wsgi_calls` (the app
called without HTTP), `main` (the commands); `fleet/` (`python -m bench
fleet`: instances behind HAProxy through a rolling restart, a crash and a
database restart). The services themselves (PostgreSQL, the standby, Redis,
HAProxy) come from `harness`.
"""
