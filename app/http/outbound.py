"""Where SayPI may send a request of its own (webhooks): the URL's form and its addresses.

Checked when an endpoint is created or changed, and again before every delivery, on the
addresses the delivery then connects to (a name may resolve elsewhere later).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import NamedTuple

from app.domain.webhooks import address_problem, host_form_problem

Resolver = Callable[[str, int], list[str]]


class Destination(NamedTuple):
    scheme: str
    host: str  # as written, in ASCII (IDNA): the Host header, TLS's server name
    port: int
    target: str  # path and query
    addresses: tuple[str, ...]  # every address the host resolved to, each checked


class SlowName(OSError):
    """A name that did not resolve within the resolver's time limit."""


Lookup = Callable[[str, int], list[str]]


def system_lookup(host: str, port: int) -> list[str]:
    """The system resolver's addresses for `host` (getaddrinfo), each once, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolver(static: Mapping[str, str], seconds: float, at_once: int = 8,
             lookup: Lookup = system_lookup) -> Resolver:
    """`lookup` after the `static` host=address pairs (WEBHOOK_RESOLVE), bounded in time.

    getaddrinfo has no timeout of its own (the system's can be tens of seconds), and a
    name is resolved in a request (an endpoint's creation) as well as before each delivery:
    so each lookup runs on a thread of its own and its caller waits at most `seconds`
    (SlowName after). A lookup that outlives its caller keeps its thread until the system
    gives up; at most `at_once` such threads exist, and a caller that finds none free
    waits for one within the same `seconds`. The threads are daemons: a stuck lookup
    never holds up a stopping process."""
    static = {ascii_host(host.lower()) or host: address for host, address in static.items()}
    slots = threading.BoundedSemaphore(at_once)

    def resolve(host: str, port: int) -> list[str]:
        if host in static:
            return [static[host]]
        deadline = time.monotonic() + seconds
        if not slots.acquire(timeout=seconds):
            raise SlowName(f"no free lookup within {seconds:g} s")
        answer: list[list[str] | BaseException] = []
        done = threading.Event()

        def look() -> None:
            try:
                answer.append(lookup(host, port))
            except BaseException as exc:  # handed to the waiting caller
                answer.append(exc)
            finally:
                slots.release()
                done.set()

        threading.Thread(target=look, name="resolve", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise SlowName(f"did not resolve within {seconds:g} s")
        result = answer[0]
        if isinstance(result, BaseException):
            raise result
        return result

    return resolve


def ascii_host(host: str) -> str | None:
    """A host name in ASCII: an internationalised one in its IDNA form (`xn--...`), as DNS,
    the Host header and TLS's server name want it; None if it has no such form."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return None


IDNA_PROBLEM = "must name a host that has an IDNA (ASCII) form"


def url_problem(url: str, https_only: bool) -> str | None:
    """Why `url` cannot be an endpoint's URL whatever it resolves to, or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "must be an absolute http or https URL"
    schemes = ("https",) if https_only else ("http", "https")
    if parts.scheme not in schemes or not parts.hostname:
        return "must be an absolute https URL" if https_only else \
            "must be an absolute http or https URL"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user name or password"
    if port == 0:
        return "must not name port 0"
    host = ascii_host(parts.hostname)
    if host is None:
        return IDNA_PROBLEM
    return host_form_problem(host)


def destination(url: str, allow_private: bool, resolve: Resolver
                ) -> tuple[Destination | None, str | None]:
    """The URL's resolved destination, or why it may not be reached (every address is
    checked: one private address among public ones refuses the whole name)."""
    parts = urllib.parse.urlsplit(url)
    host = ascii_host(parts.hostname or "")
    if host is None:
        return None, IDNA_PROBLEM
    port = parts.port or (443 if parts.scheme == "https" else 80)
    literal = _literal(host)
    try:
        addresses = [literal] if literal else resolve(host, port)
    except SlowName:
        return None, f"has a host that does not resolve in time ({host})"
    except (OSError, UnicodeError):
        return None, f"has a host that does not resolve ({host})"
    if not addresses:
        return None, f"has a host that does not resolve ({host})"
    for address in addresses:
        problem = address_problem(address.split("%")[0], allow_private)
        if problem is not None:
            return None, problem
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Destination(parts.scheme, host, port, target, tuple(addresses)), None


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class OutboundPolicy:
    """Where webhooks may go on this server: https only in production, no private address
    unless WEBHOOK_ALLOW_PRIVATE, names resolved by `resolve`."""

    def __init__(self, https_only: bool, allow_private: bool, resolve: Resolver):
        self.https_only = https_only
        self.allow_private = allow_private
        self.resolve = resolve

    def problem(self, url: str) -> str | None:
        """Why `url` may not be an endpoint's URL now, or None."""
        problem = url_problem(url, self.https_only)
        if problem is None:
            problem = destination(url, self.allow_private, self.resolve)[1]
        return problem

    def destination(self, url: str) -> tuple[Destination | None, str | None]:
        problem = url_problem(url, self.https_only)
        if problem is not None:
            return None, problem
        return destination(url, self.allow_private, self.resolve)
