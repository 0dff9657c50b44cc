"""Load generation with wrk (the Debian package), always on 127.0.0.1 and bounded in time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness.processes import apt_install

LUA = Path(__file__).resolve().parent / "requests.lua"


class WrkUnavailable(Exception):
    pass


def ensure_wrk(say) -> str:
    """wrk's path; installs the Debian package when missing and we are root with apt-get."""
    try:
        return apt_install("wrk", lambda: shutil.which("wrk") or (
            "/usr/bin/wrk" if os.path.exists("/usr/bin/wrk") else None), say)
    except RuntimeError as exc:
        raise WrkUnavailable(str(exc)) from None


def write_requests(path: Path, requests: list[tuple[str, str, str, str]]) -> Path:
    """(method, path, token, body) per line, tab separated, for requests.lua."""
    with open(path, "w") as handle:
        for method, target, token, body in requests:
            if any("\t" in part or "\n" in part for part in (method, target, token, body)):
                raise ValueError("request fields must not contain tabs or newlines")
            handle.write(f"{method}\t{target}\t{token}\t{body}\n")
    return path


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    errors: dict
    latency_ms: dict  # mean, stdev, min, max, p50, p75, p90, p99, p999
    foreign_cpu_seconds: float = 0.0
    cpu_seconds: dict = field(default_factory=dict)
    worker_cpu_seconds: dict = field(default_factory=dict)
    target_rps: float | None = None

    def as_dict(self) -> dict:
        return {"requests": self.requests, "seconds": round(self.seconds, 3),
                "rps": round(self.rps, 1), "errors": self.errors,
                "latency_ms": self.latency_ms,
                "foreign_cpu_seconds": round(self.foreign_cpu_seconds, 2),
                "cpu_seconds": self.cpu_seconds,
                "worker_cpu_seconds": self.worker_cpu_seconds,
                "target_rps": None if self.target_rps is None else round(self.target_rps, 1)}

    @property
    def failed(self) -> int:
        return sum(self.errors.values())


def run_wrk(wrk: str, url: str, request_file: Path, seconds: int, connections: int,
            threads: int, rate: float | None = None) -> WrkResult:
    """One wrk run of `seconds` against url (127.0.0.1 only); rate paces the total load."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("the benchmark sends load to 127.0.0.1 only")
    threads = max(1, min(threads, connections))
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
            "--timeout", "10s", "-s", str(LUA), url, "--", str(request_file)]
    if rate:
        argv.append(f"{rate / threads:.3f}")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-2000:]}")
    data = json.loads(line.removeprefix("BENCH_RESULT "))
    elapsed = data["duration_us"] / 1e6
    latency = {k: round(v / 1000.0, 3) for k, v in data["latency_us"].items()}
    return WrkResult(requests=data["requests"], seconds=elapsed,
                     rps=data["requests"] / elapsed if elapsed else 0.0,
                     errors=data["errors"], latency_ms=latency, target_rps=rate)
