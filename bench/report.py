"""The benchmark's outputs: latest.json (every figure), latest.md (tables), latest.png (chart).

Everything here is computed from the JSON, so `python -m bench report`
re-renders the Markdown and the chart from a saved latest.json.
"""

from __future__ import annotations

import json
from pathlib import Path

ORDER = ("hello", "ref_get", "ref_get_cap", "animals", "get", "list", "post_line", "post_batch",
         "mix",
         "get_paced", "list_paced", "get_cap", "list_large")
SAYPI_MAIN = ("animals", "get", "list", "post_line", "post_batch", "mix", "get_cap",
              "list_large")


def _ref_for(key: str) -> str:
    return "ref_get_cap" if key == "get_cap" else "ref_get"


def ratios(data: dict) -> dict[str, dict[str, float | None]]:
    sc = data.get("scenarios", {})
    out = {}
    hello = sc.get("hello", {}).get("rps")
    for key, value in sc.items():
        if key.endswith("_paced"):
            out[key] = {"hello": None, "ref": None}
            continue
        ref = sc.get(_ref_for(key), {}).get("rps")
        out[key] = {"hello": round(value["rps"] / hello, 3) if hello else None,
                    "ref": round(value["rps"] / ref, 3) if ref else None}
    return out


def targets(data: dict) -> list[dict]:
    sc = data.get("scenarios", {})
    r = ratios(data)
    rows = []

    def add(name, measured, threshold, ok, note=""):
        rows.append({"target": name, "measured": measured, "threshold": threshold,
                     "ok": ok, "note": note})

    if "get" in sc and "ref_get" in sc:
        v = r["get"]["ref"]
        add("GET /conversations/{id} throughput vs bare same-query reference", f"{v:.2f}x",
            ">= 0.90x", v >= 0.90, _cpu_note(sc["get"], sc["ref_get"]))
    if "get" in sc:
        rt = sc["get"].get("round_trips")
        add("GET /conversations/{id} database round trips per request",
            "?" if rt is None else f"{rt:.2f}", "exactly 1", None if rt is None else rt == 1.0)
    if "animals" in sc and "hello" in sc:
        v = r["animals"]["hello"]
        add("GET /animals throughput vs bare Flask hello", f"{v:.2f}x", ">= 0.80x", v >= 0.80,
            _cpu_note(sc["animals"], sc["hello"]))
    if "list" in sc and "list_large" in sc:
        p50 = sc["list_large"]["p50_ms"] / sc["list"]["p50_ms"]
        p99 = sc["list_large"]["p99_ms"] / sc["list"]["p99_ms"]
        rps = sc["list"]["rps"] / sc["list_large"]["rps"]
        a = sc["list"].get("cpu_us_per_request", {})
        b = sc["list_large"].get("cpu_us_per_request", {})
        cpu = ""
        if a.get("app") and b.get("app") and a.get("postgres") and b.get("postgres"):
            cpu = (f"; CPU per request 1M vs 10k: app {b['app'] / a['app']:.2f}x, PostgreSQL "
                   f"backends {b['postgres'] / a['postgres']:.2f}x")
        add("list page latency, 1M rows vs 10k rows (p50, full load)", f"{p50:.2f}x",
            "<= 1.2x", p50 <= 1.2, f"p99 {p99:.2f}x, inverse throughput {rps:.2f}x{cpu}")
    for key, name in (("get_paced", "scenario 2"), ("list_paced", "scenario 3")):
        if key in sc:
            v = sc[key]["p99_ms"]
            add(f"p99 at half of max throughput, {name}", f"{v:.1f} ms", "< 25 ms", v < 25,
                f"offered {sc[key]['target_rps']:.0f} req/s, achieved {sc[key]['rps']:.0f}, "
                f"p50 {sc[key]['p50_ms']:.1f} ms, other CPU {sc[key]['foreign_cpu_pct']:.0f} %")
    single, batch = sc.get("post_line", {}), sc.get("post_batch", {})
    one = single.get("cpu_us_per_request", {}).get("app")
    many = batch.get("cpu_us_per_request", {}).get("app")
    if one and many:
        from bench.scenarios import BATCH_LINES

        per_line = many / BATCH_LINES
        add(f"app CPU per line, {BATCH_LINES}-line batch vs single POST line",
            f"{per_line / one:.2f}x", "< 1x", per_line < one,
            f"{per_line:,.0f} us vs {one:,.0f} us a line; lines/s {batch['rps'] * BATCH_LINES:,.0f}"
            f" vs {single['rps']:,.0f}; round trips per batch {batch.get('round_trips', '?')}")
    mem = data.get("memory")
    if mem and mem.get("max_growth_pct") is not None:
        v = mem["max_growth_pct"]
        add(f"worker RSS growth over {mem['requests']} requests (worst worker)", f"{v:.2f} %",
            "< 5 %", v < 5)
    cache = data.get("render_cache")
    if cache and cache.get("hit_rate") is not None:
        v = cache["hit_rate"]
        add("render cache hit rate in scenario 2", f"{100 * v:.2f} %", "near 100 % (>= 99 %)",
            v >= 0.99)
    return rows


