"""`python -m bench profile`: where a SayPI worker's CPU goes under scenario 2 (GET a conversation).

SayPI is started as in the benchmark, wrk drives scenario 2 at full load, and
py-spy (pip install py-spy) samples every worker at once without pausing
them (--nonblocking), idle threads excluded. The samples are grouped by the
layer that spends them (gunicorn, werkzeug, flask, SayPI's middleware,
logging, metrics, psycopg, ...) and by function. Writes
bench-results/profile-get.md, profile-get.json and, when py-spy can,
profile-get.svg (a flame graph of one worker).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from bench.session import RESULTS, Bench, publish, with_bench
from bench.settings import BenchSettings
from bench.wrk import LUA
from bench.wsgi_calls import call, time_calls, wsgi_environs
from harness import ROOT

# First match wins, walking from the sampled frame towards the root; stdlib
# frames with no rule of their own count for the layer that called them.
LAYERS = (
    ("logging (access log, JSON formatter, redaction)",
     ("pythonjsonlogger", "/logging/", "app/ops/logs.py")),
    ("metrics (prometheus_client)", ("prometheus_client", "app/ops/metrics.py")),
    ("psycopg_pool", ("psycopg_pool",)),
    ("psycopg", ("psycopg/", "psycopg_binary")),
    ("marshmallow (dump)", ("marshmallow",)),
    ("json encode", ("json/",)),
    ("cowsay render / cache", ("app/cowsay/",)),
    ("SayPI middleware", ("app/http/envelope.py",)),
    ("SayPI respond (JSON, ETag)", ("app/http/respond.py",)),
    ("SayPI auth, tokens, ids", ("app/http/auth.py", "app/http/tokens.py", "app/domain/ids.py",
                                 "hmac.py")),
    ("SayPI handler and repository", ("app/api/", "app/store/", "app/store/db.py",
                                      "app/domain/models.py")),
    ("SayPI other", ("app/", "routes.py")),
    ("werkzeug", ("werkzeug",)),
    ("flask", ("flask",)),
    ("gunicorn (HTTP parsing, gthread loop, socket I/O)", ("gunicorn",)),
)


def _frame_file(frame: str) -> str:
    start = frame.rfind("(")
    return frame[start + 1:-1] if start >= 0 and frame.endswith(")") else ""


def _frame_name(frame: str) -> str:
    start = frame.rfind(" (")
    name = frame[:start] if start >= 0 else frame
    path = _frame_file(frame).rsplit(":", 1)[0]
    for marker in ("site-packages/", "python3.11/", "/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def layer_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        path = _frame_file(frame)
        for layer, needles in LAYERS:
            if any(n in path for n in needles):
                return layer
    return "other (stdlib, interpreter)"


def analyse(raw_files: list[Path]) -> dict:
    layers: Counter = Counter()
    self_time: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for path in raw_files:
        for line in path.read_text(errors="replace").splitlines():
            stack_text, _, count_text = line.rpartition(" ")
            if not stack_text or not count_text.isdigit():
                continue
            count = int(count_text)
            stack = [f for f in stack_text.split(";")
                     if not f.startswith(("process ", "thread ")) and "(" in f]
            if not stack:
                continue
            total += count
            layers[layer_of(stack)] += count
            self_time[_frame_name(stack[-1])] += count
            for name in {_frame_name(f) for f in stack}:
                inclusive[name] += count
    pct = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {"samples": total,
            "layers": [(k, pct(v)) for k, v in layers.most_common()],
            "self": [(k, pct(v)) for k, v in self_time.most_common(25)],
            "inclusive": [(k, pct(v)) for k, v in inclusive.most_common(40)]}


def _path_prefixes() -> list[str]:
    import site
    import sysconfig

    prefixes = {str(ROOT) + "/", sysconfig.get_paths()["purelib"] + "/",
                sysconfig.get_paths()["stdlib"] + "/", *(p + "/" for p in site.getsitepackages())}
    return sorted(prefixes, key=len, reverse=True)


def _scrub_paths(text: str) -> str:
    """Outputs name files relative to the repository or site-packages, not by machine path."""
    for prefix in _path_prefixes():
        text = text.replace(prefix, "")
    return "\n".join(line for line in text.splitlines() if not line.startswith("Profile at "))


def in_process(bench: Bench, count: int) -> dict:
    """SayPI's and the references' WSGI apps called directly, without any HTTP server.

    SayPI's app is built by app.server.build_worker_app, as in a worker (its
    access log goes to the null device instead of a pipe). Gives the app's own
    cost per request with gunicorn, wrk and the other processes' noise out of
    the picture, and a pyinstrument profile of scenario 2.
    """
    metrics_dir = bench.work / "metrics-in-process"
    metrics_dir.mkdir(exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from app.ops.logs import new_logger
    from app.server import build_worker_app
    from bench.reference_apps import hello_app, read_app

    config = bench.effective_config().replace(prometheus_multiproc_dir=str(metrics_dir))
    sink = open(os.devnull, "w")
    logger = new_logger(sink, config.log_level, config.log_format, config.user_secrets)
    saypi, resources = build_worker_app(config, logger, bench.db.dsn)
    read, hello = read_app(config, bench.db.dsn), hello_app()
    envs = {name: wsgi_environs(bench.files[name], 500)
            for name in ("get", "list", "animals", "hello", "get_cap")}
    try:
        timings = {
            "hello (reference)": time_calls(hello, envs["hello"], count),
            "GET /animals": time_calls(saypi, envs["animals"], count),
            "same-query read (reference)": time_calls(read, envs["get"], count),
            "GET /conversations/{id}": time_calls(saypi, envs["get"], count),
            "GET /conversations?limit=10": time_calls(saypi, envs["list"], count),
            "same-query read, 1000 lines (reference)":
                time_calls(read, envs["get_cap"], max(20, count // 50)),
            "GET /conversations/{id}, 1000 lines":
                time_calls(saypi, envs["get_cap"], max(20, count // 50)),
        }
        profiles = {}
        try:
            from pyinstrument import Profiler
        except ImportError:
            profiles = {}
        else:
            for name in ("get", "animals"):
                profiler = Profiler(interval=0.0002)
                profiler.start()
                for i in range(count):
                    call(saypi, *envs[name][i % len(envs[name])])
                profiler.stop()
                layers, functions = _pyinstrument_tables(profiler.last_session.root_frame())
                profiles[name] = {"layers": layers, "functions": functions,
                                  "tree": _scrub_paths(profiler.output_text(unicode=False,
                                                                            color=False))}
    finally:
        # The sink stays open: the worker's background threads (the user-deletion
        # listener) may still log while they wind down after close().
        resources.close()
    return {"timings": timings, "profiles": profiles}


def _pyinstrument_tables(root) -> tuple[list, list]:
    """Self time by layer and by function, from pyinstrument's frame tree."""
    by_layer: Counter = Counter()
    by_function: Counter = Counter()
    total = 0.0

    def walk(frame, stack: list[str]) -> None:
        nonlocal total
        if str(frame.function).startswith("[") and stack:  # [self]: the parent's own time
            here = stack
        else:
            here = [*stack, f"{frame.function} ({frame.file_path or ''}:{frame.line_no or 0})"]
        own = frame.total_self_time
        if own > 0:
            total += own
            by_layer[layer_of(here)] += own
            by_function[_frame_name(here[-1])] += own
        for child in frame.children:
            walk(child, here)

    if root is not None:
        walk(root, [])
    if not total:
        return [], []
    return ([(k, round(100 * v / total, 1)) for k, v in by_layer.most_common()],
            [(k, round(100 * v / total, 1)) for k, v in by_function.most_common(30)])


