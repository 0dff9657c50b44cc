"""Webhooks' objects and arithmetic: endpoints, deliveries, which events match, when to retry.

No I/O: the relay and the API call these with the clock and the randomness they were given,
so the retry schedule, the breaker and the three-day rule are tested with a clock a test
controls. docs/webhooks.md tells the whole story.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import NamedTuple

ENDPOINT, DELIVERY = "we", "wd"
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
# The contract's schedule: after the first attempt, about 5 s, 5 min, 30 min, 2 h, 5 h,
# then 10 h three times; then the delivery is given up.
RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000, 36000)
JITTER = 0.2  # each wait is the schedule's +- 20 %
SECRET_OVERLAP = timedelta(hours=24)  # a rotated-out secret signs beside the new one this long
DISABLE_AFTER = timedelta(days=3)
MAX_RETRY_AFTER = 36000.0  # a receiver's Retry-After is honoured up to the longest wait

_PATTERN = re.compile(r"[a-z]+(\.[a-z_]+|\.\*)?|\*")


class Endpoint(NamedTuple):
    id: int  # rid: we_<hex>
    url: str
    events: tuple[str, ...]
    description: str | None
    disabled: bool
    disabled_reason: str | None
    created_at: datetime


class Delivery(NamedTuple):
    id: int  # rid: wd_<hex>
    event_id: str
    attempt: int
    status: str  # pending | succeeded | failed
    response_status: int | None
    error: str | None
    duration_ms: int | None
    next_attempt_at: datetime | None
    created_at: datetime


class Claimed(NamedTuple):
    """A delivery a relay has claimed for one attempt, with what it needs to make it."""

    id: int  # the row's own id
    claim: int  # this attempt's token: only its outcome is recorded
    attempt: int  # 1 for the first
    endpoint_id: int
    url: str
    event_id: str
    body: str
    secrets: tuple[str, ...]  # the endpoint's current secret, then the previous one
    probe: bool  # the breaker was open: this attempt is its one probe
    created_at: datetime  # when the event was fanned out to this endpoint


class Claims(NamedTuple):
    """What one claim took."""

    claimed: list[Claimed]  # soonest due first
    due_in: float | None  # with none claimed: seconds until the next is due (None: nothing)


class Recorded(NamedTuple):
    """What recording an attempt's outcome did."""

    recorded: bool  # False: the lease passed and another attempt took it over (or it is gone)
    disabled: bool  # this failure disabled the endpoint
    released: bool = False  # this success closed a breaker: what it held back is due now


class Outcome(NamedTuple):
    """What an attempt came to."""

    succeeded: bool
    response_status: int | None
    error: str | None
    duration_ms: int
    retry_after: float | None = None  # the receiver's Retry-After, seconds
    gone: bool = False  # 410: disable the endpoint at once


def new_secret() -> str:
    """`whsec_` and the base64 of 32 random bytes (Standard Webhooks' form)."""
    return SECRET_PREFIX + base64.b64encode(random.SystemRandom().randbytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secrets: Sequence[str], msg_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header: `v1,<base64 HMAC-SHA256>` per secret, space separated."""
    content = f"{msg_id}.{timestamp}.{body}".encode()
    return " ".join(
        "v1," + base64.b64encode(hmac.new(secret_bytes(s), content, hashlib.sha256).digest())
        .decode() for s in secrets)


def pattern_ok(pattern: str, types: Sequence[str]) -> bool:
    """`*`, an event type, or a resource's prefix with `*` (`line.*`)."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return any(t.startswith(pattern[:-1]) for t in types)
    return pattern in types and bool(_PATTERN.fullmatch(pattern))


def matches(patterns: Sequence[str], event_type: str) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == event_type or (
                pattern.endswith(".*") and event_type.startswith(pattern[:-1])):
            return True
    return False


def retry_delay(attempt: int, schedule: Sequence[float], rng: random.Random,
                retry_after: float | None = None) -> float | None:
    """Seconds until the next attempt after attempt number `attempt` failed (None: give up).

    The schedule's wait with jitter; a receiver's Retry-After when it is longer.
    """
    if attempt > len(schedule):
        return None
    wait = schedule[attempt - 1] * (1 + rng.uniform(-JITTER, JITTER))
    if retry_after is not None:
        wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
    return wait


def disable_reason(failing_since: datetime | None, now: datetime,
                   after: timedelta = DISABLE_AFTER) -> str | None:
    """Why an endpoint failing since `failing_since` is disabled now, or None."""
    if failing_since is not None and now - failing_since >= after:
        hours = int(after.total_seconds() // 3600)
        return f"Every delivery failed for {hours} hours."
    return None


GONE_REASON = "The endpoint answered 410 Gone."


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why a delivery must not go to this IP address, or None."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if allow_private:
        return None
    # 6to4 (2002::/16) and Teredo (2001::/32) addresses carry IPv4 ones: each is checked too.
    carried: list[ipaddress.IPv4Address] = []
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.sixtofour is not None:
            carried.append(ip.sixtofour)
        if ip.teredo is not None:
            carried.extend(ip.teredo)
    for inner in (ip, *carried):
        if inner.is_loopback or inner.is_private or inner.is_link_local or inner.is_multicast \
                or inner.is_unspecified or inner.is_reserved or not inner.is_global:
            shown = f"{ip}" if inner is ip else f"{ip} (carrying {inner})"
            return f"resolves to {shown}, a loopback, private, link-local, multicast or " \
                   f"reserved address"
    return None


_NUMBER_PART = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
NUMERIC_HOST_PROBLEM = "must name its host, or give an IPv4 address as four decimal numbers"


def host_form_problem(host: str) -> str | None:
    """A host written as a number other than a plain dotted quad (`2130706433`,
    `0177.0.0.1`, `0x7f.1`): refused, as resolvers read such forms differently."""
    parts = host.rstrip(".").split(".")
    if not all(_NUMBER_PART.fullmatch(part) for part in parts):
        return None
    try:
        canonical = str(ipaddress.IPv4Address(host)) == host
    except ValueError:
        canonical = False
    return None if canonical else NUMERIC_HOST_PROBLEM
