"""`python -m bench tracing`: what tracing costs a read, GET /conversations/{id} (scenario 2).

Four SayPIs, started as production starts them, measured in turn (interleaved,
so drift hits them alike), each row against the first:

- off: OTEL_EXPORTER_OTLP_ENDPOINT unset;
- ratio 0.1 and ratio 1.0: parentbased_traceidratio at that ratio (wrk sends
  no traceparent, so the ratio decides), exporting to a local OTLP sink
  (bench/otlp_sink.py, a process that accepts and discards; its CPU is its
  own group, "collector", not SayPI's);
- collector down: ratio 1.0 to an endpoint that refuses connections, so every
  export fails and the queue overflows (spans dropped, requests unaffected).

Per row: requests/s, latency, SayPI's CPU per request, the sink's CPU per
request, and the spans the workers exported and dropped (from /metrics).
Then, without wrk, gunicorn or the machine's noise: the WSGI app of each of
the first three rows built in this process as a worker builds it
(app.server.build_worker_app) and called directly on one thread, in turn,
three times; its CPU per call includes the batch processor's thread
(encoding and sending the spans).
Writes bench-results/tracing.md and tracing.json. BENCH_QUICK=1 for a smoke run.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping
from datetime import UTC, datetime

from bench.servers import Server, python
from bench.session import Bench, machine_info, publish, summarize, with_bench
from bench.settings import BenchSettings
from bench.wsgi_calls import time_calls, wsgi_environs
from harness.services import free_port

SCENARIO = "get"
ROWS = (
    ("off", "tracing off", None),
    ("ratio_0.1", "on, sample ratio 0.1", "0.1"),
    ("ratio_1.0", "on, sample ratio 1.0", "1.0"),
    ("collector_down", "on, ratio 1.0, collector refusing connections", "1.0"),
)


def tracing(env: Mapping[str, str]) -> int:
    settings = BenchSettings.from_env(env)

    def measure(bench: Bench) -> int:
        sink_port = free_port()
        sink = Server("otlp-sink", [python(), "-m", "bench.otlp_sink", str(sink_port)],
                      {"PATH": env.get("PATH", "/usr/bin:/bin")}, sink_port,
                      bench.work / "otlp-sink.log", "/ready", 0)
        try:
            sink.wait_ready()
            bench.extra_roots[sink.process.pid] = "collector"
            down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
            servers: dict[str, Server] = {}
            for key, _title, ratio in ROWS:
                extra = {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}
                if ratio is not None:
                    extra = {"OTEL_EXPORTER_OTLP_ENDPOINT":
                             down if key == "collector_down" else sink.url,
                             "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                             "OTEL_TRACES_SAMPLER_ARG": ratio}
                bench.say(f"{key}: {extra}")
                servers[key] = bench.start("saypi", extra=extra)
                bench.check(servers[key], SCENARIO)
            for server in servers.values():
                bench.measure(server, SCENARIO, settings.warmup_seconds)
            before = {key: span_counts(server) for key, server in servers.items()}
            collected: dict[str, list] = {key: [] for key in servers}
            for rep in range(settings.runs):
                for key, server in servers.items():
                    result = bench.measure(server, SCENARIO, settings.seconds)
                    collected[key].append(result)
                    bench.say(f"  {key:<15} run {rep + 1}/{settings.runs}: "
                              f"{result.rps:8.1f} req/s  p99 {result.latency_ms['p99']:6.2f} ms"
                              f"  errors {result.failed}")
            cpus = os.cpu_count() or 1
            rows = []
            for key, title, ratio in ROWS:
                runs = collected[key]
                summary = summarize(runs, cpus)
                after = span_counts(servers[key])
                collector = [1e6 * (r.cpu_seconds.get("collector_user", 0)
                                    + r.cpu_seconds.get("collector_system", 0)) / r.requests
                             for r in runs if r.requests]
                rows.append({
                    "key": key, "title": title, "ratio": ratio,
                    **{k: summary[k] for k in ("rps", "p50_ms", "p99_ms", "requests", "errors",
                                               "foreign_cpu_pct", "cpu_us_per_request")},
                    "collector_cpu_us_per_request":
                        round(statistics.median(collector), 1) if collector else None,
                    "spans": {name: round(after[name] - before[key][name])
                              for name in after}})
            for server in servers.values():
                bench.stop(server)
            in_process = in_process_rows(bench, sink.url, 3000 if not settings.quick else 500)
        finally:
            sink.stop()
        data = {"generated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "quick": settings.quick, "bench_settings": settings.as_dict(),
                "machine": machine_info(bench), "scenario": SCENARIO, "rows": rows,
                "in_process": in_process}
        return publish("tracing", data, tracing_markdown(data))

    return with_bench(env, settings, measure)


def in_process_rows(bench: Bench, sink_url: str, count: int) -> list[dict]:
    """CPU microseconds per GET /conversations/{id} of the WSGI app alone, per row."""
    from app.ops.logs import new_logger
    from app.server import build_worker_app

    metrics_dir = bench.work / "metrics-tracing-in-process"
    metrics_dir.mkdir(exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    environs = wsgi_environs(bench.files[SCENARIO], 500)
    devnull = open(os.devnull, "w")  # left open: worker threads may log while winding down
    apps = {}
    try:
        for key, title, ratio in ROWS[:3]:
            extra = {"OTEL_EXPORTER_OTLP_ENDPOINT": "" if ratio is None else sink_url,
                     "OTEL_TRACES_SAMPLER_ARG": ratio or "1.0"}
            config = bench.effective_config(extra).replace(
                prometheus_multiproc_dir=str(metrics_dir))
            logger = new_logger(devnull, config.log_level, config.log_format,
                                config.user_secrets, name=f"saypi-{key}")
            apps[key] = (title, *build_worker_app(config, logger, bench.db.dsn))
        cpu: dict[str, list[float]] = {key: [] for key in apps}
        for _ in range(3):
            for key, (_title, app, _resources) in apps.items():
                cpu[key].append(time_calls(app, environs, count)["cpu_us"])
        bench.say("in process: " + ", ".join(f"{key} {min(v):.0f} us" for key, v in cpu.items()))
        return [{"key": key, "title": apps[key][0], "cpu_us": min(values), "calls": count}
                for key, values in cpu.items()]
    finally:
        for _title, _app, resources in apps.values():
            resources.close()


def span_counts(server: Server) -> dict[str, float]:
    """The workers' tracing_spans_exported_total and tracing_spans_dropped_total so far."""
    status, body = server.get("/metrics")
    counts = {"exported": 0.0, "dropped": 0.0}
    if status != 200:
        return counts
    for line in body.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("tracing_spans_exported_total"):
            counts["exported"] += float(value)
        elif name.startswith("tracing_spans_dropped_total"):
            counts["dropped"] += float(value)
    return counts