def profile(env: Mapping[str, str]) -> int:
    settings = BenchSettings.from_env(env)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    seconds = settings.profile_seconds
    result: dict = {"seconds": seconds}

    def measure(bench: Bench) -> int:
        if Path(pyspy).exists():
            result["live"] = live_profile(bench, pyspy, seconds)
        else:
            result["live"] = None
            bench.say("py-spy is not installed (pip install py-spy): no live-worker profile")
        bench.say("in-process: the WSGI apps called directly, and pyinstrument on scenario 2")
        result["in_process"] = in_process(bench, 1000 if settings.quick else 3000)
        trees = "\n\n".join(f"=== {name} ===\n{p.pop('tree')}" for name, p in
                              result["in_process"]["profiles"].items())
        (RESULTS / "profile-get-tree.txt").write_text(trees or "(pyinstrument not installed)\n")
        return publish("profile-get", result, profile_markdown(result))

    return with_bench(env, settings, measure)


def live_profile(bench: Bench, pyspy: str, seconds: int) -> dict | None:
    """py-spy --gil on every worker at once while wrk drives scenario 2 at full load."""
    settings = bench.settings
    server = bench.start("saypi")
    bench.measure(server, "get", settings.warmup_seconds + 2)
    workers = server.worker_pids()
    wrk = subprocess.Popen(
        [bench.wrk, "-t", str(settings.wrk_threads), "-c", str(settings.connections),
         "-d", f"{seconds + 10}s", "-s", str(LUA), server.url, "--",
         str(bench.files["get"])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    bench.say(f"py-spy --gil on workers {workers} for {seconds}s under scenario 2")
    raws = [bench.work / f"profile-{pid}.txt" for pid in workers]
    spies = [subprocess.Popen([pyspy, "record", "--gil", "--nonblocking", "-r", "200", "-d",
                               str(seconds), "-f", "raw", "-o", str(raw), "-p", str(pid)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid, raw in zip(workers, raws, strict=True)]
    outputs = [spy.communicate(timeout=seconds + 60)[0] for spy in spies]
    svg = RESULTS / "profile-get.svg"
    flame = subprocess.run([pyspy, "record", "--gil", "--nonblocking", "-r", "200", "-d", "5",
                            "-f", "flamegraph", "-o", str(svg), "-p", str(workers[0])],
                           capture_output=True, text=True, timeout=120)
    wrk.communicate(timeout=seconds + 60)
    bench.stop(server)
    if svg.exists():
        raw = svg.read_bytes()
        for prefix in _path_prefixes():
            raw = raw.replace(prefix.encode(), b"")
        svg.write_bytes(raw)
    present = [raw for raw in raws if raw.exists()]
    if not present:
        bench.say("py-spy recorded nothing:\n" + "\n".join(outputs))
        return None
    result = analyse(present)
    result["workers"] = len(present)
    result["possible_samples"] = 200 * seconds * len(present)
    result["flamegraph"] = svg.name if flame.returncode == 0 and svg.exists() else None
    return result


def _table(rows: list, head: str, code: bool = False) -> list[str]:
    out = [f"| {head} | share |", "|---|---:|"]
    out += [f"| {'`' + k + '`' if code else k} | {v} % |" for k, v in rows]
    return out


def profile_markdown(result: dict) -> str:
    out = ["# Where SayPI's CPU goes: scenario 2, GET /conversations/{id} (10 lines)", ""]
    inproc = result.get("in_process")
    if inproc:
        out += ["## In process, no HTTP server", "",
                "Each WSGI app called directly in one thread (SayPI's built by "
                "app.server.build_worker_app as in a worker, its access log to the null "
                "device), after a warm-up. CPU is this process's CPU time per request; wall "
                "adds the database round trip.", "",
                "| app, request | wall us/req | CPU us/req | statuses |", "|---|---:|---:|---|"]
        for name, t in inproc["timings"].items():
            out.append(f"| {name} | {t['wall_us']:,.0f} | {t['cpu_us']:,.0f} | {t['statuses']} |")
        titles = {"get": "GET /conversations/{id}", "animals": "GET /animals"}
        for name, prof in inproc.get("profiles", {}).items():
            out += ["", f"pyinstrument on SayPI's {titles[name]}, self time by layer "
                    "(database waits included, under psycopg):", ""]
            out += _table(prof["layers"], "layer")
            out += ["", "Self time by function (top 30):", ""]
            out += _table(prof["functions"], "function", code=True)
        out += ["", "The call trees are in profile-get-tree.txt."]
        out.append("")
    live = result.get("live")
    if live:
        out += ["## Live workers under wrk (py-spy --gil --nonblocking)", "",
                f"{live['workers']} workers sampled for {result['seconds']} s at 200 Hz "
                f"while wrk drove scenario 2 at full load; only samples of the thread holding "
                f"the GIL (Python executing): {live['samples']:,} of "
                f"{live['possible_samples']:,} possible. On this 2-core machine py-spy "
                f"competes for the CPUs and its idle detection is unreliable, so read these "
                f"shares as indicative.", ""]
        out += _table(live["layers"], "layer")
        out += ["", "Inclusive (the function and what it calls):", ""]
        out += _table(live["inclusive"], "function", code=True)
        out += ["", "Self:", ""]
        out += _table(live["self"], "function", code=True)
        if live.get("flamegraph"):
            out += ["", f"Flame graph of one worker (5 s): {live['flamegraph']}."]
    return "\n".join(out) + "\n"
