"""deploy/ against running code: the probes and the alerts use what a real SayPI serves and
exports, and `gunicorn -c deploy/gunicorn.conf.py` is started for real.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from harness import ROOT
from harness.saypi import server_env
from tests.conftest import eventually
from tests.unit.test_deploy import (
    DEPLOY,
    alert_rules,
    api_container,
    config_env,
    dashboard_exprs,
    deployment,
    one,
    promql_metric_names,
    route_paths,
)

# Series Prometheus records itself for every target; SayPI cannot export them.
PROMETHEUS_GENERATED = {"up"}


# --- Kubernetes ---------------------------------------------------------------------------
def test_probes_use_real_routes_on_the_configured_port(shared_server):
    container = api_container()
    port = int(config_env()["PORT"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == port
    probes = {name: container[name] for name in ("startupProbe", "livenessProbe",
                                                 "readinessProbe")}
    for name, probe in probes.items():
        get = probe["httpGet"]
        assert get["path"] in route_paths(), (name, get["path"])
        assert get["port"] in ports or get["port"] == port, (name, get["port"])
        response = httpx.get(shared_server.url + get["path"])
        assert response.status_code == 200, (name, get["path"])
    # Liveness must not depend on the database (a restart would not fix it);
    # readiness is the one that follows it, and waits longer than a check may take.
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert probes["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert probes["readinessProbe"]["timeoutSeconds"] > float(
        config_env()["HEALTH_CHECK_TIMEOUT"])

    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] in route_paths()
    service_port = one("Service")["spec"]["ports"][0]
    assert service_port["targetPort"] in ports


def test_alerts_and_dashboard_use_only_metrics_a_running_saypi_exports(shared_server):
    def exported() -> set[str]:
        text = httpx.get(shared_server.url + "/metrics").text
        return {sample.name for family in text_string_to_metric_families(text)
                for sample in family.samples}

    used = {}
    for rule in alert_rules():
        for name in promql_metric_names(rule["expr"]):
            used.setdefault(name, []).append(rule["alert"])
    for expr in dashboard_exprs():
        for name in promql_metric_names(expr):
            used.setdefault(name, []).append("dashboard")
    assert used

    def missing() -> dict:
        names = exported()
        return {name: where for name, where in used.items()
                if name not in names and name not in PROMETHEUS_GENERATED}

    # Request metrics appear once a worker has served and folded them in (within a second).
    assert eventually(lambda: not missing(), seconds=5), missing()


# --- gunicorn -c deploy/gunicorn.conf.py ----------------------------------------------------------
def gunicorn(env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    executable = Path(sys.executable).with_name("gunicorn")
    return subprocess.Popen([str(executable), "-c", str(DEPLOY / "gunicorn.conf.py")],
                            cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_gunicorn_conf_refuses_a_missing_database_url(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PORT": "0"}
    process = gunicorn(env, tmp_path, tmp_path / "gunicorn.log")
    assert process.wait(30) == 2
    assert "DATABASE_URL" in (tmp_path / "gunicorn.log").read_text()


def test_gunicorn_conf_serves_with_the_same_hooks(postgres, tmp_path):
    from tests.conftest import run_inline
    from tests.e2e.test_operations import _stale_metrics_file, scrape, value

    database_url = postgres.new_database(migrated=False)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    _stale_metrics_file(metrics_dir)
    env = server_env(database_url, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
                     WEB_CONCURRENCY="2")
    url = f"http://127.0.0.1:{env['PORT']}"
    log = tmp_path / "gunicorn.log"
    process = gunicorn(env, tmp_path, log)  # from another directory than the checkout
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/health/live").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

        # gunicorn never migrates: serving, but not ready until the migration step ran.
        detailed = httpx.get(url + "/health/detailed")
        assert detailed.status_code == 503
        migrations = detailed.json()["checks"]["migrations"]
        assert migrations["status"] == "unhealthy" and "run the migrations" in \
            migrations["message"]
        assert httpx.get(url + "/health/ready").status_code == 503
        code, _ = run_inline(["migrate"], env)
        assert code == 0
        while httpx.get(url + "/health/ready").status_code != 200:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

        # on_starting wiped the earlier run's metrics; workers count for real, each
        # folding its counts into the shared files within a second. HEAD requests,
        # which nothing else here sends, so the count is exact.
        for _ in range(5):
            assert httpx.head(url + "/health/live",
                              headers={"Connection": "close"}).status_code == 200
        assert eventually(lambda: value(scrape(url), "http_requests_total", method="HEAD",
                                        route="/health/live") == 5, seconds=5)
        samples = scrape(url)
        assert value(samples, "http_requests_total", route="/stale-from-last-run") == 0
        assert value(samples, "db_pool_max") > 0

        # Pools live in the workers (post-fork), never in the master.
        dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
        with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
            names = [row[0] for row in conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE datname = %s", (dbname,))]
        pids = {int(n.rsplit("-", 1)[1]) for n in names if n.startswith("saypi-worker-")}
        assert len(pids) == 2 and process.pid not in pids

        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        # worker_exit closed every pool.
        with psycopg.connect(postgres.admin_dsn, autocommit=True) as conn:
            left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                "AND application_name LIKE 'saypi-worker-%%'",
                                (dbname,)).fetchone()[0]
        assert left == 0
        assert "Traceback" not in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_run_without_database_url_or_pgserver_says_what_to_do(tmp_path):
    """As in the image: pgserver absent (here: its import blocked), DATABASE_URL unset."""
    script = ("import sys; sys.modules['pgserver'] = None\n"
              "from run import run\n"
              "sys.exit(run(['run.py', 'migrate'], {'DATA_DIR': sys.argv[1]}, sys.stdout))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "DATABASE_URL is unset" in done.stdout
    assert "pip install '.[embedded]'" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