def _total_cpu(v: dict) -> float:
    c = v.get("cpu_us_per_request", {})
    return sum(c.get(k) or 0 for k in ("app", "postgres", "wrk_user", "wrk_system"))


def _cpu_note(mine: dict, ref: dict) -> str:
    a = mine.get("cpu_us_per_request", {}).get("app")
    b = ref.get("cpu_us_per_request", {}).get("app")
    if not a or not b:
        return ""
    total_a, total_b = _total_cpu(mine), _total_cpu(ref)
    return (f"app CPU per request {a:,.0f} us vs {b:,.0f} us ({b / a:.2f}x); CPU-bound "
            f"estimate from app + PostgreSQL + wrk CPU per request: {total_b / total_a:.2f}x")


def noise(data: dict) -> float:
    values = [v.get("foreign_cpu_pct", 0) for v in data.get("scenarios", {}).values()]
    return max(values) if values else 0.0


def _fmt(value, digits=1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def markdown(data: dict) -> str:
    sc = data.get("scenarios", {})
    r = ratios(data)
    bs = data.get("bench_settings", {})
    ss = data.get("server_settings", {})
    m = data.get("machine", {})
    seed = data.get("seed", {})
    out = [f"# SayPI benchmark, {data.get('generated_at', '?')}"
           + (" (BENCH_QUICK smoke run: not for comparison)" if data.get("quick") else ""), ""]
    out.append(f"- Machine: {m.get('cpus')} CPUs ({m.get('cpu_model', '?')}), Linux "
               f"{m.get('kernel', '?')}, Python {m.get('python', '?')}, PostgreSQL "
               f"{m.get('postgres', '?')} ({data.get('database', '?')}), {m.get('wrk', 'wrk')}; "
               f"load average at start {_loadavg(m)}.")
    out.append(f"- Servers (SayPI and both references): gunicorn gthread, "
               f"{ss.get('workers')} workers x {ss.get('threads')} threads, pool "
               f"{ss.get('db_pool_min')}-{ss.get('db_pool_max')} per worker, reuse_port "
               f"{ss.get('reuse_port')}; SayPI with APP_ENV=production, rate limits off, "
               f"{ss.get('log_format')} access log at {ss.get('log_level')}.")
    out.append(f"- Load: wrk on 127.0.0.1, {bs.get('wrk_threads')} threads, "
               f"{bs.get('connections')} keep-alive connections, {bs.get('runs')} runs of "
               f"{bs.get('seconds')} s per scenario after a {bs.get('warmup_seconds')} s "
               f"warm-up, runs of related scenarios interleaved; medians of the runs.")
    out.append(f"- Data: {seed.get('users')} users, {_fmt(seed.get('conversations'))} "
               f"conversations, {_fmt(seed.get('lines'))} lines "
               f"({seed.get('lines_per_conversation')} per conversation, one of "
               f"{seed.get('cap_lines')}), "
               f"{seed.get('distinct_render_inputs')} distinct render inputs.")
    worst = noise(data)
    if worst > 10:
        out.append("")
        out.append(f"**Warning: processes outside the benchmark used up to {worst:.0f} % of the "
                   f"machine's CPU during some runs (column \"other CPU\").** Absolute figures "
                   f"are depressed and tail latencies inflated; ratios between interleaved runs "
                   f"and CPU per request hold better. Rerun on a quiet machine to judge targets.")
    out.append("")
    out.append("## Results")
    out.append("")
    out.append("| scenario | req/s | x hello | x same-query ref | p50 ms | p99 ms | p99.9 ms "
               "| DB round trips/req | app CPU us/req | PG CPU us/req | errors | other CPU "
               "| worker balance |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in ORDER:
        if key not in sc:
            continue
        v = sc[key]
        rt = v.get("round_trips")
        rps = _fmt(v["rps"])
        if v.get("target_rps"):
            rps += f" (of {_fmt(v['target_rps'], 0)} offered)"
        out.append(
            f"| {v['title']} | {rps} | {_ratio(r[key]['hello'])} | {_ratio(r[key]['ref'])} "
            f"| {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['p999_ms']:.2f} "
            f"| {'-' if rt is None else f'{rt:.2f}'} | {_cpu(v, 'app')} | {_cpu(v, 'postgres')} "
            f"| {v['errors']} "
            f"| {v['foreign_cpu_pct']:.0f} % | {v['worker_balance']:.2f} |")
    out.append("")
    out.append("## Targets")
    out.append("")
    out.append("| target | measured | wanted | status | detail |")
    out.append("|---|---:|---|---|---|")
    for t in targets(data):
        status = {True: "PASS", False: "FAIL", None: "?"}[t["ok"]]
        out.append(f"| {t['target']} | {t['measured']} | {t['threshold']} | {status} "
                   f"| {t['note']} |")
    out.append("")
    out += _scaling(data)
    out += scale_markdown(data.get("scale", {}))
    out += _memory(data)
    out += _cache(data)
    out += _statements(data)
    out += _checks(data)
    return "\n".join(out) + "\n"


def _cpu(v: dict, group: str) -> str:
    value = v.get("cpu_us_per_request", {}).get(group)
    return "-" if value is None else f"{value:,.0f}"


def _loadavg(m: dict) -> str:
    values = m.get("loadavg_at_start")
    return " ".join(f"{x:.2f}" for x in values) if values else "?"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _scaling(data: dict) -> list[str]:
    sc = data.get("scenarios", {})
    out = ["## Scaling", ""]
    if "list" in sc and "list_large" in sc:
        a, b = sc["list"], sc["list_large"]
        large = data.get("large_seed", {})
        out.append(f"- List page (scenario 3): {_fmt(data.get('seed', {}).get('conversations'))} "
                   f"conversations: {a['rps']:,.0f} req/s, p50 {a['p50_ms']:.2f} ms, p99 "
                   f"{a['p99_ms']:.2f} ms; {_fmt(large.get('conversations'))} conversations "
                   f"({_fmt(large.get('per_reader_user'))} for each reading user): "
                   f"{b['rps']:,.0f} req/s, p50 {b['p50_ms']:.2f} ms, p99 {b['p99_ms']:.2f} ms. "
                   f"Ratio p50 {b['p50_ms'] / a['p50_ms']:.2f}x, p99 "
                   f"{b['p99_ms'] / a['p99_ms']:.2f}x.")
        hello_after = data.get("hello_after_growth")
        if hello_after and "hello" in sc:
            out.append(f"- Drift check: the hello reference ran {hello_after['rps']:,.0f} req/s "
                       f"next to the 1M runs against {sc['hello']['rps']:,.0f} earlier "
                       f"({hello_after['rps'] / sc['hello']['rps']:.2f}x).")
    if "get_cap" in sc and "get" in sc:
        a, b = sc["get"], sc["get_cap"]
        ref = sc.get("ref_get_cap")
        line = (f"- GET of a conversation at the 1000-line cap: {b['rps']:,.0f} req/s, p50 "
                f"{b['p50_ms']:.2f} ms ({a['rps'] / b['rps']:.1f}x slower than 10 lines)")
        if ref:
            line += (f"; the bare reference serves it at {ref['rps']:,.0f} req/s, so SayPI is "
                     f"{b['rps'] / ref['rps']:.2f}x of it")
        out.append(line + ".")
    out.append("")
    return out


def _memory(data: dict) -> list[str]:
    mem = data.get("memory")
    if not mem:
        return []
    out = ["## Memory", "",
           f"Resident memory of each SayPI worker (/proc/PID/statm) when it had just "
           f"started, then warm, and after {mem['requests']:,} more requests: "
           f"{mem['workload']}. Same worker processes throughout: {mem['same_workers']}.",
           "", "| worker | RSS fresh MB | RSS before MB | RSS after MB | growth |",
           "|---|---:|---:|---:|---:|"]
    for i, w in enumerate(mem["workers"], 1):
        out.append(f"| {i} | {w['rss_fresh_mb']} | {w['rss_before_mb']} | {w['rss_after_mb']} "
                   f"| {w['growth_pct']} % |")
    if mem.get("timeline"):
        out += ["", "RSS along the way (a leak grows with requests; a high-water mark jumps "
                "once, e.g. with the first concurrent large responses, then stays):", "",
                "| after | requests since the warm reading | RSS per worker, MB |",
                "|---|---:|---|"]
        for point in mem["timeline"]:
            out.append(f"| {point['after']} | {point['requests']:,} "
                       f"| {', '.join(str(x) for x in point['rss_mb'])} |")
    out.append("")
    return out


def _cache(data: dict) -> list[str]:
    cache = data.get("render_cache")
    if not cache:
        return []
    rate = cache.get("hit_rate")
    return ["## Render cache", "",
            f"From /metrics (cowsay_render_cache_hits_total / misses_total) around the "
            f"{cache['window']}: {cache['hits']:,.0f} hits, {cache['misses']:,.0f} misses, hit "
            f"rate {'-' if rate is None else f'{100 * rate:.2f} %'}. Since start: "
            f"{cache['cumulative_hits']:,.0f} hits, {cache['cumulative_misses']:,.0f} misses.",
            ""]


def _statements(data: dict) -> list[str]:
    counts = data.get("round_trips")
    if not counts:
        return []
    out = ["## Database round trips, statement by statement", "",
           "Counted by a PostgreSQL wire-protocol proxy (one Query or one Sync = one round "
           "trip) in an untimed phase: one worker, the pool's background checks off, each "
           "scenario's requests sent twice and the second pass counted (first pass, with "
           "cold per-worker caches and statements not yet prepared, in brackets).", ""]
    for key, value in counts.items():
        if not value.get("statements"):
            continue
        out.append(f"- **{key}**: {value['per_request']:.2f} per request "
                   f"({value.get('cold_per_request', 0):.2f} first pass; statuses "
                   f"{value.get('statuses')})")
        for sql, per in value["statements"].items():
            out.append(f"  - {per:.2f} x `{sql}`")
    out.append("")
    return out


def _checks(data: dict) -> list[str]:
    out = ["## Checks", ""]
    same = data.get("same_body_as_reference")
    if same:
        out.append(f"- SayPI's and the read reference's bodies for GET /conversations/{{id}}: "
                   f"{same['identical']} of {same['compared']} identical byte for byte.")
    q = data.get("query_matches_reference")
    out.append(f"- SayPI runs the reference's statement text: "
               f"{'unknown' if q is None else 'yes' if q else 'no (SayPI changed its query)'}.")
    for note in data.get("notes", []):
        out.append(f"- {note}")
    out.append(f"- Whole benchmark: {data.get('elapsed_seconds', '?')} s.")
    out.append("")
    return out


def chart(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = data.get("scenarios", {})
    r = ratios(data)
    keys = [k for k in SAYPI_MAIN if k in sc]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    y = range(len(keys))
    h = [r[k]["hello"] or 0 for k in keys]
    ref = [r[k]["ref"] or 0 for k in keys]
    left.barh([i + 0.2 for i in y], h, height=0.4, label="x bare Flask hello")
    left.barh([i - 0.2 for i in y], ref, height=0.4, label="x bare same-query reference")
    left.axvline(0.9, color="grey", linestyle="--", linewidth=1,
                 label="target 0.90 (GET vs same-query ref)")
    left.axvline(0.8, color="grey", linestyle=":", linewidth=1,
                 label="target 0.80 (/animals vs hello)")
    left.set_yticks(list(y), [sc[k]["title"] for k in keys], fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("throughput ratio (median of runs)")
    left.set_title("SayPI throughput relative to the references")
    left.legend(fontsize=8, loc="lower right")
    lat_keys = [k for k in ORDER if k in sc]
    x = range(len(lat_keys))
    right.bar([i - 0.2 for i in x], [sc[k]["p50_ms"] for k in lat_keys], width=0.4, label="p50")
    right.bar([i + 0.2 for i in x], [sc[k]["p99_ms"] for k in lat_keys], width=0.4, label="p99")
    right.axhline(25, color="grey", linestyle="--", linewidth=1, label="25 ms")
    right.set_yscale("log")
    right.set_xticks(list(x), lat_keys, rotation=45, ha="right", fontsize=8)
    right.set_ylabel("latency, ms (log scale)")
    right.set_title("latency percentiles (paced rows: half of max throughput)")
    right.legend(fontsize=8)
    fig.suptitle(f"SayPI benchmark {data.get('generated_at', '')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def finish(data: dict, results_dir: Path) -> None:
    results_dir.mkdir(exist_ok=True)
    data["targets"] = targets(data)
    (results_dir / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    (results_dir / "latest.md").write_text(markdown(data))
    try:
        chart(data, results_dir / "latest.png")
    except ImportError:
        print("bench: matplotlib is not installed, no chart (pip install -e '.[bench]')")


def rerender(results_dir: Path) -> int:
    path = results_dir / "latest.json"
    if not path.exists():
        print("bench: no bench-results/latest.json yet; run `make bench` first")
        return 1
    data = json.loads(path.read_text())
    finish(data, results_dir)
    print(markdown(data))
    return 0


def scale_markdown(result: dict) -> list[str]:
    """The "Scaling past one database" section (bench/scale.py's rows), in its rows' order."""
    rows = result.get("rows", {})
    if not rows:
        return []
    out = ["## Scaling past one database", "",
           f"On {result.get('where')}, PostgreSQL {result.get('postgres')}. CPU us per "
           "request by process group; round trips are statements the primary received per "
           "request (wire proxy, one worker, second pass).", "",
           "| scenario | req/s | x same-query ref | p50 ms | p99 ms | primary round trips/req "
           "| redis calls/req | app CPU us/req | primary PG CPU us/req | replica PG CPU us/req "
           "| redis CPU us/req | errors | other CPU |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in rows.values():
        cpu = v["cpu_us_per_request"]

        def fmt(value):
            return "-" if value is None else f"{value:,.0f}"

        out.append(f"| {v['title']} | {v['rps']:,.1f} | {v['x_ref']:.2f} | {v['p50_ms']:.2f} "
                   f"| {v['p99_ms']:.2f} | {v.get('primary_round_trips', '-')} "
                   f"| {v.get('redis_calls', '-')} | {fmt(cpu['app'])} | {fmt(cpu['primary'])} "
                   f"| {fmt(cpu['replica'])} | {fmt(cpu['redis'])} | {v['errors']} "
                   f"| {v['foreign_cpu_pct']:.0f} % |")
    out.append("")
    targets = scale_targets(result)
    if targets:
        out += ["| target | measured | wanted | status |", "|---|---:|---|---|"]
        for name, measured, wanted, ok in targets:
            out.append(f"| {name} | {measured} | {wanted} | {'PASS' if ok else 'FAIL'} |")
        out.append("")
    return out


def scale_targets(result: dict) -> list[tuple[str, str, str, bool]]:
    rows = result.get("rows", {})
    if not {"scale_redis", "scale_replica", "scale_ref"} <= set(rows):
        return []
    redis, replica = rows["scale_redis"], rows["scale_replica"]
    ref_pg = rows["scale_ref"]["cpu_us_per_request"]["primary"] or 0.0
    replica_pg = replica["cpu_us_per_request"]["primary"] or 0.0
    return [
        ("GET with rate limits on, Redis store, vs the same-query reference",
         f"{redis['x_ref']:.2f}x", ">= 0.90x", redis["x_ref"] >= 0.90),
        ("PostgreSQL round trips per GET, Redis store",
         f"{redis.get('primary_round_trips', 0):.2f}", "exactly 1",
         round(redis.get("primary_round_trips", 0), 2) == 1.0),
        ("primary PG CPU per GET with a replica (users with no recent write)",
         f"{replica_pg:.0f} us (reference on the primary: {ref_pg:.0f} us)",
         "about 0 (under 5 % of the reference's)",
         ref_pg > 0 and replica_pg < 0.05 * ref_pg),
    ]


def heavy_markdown(result: dict) -> list[str]:
    """The "One heavy user" section (bench/heavy.py's rows)."""
    rows = result.get("rows", {})
    if not rows:
        return []
    cpus = result.get("cpus")
    out = ["## One heavy user", "",
           f"One user, {result.get('clients')} keep-alive clients, reading in turn "
           f"{result.get('conversations')} conversations of {result.get('lines')} long random "
           "lines (more distinct renders than a worker's render cache holds), production "
           "limits (600 requests a minute, burst 60), state in PostgreSQL. CPU share: the "
           f"SayPI processes' CPU time over the run's wall time and the machine's {cpus} "
           "cores (target: at most 25 %). `charged`: renders that missed the cache cost "
           "admissions (RATE_LIMIT_RENDERS_PER_ADMISSION, default); `uncharged`: set to 0.",
           "", "| server: load | 200/s | 429/s | app cores | CPU share | PG cores | p50 ms "
           "| p99 ms | other CPU s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in rows.items():
        out.append(f"| {name} | {v['ok_per_s']:.2f} | {v['refused_per_s']:,.1f} "
                   f"| {v['app_cores']:.2f} | {v['cpu_share_pct']:.1f} % "
                   f"| {v['postgres_cores']:.2f} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} "
                   f"| {v['other_cpu_seconds']:.1f} |")
    out.append("")
    demand = result.get("demand", {})
    if demand:
        out += ["At the limit (10 requests a second offered), from CPU per request: a read's "
                "CPU from the uncharged run at the limit, a refusal's from the charged unpaced "
                "run, the reads let through from the charged run at the limit. On a busy "
                "machine the wall-clock shares above understate what an idle one would give.",
                "", "| lines | CPU ms per read | CPU ms per 429 | reads/s let through charged "
                "| share uncharged | share charged |", "|---|---:|---:|---:|---:|---:|"]
        for kind, v in demand.items():
            out.append(f"| {kind} | {v['cpu_ms_per_read']:.1f} | {v['cpu_ms_per_refusal']:.2f} "
                       f"| {v['charged_reads_per_s']:.2f} | {v['uncharged_share_pct']:.1f} % "
                       f"| {v['charged_share_pct']:.1f} % |")
        out.append("")
    overhead = result.get("overhead", {})
    if overhead:
        out += ["Cached reads (scenario 2 and the 1000-line conversation), rate limits on and "
                "unbounded, renders charged (`charged`) or not (`uncharged`, as before the "
                "charge existed):", "",
                "| scenario, server | req/s | p99 ms | app CPU us/req | errors |",
                "|---|---:|---:|---:|---:|"]
        for name, v in overhead.items():
            out.append(f"| {name} | {v['rps']:,.1f} | {v['p99_ms']:.2f} "
                       f"| {v['app_cpu_us_per_request']:,.0f} | {v['errors']} |")
        out.append("")
    return out
