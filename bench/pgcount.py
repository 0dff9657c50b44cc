"""Counts database round trips: a PostgreSQL wire-protocol proxy between an app and its server.

A client waits for the server once per simple Query ('Q') message and once
per Sync ('S') that closes an extended-protocol batch (Parse/Bind/Execute);
SayPI and the reference app use no pipeline mode, so each of those is one
round trip. The proxy forwards every byte unchanged and, per connection,
remembers which statement text each Sync belongs to (Parse names it, Bind
refers to it, also for prepared statements), so the report can say which
statements a request ran.

Used only in an untimed phase (it adds a hop): the timed runs connect to
PostgreSQL directly.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections import Counter
from urllib.parse import unquote

import psycopg

_SPECIAL_CODES = {80877103, 80877104, 80877102}  # SSLRequest, GSSENCRequest, CancelRequest
_SPACE = re.compile(r"\s+")


def _short(sql: str) -> str:
    text = _SPACE.sub(" ", sql).strip()
    if not text:
        return "(empty query: connection check)"
    return text if len(text) <= 100 else text[:97] + "..."


class RoundTripCounter:
    """A TCP proxy on 127.0.0.1 in front of the PostgreSQL a DSN names."""

    def __init__(self, dsn: str):
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        host = unquote(str(params.get("host") or "/var/run/postgresql"))
        port = int(params.get("port") or 5432)
        self._upstream = (f"{host}/.s.PGSQL.{port}", None) if host.startswith("/") \
            else (host, port)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        params.pop("hostaddr", None)
        params.update(host="127.0.0.1", port=str(self.port), sslmode="disable",
                      gssencmode="disable")
        self.dsn = psycopg.conninfo.make_conninfo(**params)
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="pgcount-accept", daemon=True).start()

    # --- counts ----------------------------------------------------------------------
    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)

    def _count(self, statement: str) -> None:
        with self._lock:
            self._counts[_short(statement)] += 1

    # --- proxy -----------------------------------------------------------------------
    def _connect_upstream(self) -> socket.socket:
        address, port = self._upstream
        if port is None:
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(address)
        else:
            upstream = socket.create_connection((address, port))
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return upstream

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                upstream = self._connect_upstream()
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            threading.Thread(target=self._client_to_server, args=(client, upstream),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _client_to_server(self, client: socket.socket, upstream: socket.socket) -> None:
        buffer = b""
        started = False  # after the StartupMessage every message has a type byte
        statements: dict[str, str] = {}
        current = ""
        try:
            while chunk := client.recv(65536):
                upstream.sendall(chunk)
                buffer += chunk
                while True:
                    if not started:
                        if len(buffer) < 8:
                            break
                        length, code = struct.unpack("!II", buffer[:8])
                        if len(buffer) < length:
                            break
                        buffer = buffer[length:]
                        if code not in _SPECIAL_CODES:
                            started = True
                        continue
                    if len(buffer) < 5:
                        break
                    kind = buffer[:1]
                    length = struct.unpack("!I", buffer[1:5])[0]
                    if len(buffer) < 1 + length:
                        break
                    body = buffer[5:1 + length]
                    buffer = buffer[1 + length:]
                    if kind == b"Q":
                        self._count(body[:-1].decode("utf-8", "replace"))
                    elif kind == b"P":
                        name, _, rest = body.partition(b"\0")
                        query = rest.partition(b"\0")[0].decode("utf-8", "replace")
                        statements[name.decode()] = query
                        current = query
                    elif kind == b"B":
                        _portal, _, rest = body.partition(b"\0")
                        name = rest.partition(b"\0")[0].decode()
                        current = statements.get(name, current)
                    elif kind == b"S":
                        self._count(current)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
