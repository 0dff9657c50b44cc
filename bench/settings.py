"""The benchmark's knobs, all from environment variables (defaults sized for 2 cores).

BENCH_QUICK=1 is a smoke run: short runs, one of each, small data. Any
variable set explicitly wins over the quick defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

# The production rate-limit policies switched on at a rate no benchmark run can
# exhaust: every request is decided (by the store, or from a worker's lease of
# admissions taken from it), none is refused.
UNBOUNDED_LIMITS = {
    "RATE_LIMIT_USER_PER_MINUTE": "60000000", "RATE_LIMIT_USER_BURST": "1000000",
    "RATE_LIMIT_IP_PER_MINUTE": "60000000", "RATE_LIMIT_IP_BURST": "1000000",
}

# name -> (full default, quick default, help)
KNOBS: dict[str, tuple[str, str, str]] = {
    "BENCH_SECONDS": ("10", "2", "seconds per timed wrk run"),
    "BENCH_RUNS": ("3", "1", "timed runs per scenario (the median is reported)"),
    "BENCH_WARMUP_SECONDS": ("2", "1", "untimed wrk run before each scenario"),
    "BENCH_CONNECTIONS": ("32", "16", "wrk connections (keep-alive)"),
    "BENCH_WRK_THREADS": ("2", "2", "wrk threads"),
    "BENCH_USERS": ("200", "20", "users seeded"),
    "BENCH_CONVERSATIONS": ("10000", "1000", "conversations seeded (spread over the users)"),
    "BENCH_LINES": ("10", "10", "lines per seeded conversation"),
    "BENCH_CAP_LINES": ("1000", "1000", "lines of the conversation at the line cap"),
    "BENCH_LARGE_CONVERSATIONS": ("1000000", "100000",
                                  "conversations in the table for the list-scaling case"),
    "BENCH_MEMORY_REQUESTS": ("100000", "10000", "requests between the two RSS readings"),
    "BENCH_COUNT_REQUESTS": ("300", "100", "requests per scenario in the round-trip count"),
    "BENCH_PHRASES": ("50", "50", "distinct line texts (bounds the distinct renders)"),
    "BENCH_SWEEP": ("2x4,2x8,2x16,3x4,3x8,4x4,4x8", "2x8,4x4",
                    "workers x threads combinations for `python -m bench sweep`"),
    "BENCH_PROFILE_SECONDS": ("15", "5", "py-spy sampling time for `python -m bench profile`"),
}


@dataclass(frozen=True)
class BenchSettings:
    quick: bool
    seconds: int
    runs: int
    warmup_seconds: int
    connections: int
    wrk_threads: int
    users: int
    conversations: int
    lines: int
    cap_lines: int
    large_conversations: int
    memory_requests: int
    count_requests: int
    phrases: int
    sweep: tuple[tuple[int, int], ...]
    profile_seconds: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BenchSettings:
        quick = env.get("BENCH_QUICK", "").strip().lower() in ("1", "true", "yes", "on")
        values: dict[str, object] = {"quick": quick}
        problems = []
        for name, (full, fast, _help) in KNOBS.items():
            raw = env.get(name, fast if quick else full).strip()
            attr = name.removeprefix("BENCH_").lower()
            if name == "BENCH_SWEEP":
                try:
                    parts = [p.strip().lower().split("x") for p in raw.split(",") if p.strip()]
                    values[attr] = tuple((int(w), int(t)) for w, t in parts)
                except ValueError:
                    problems.append(f"{name}: must look like 2x8,4x4, got {raw!r}")
                    values[attr] = ()
                continue
            try:
                value = int(raw)
                if value < 1:
                    raise ValueError
            except ValueError:
                problems.append(f"{name}: must be a positive integer, got {raw!r}")
                value = 1
            values[attr] = value
        if not problems and values["conversations"] < 2 * values["users"]:
            problems.append("BENCH_CONVERSATIONS: must be at least twice BENCH_USERS")
        if not problems and values["large_conversations"] < values["conversations"]:
            problems.append("BENCH_LARGE_CONVERSATIONS: must be at least BENCH_CONVERSATIONS")
        if problems:
            raise SystemExit("bench: " + "; ".join(problems))
        return cls(**values)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def describe() -> str:
    rows = [f"  {name:<28} default {full:<10} quick {fast:<8} {text}"
            for name, (full, fast, text) in KNOBS.items()]
    return "\n".join(rows)
