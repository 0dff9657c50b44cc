"""SQL statements as spans: a psycopg connection class whose cursors trace `execute`.

Installed only when tracing is on. One client span per statement inside a recorded request
(SQL text with placeholders, never values), one per transaction, "ping" for the pool's idle
check. See docs/observability.md.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import TYPE_CHECKING, Any, cast

import psycopg
from opentelemetry.trace import SpanKind
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from app.ops.tracing import ChildSpan

if TYPE_CHECKING:
    from app.ops.tracing import Tracing

_FIRST_WORD = re.compile(r"\s*(?:--[^\n]*\n\s*)*([A-Za-z]+)")
_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_TARGETS = {
    "SELECT": re.compile(r"\bFROM\s+([A-Za-z_][\w.]*)", re.IGNORECASE),
    "INSERT": re.compile(r"\bINSERT\s+INTO\s+([A-Za-z_][\w.]*)", re.IGNORECASE),
    "UPDATE": re.compile(r"\bUPDATE\s+([A-Za-z_][\w.]*)", re.IGNORECASE),
    "DELETE": re.compile(r"\bDELETE\s+FROM\s+([A-Za-z_][\w.]*)", re.IGNORECASE),
}
MAX_NAMES = 1024  # statement texts whose names are remembered per worker


def statement_name(text: str) -> tuple[str, str]:
    """(span name, operation) of a statement: "SELECT conversations", "SELECT";
    a statement with common table expressions is named by the write it does, if any;
    the empty query (a connection check) is "ping"."""
    match = _FIRST_WORD.match(text)
    if match is None:
        return ("ping", "") if not text.strip() else ("SQL", "")
    operation = match.group(1).upper()
    if operation == "WITH":
        write = _WRITE.search(text)
        operation = write.group(1).upper() if write else "SELECT"
    target = _TARGETS.get(operation)
    found = target.search(text) if target is not None else None
    return (f"{operation} {found.group(1)}" if found else operation), operation


# Statement texts are few and fixed; their names are remembered per worker.
describe = functools.lru_cache(maxsize=MAX_NAMES)(statement_name)


def traced_connection_class(tracing: Tracing) -> type[psycopg.Connection]:
    """A psycopg Connection class whose cursors make a span per statement with `tracing`."""
    class TracedCursor(psycopg.Cursor):
        def _span(self, query) -> ChildSpan:
            """The CLIENT span of one statement: its name and text, never its values."""
            text = _text(query, self._conn)
            name, operation = describe(text)
            conn = cast("TracedConnection", self._conn)  # the class below makes them
            attributes = {**conn.trace_attributes, "db.query.text": text}
            if operation:
                attributes["db.operation.name"] = operation
            return ChildSpan(tracing.tracer, name, attributes, SpanKind.CLIENT)

        def execute(self, query, params=None, *, prepare=None, binary=None):
            if not tracing.recording():
                return super().execute(query, params, prepare=prepare, binary=binary)
            with self._span(query):
                return super().execute(query, params, prepare=prepare, binary=binary)

        def executemany(self, query, params_seq, *, returning=False):
            if not tracing.recording():
                return super().executemany(query, params_seq, returning=returning)
            with self._span(query):
                return super().executemany(query, params_seq, returning=returning)

    class TracedConnection(psycopg.Connection):
        @contextlib.contextmanager
        def transaction(self, savepoint_name=None, force_rollback=False):
            if not tracing.recording():
                with super().transaction(savepoint_name, force_rollback) as tx:
                    yield tx
                return
            nested = self.info.transaction_status != TransactionStatus.IDLE
            with ChildSpan(tracing.tracer, "savepoint" if nested else "transaction",
                           self.trace_attributes, SpanKind.CLIENT), \
                    super().transaction(savepoint_name, force_rollback) as tx:
                yield tx

        def __init__(self, pgconn, row_factory=tuple_row):
            super().__init__(pgconn, row_factory)
            self.cursor_factory = TracedCursor
            info = self.info
            self.trace_attributes: dict[str, Any] = {
                "db.system": "postgresql", "db.system.name": "postgresql",
                "db.namespace": info.dbname, "server.address": info.host}
            if info.port:
                self.trace_attributes["server.port"] = int(info.port)

    return TracedConnection


def _text(query, conn: psycopg.Connection) -> str:
    if isinstance(query, str):
        return query
    if isinstance(query, bytes | bytearray | memoryview):
        return bytes(query).decode("utf-8", "replace")
    if isinstance(query, sql.Composable):
        return query.as_string(conn)
    return str(query)