def tracing_markdown(data: dict) -> str:
    bs = data["bench_settings"]
    rows = data["rows"]
    base = rows[0]
    base_cpu = base["cpu_us_per_request"].get("app") or 0
    out = [f"# What tracing costs GET /conversations/{{id}}, {data['generated_at']}"
           + (" (BENCH_QUICK: a smoke run, not a measurement)" if data["quick"] else ""), "",
           f"{data['machine']['cpus']} CPUs; wrk {bs['wrk_threads']} threads, "
           f"{bs['connections']} connections, {bs['runs']} x {bs['seconds']} s per row "
           "(median), rows interleaved. App CPU is SayPI's (master and workers) per request; "
           "collector CPU is the local OTLP sink's (accepts and discards). Spans are counted "
           "by the workers over the timed runs.", "",
           "| row | req/s | vs off | p50 ms | p99 ms | app CPU us/req | vs off "
           "| sink CPU us/req | spans exported | spans dropped | errors |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        cpu = row["cpu_us_per_request"].get("app") or 0
        rps_delta = 100 * (row["rps"] / base["rps"] - 1) if base["rps"] else 0
        cpu_delta = 100 * (cpu / base_cpu - 1) if base_cpu else 0
        sink = row["collector_cpu_us_per_request"]
        out.append(f"| {row['title']} | {row['rps']:,.0f} | {rps_delta:+.1f} % "
                   f"| {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {cpu:,.0f} "
                   f"| {cpu_delta:+.1f} % | {sink if sink is not None else '-'} "
                   f"| {row['spans']['exported']:,} | {row['spans']['dropped']:,} "
                   f"| {row['errors']} |")
    rows = data.get("in_process") or []
    if rows:
        base_cpu = rows[0]["cpu_us"]
        out += ["", f"In process, without HTTP (the WSGI app on one thread, best of 3 x "
                f"{rows[0]['calls']} calls; CPU includes the span export thread):", "",
                "| row | CPU us/call | vs off |", "|---|---:|---:|"]
        for row in rows:
            delta = row["cpu_us"] - base_cpu
            out.append(f"| {row['title']} | {row['cpu_us']:,.1f} | {delta:+,.1f} us "
                       f"({100 * delta / base_cpu if base_cpu else 0:+.1f} %) |")
    return "\n".join(out) + "\n"
