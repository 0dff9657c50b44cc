"""W3C Trace Context: the `traceparent` and `tracestate` request headers, parsed strictly.

Client text on every request, so parsing never raises and never logs: a malformed header is
dropped whole. Hand-made rather than OpenTelemetry's propagator. See docs/envelope.md.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# version-traceid-parentid-flags, lower-case hex only. Version ff is invalid;
# a later version than 00 may append fields after a dash, which are ignored.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?",
                          re.ASCII | re.DOTALL)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

# The W3C grammar of a tracestate list member (also what OpenTelemetry's TraceState
# accepts, so a state built from these pairs never makes it log).
_MEMBER = re.compile(
    r"([a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])",
    re.ASCII)
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_CHARS = 512  # what every participant must propagate; longer is dropped


class TraceParent(NamedTuple):
    """The caller's span: its trace id, its span id, and its trace flags (bit 0: sampled)."""

    trace_id: int
    span_id: int
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)


def parse_traceparent(value: str | None) -> TraceParent | None:
    """The parent a `traceparent` header names, or None when it is absent or malformed."""
    if not value or len(value) > 512:
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceParent(int(trace_id, 16), int(span_id, 16), int(flags, 16))


def parse_tracestate(value: str | None) -> tuple[tuple[str, str], ...]:
    """The (key, value) members of a `tracestate` header, in order; () when it is absent,
    empty, too long, has more than 32 members, repeats a key, or breaks the grammar."""
    if not value or len(value) > MAX_TRACESTATE_CHARS:
        return ()
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    for part in value.split(","):
        part = part.strip(" \t")
        if not part:
            continue  # empty list members are allowed
        match = _MEMBER.fullmatch(part)
        if match is None:
            return ()
        key = match.group(1)
        if key in seen:
            return ()
        seen.add(key)
        members.append((key, match.group(2)))
        if len(members) > MAX_TRACESTATE_MEMBERS:
            return ()
    return tuple(members)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """A version 00 `traceparent` value."""
    return f"00-{trace_id:032x}-{span_id:016x}-{flags & 0xff:02x}"
