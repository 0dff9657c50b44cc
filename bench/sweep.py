"""`python -m bench sweep`: SayPI's throughput and tail latency for several worker/thread counts.

For each WEB_CONCURRENCY x THREADS in BENCH_SWEEP (pool max = threads), SayPI
is started as production starts it and scenarios 2 (GET a conversation),
3 (list page) and 4 (POST a line) are measured, interleaved; the first
combination is measured again at the end to show how much the machine
drifted meanwhile. Writes bench-results/sweep.md and sweep.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from bench.session import Bench, interleave, machine_info, publish, with_bench
from bench.settings import BenchSettings

SCENARIOS = ("get", "list", "post_line")


def sweep(env: Mapping[str, str]) -> int:
    settings = BenchSettings.from_env(env)
    rows = []

    def measure(bench: Bench) -> int:
        combos = list(settings.sweep)
        if len(combos) > 1:
            combos.append(combos[0])
        for i, (workers, threads) in enumerate(combos):
            label = f"{workers}x{threads}" + (" (repeat)" if i == len(combos) - 1 and i else "")
            extra = {"WEB_CONCURRENCY": str(workers), "THREADS": str(threads),
                     "DB_POOL_MAX": str(threads)}
            config = bench.effective_config(extra)
            if config.db_pool_min > threads:
                extra["DB_POOL_MIN"] = str(threads)
            bench.say(f"{label}: workers {workers}, threads {threads}, pool max {threads}")
            server = bench.start("saypi", extra=extra)
            results: dict = {}
            interleave(bench, [(key, server, None) for key in SCENARIOS], settings.runs,
                       results)
            bench.stop(server)
            rows.append({"label": label, "workers": workers, "threads": threads,
                         "pool_max": threads,
                         **{key: {k: results[key][k] for k in
                                  ("rps", "p50_ms", "p99_ms", "errors", "foreign_cpu_pct",
                                   "worker_balance", "cpu_us_per_request")}
                            for key in SCENARIOS}})
        data = {"generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "bench_settings": settings.as_dict(), "machine": machine_info(bench),
                "rows": rows}
        return publish("sweep", data, sweep_markdown(data))

    return with_bench(env, settings, measure)


def sweep_markdown(data: dict) -> str:
    bs = data["bench_settings"]
    out = [f"# SayPI worker/thread sweep, {data['generated_at']}", "",
           f"{data['machine']['cpus']} CPUs; wrk {bs['wrk_threads']} threads, "
           f"{bs['connections']} connections, {bs['runs']} x {bs['seconds']} s per scenario "
           f"(median); pool max = threads.", "",
           "| workers x threads | GET req/s | GET p50 | GET p99 | GET app CPU us | list req/s "
           "| list p99 | POST req/s | POST p99 | other CPU |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in data["rows"]:
        g, li, p = row["get"], row["list"], row["post_line"]
        other = max(g["foreign_cpu_pct"], li["foreign_cpu_pct"], p["foreign_cpu_pct"])
        cpu = g["cpu_us_per_request"].get("app") or 0
        out.append(f"| {row['label']} | {g['rps']:,.0f} | {g['p50_ms']:.1f} | {g['p99_ms']:.1f} "
                   f"| {cpu:,.0f} | {li['rps']:,.0f} | {li['p99_ms']:.1f} | {p['rps']:,.0f} "
                   f"| {p['p99_ms']:.1f} | {other:.0f} % |")
    return "\n".join(out) + "\n"
