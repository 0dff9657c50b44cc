"""The fleet's report: bench-results/fleet.md from the figures."""

from __future__ import annotations


def markdown(data: dict) -> str:
    s = data["settings"]
    out = [f"# SayPI fleet, {data['generated_at']}", "",
           f"{s['instances']} instances x {s['workers']} workers x {s['threads']} threads "
           f"behind HAProxy {data['haproxy_version']}; {data['database']}; load: "
           f"{s['clients']} clients, {s['rate']:g} req/s paced (60 % GET conversation, "
           f"20 % list, 20 % POST line with Idempotency-Key, retried with the same key); "
           f"{data['elapsed_seconds']} s in all.", "",
           "| phase | s | requests | 2xx | non-2xx | conn errors | p50 ms | p99 ms | max ms "
           "| writes acked | rows (acked) | lost | dup keys | writes retried by clients "
           "| HAProxy retried |",
           "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["phases"]:
        non2xx = ", ".join(f"{code}: {n}" for code, n in r["statuses"].items()) or "-"
        conn = ", ".join(f"{name}: {n}" for name, n in r["connection_errors"].items()) or "-"
        out.append(f"| {r['phase']} | {r['seconds']:g} | {r['requests']} | {r['ok']} | {non2xx} "
                   f"| {conn} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} "
                   f"| {r['writes_acknowledged']} | {r['rows_for_acknowledged']} "
                   f"| {r['acknowledged_lost']} | {r['keys_with_several_rows']} "
                   f"| {r['writes_retried']} | {r['haproxy_retried']} |")
    if data.get("reads_by_pool"):
        pools = ", ".join(f"{pool} {n}" for pool, n in sorted(data["reads_by_pool"].items()))
        out += ["", f"Users' reads by the pool that served them (db_reads_total of every "
                    f"instance that stopped gracefully or ran to the end): {pools}."]
    out += ["", "| phase | target | met | figure |", "|---|---|---|---|"]
    for t in data["targets"]:
        out.append(f"| {t['phase']} | {t['target']} | {'yes' if t['met'] else '**no**'} "
                   f"| {t['figure']} |")
    out += ["", "Events (seconds into the phase):", ""]
    for r in data["phases"]:
        events = "; ".join(f"{e['at']:g}s {e['event']}" for e in r["events"])
        extra = ""
        if r["haproxy_terminations"]:
            extra = f" HAProxy termination states: {r['haproxy_terminations']}."
        if r["haproxy_no_server"]:
            extra += (f" {r['haproxy_no_server']} answered by HAProxy itself (no server UP: "
                      f"its JSON 503 with Retry-After).")
        if r["unacknowledged"]:
            extra += (f" {r['unacknowledged']} writes given up unacknowledged, "
                      f"{r['unacknowledged_with_a_row']} of them with a row.")
        out.append(f"- **{r['phase']}**: {events or '-'}.{extra}")
    return "\n".join(out) + "\n"
