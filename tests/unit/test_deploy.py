"""deploy/ kept honest without running anything: the files parse and validate, and every
path, port, setting and metric name they use exists in routes.py or the configuration.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from urllib.parse import unquote

import psycopg
import yaml

from app.config import SETTINGS, Config
from harness import ROOT

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"


# --- loading -------------------------------------------------------------------------------
def manifests() -> list[dict]:
    """Every Kubernetes object in deploy/kubernetes (kustomization.yaml is not one)."""
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs.extend(doc for doc in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader)
                    if doc and doc["kind"] != "Kustomization")
    return docs


def one(kind: str, component: str | None = None) -> dict:
    found = [d for d in manifests() if d["kind"] == kind and (
        component is None
        or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]
    assert len(found) == 1, (kind, component, len(found))
    return found[0]


def deployment(component: str = "api") -> dict:
    return one("Deployment", component)


def api_container() -> dict:
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    return container


def config_env() -> dict[str, str]:
    """The environment a pod gets: the ConfigMap plus the example Secret."""
    env = dict(one("ConfigMap")["data"])
    env.update(one("Secret")["stringData"])
    return env


def route_paths() -> set[str]:
    """Every GET path registered in routes.py."""
    return set(re.findall(r'Route\("GET", "([^"]+)"', (ROOT / "routes.py").read_text()))


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def quantity_bytes(text: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[:-len(suffix)]) * factor)
    return int(text)


# --- everything parses -----------------------------------------------------------------------
def test_every_deploy_file_parses():
    kinds = {d["kind"] for d in manifests()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job",
            "ConfigMap", "Secret"} <= kinds
    for doc in manifests():
        assert doc["apiVersion"] and doc["metadata"]["name"], doc
    for path in (DEPLOY / "prometheus").glob("*.yml"):
        assert yaml.safe_load(path.read_text()), path
    for path in (DEPLOY / "grafana").glob("*.json"):
        assert json.loads(path.read_text())["panels"], path
    ast.parse((DEPLOY / "gunicorn.conf.py").read_text())
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (KUBERNETES / resource).exists(), resource


def test_configmap_and_secret_hold_only_real_settings_that_validate():
    env = config_env()
    known = {s.env for s in SETTINGS}
    assert set(env) <= known, set(env) - known
    config = Config.from_env(env, ["serve"])  # raises ConfigError listing any problem
    assert config.production
    assert config.host == "0.0.0.0"  # reachable from the kubelet and the Service
    assert not config.fault_injection
    for key, placeholder in one("Secret")["stringData"].items():
        assert "CHANGE_ME" in placeholder, key  # an example, never a real secret


def test_shutdown_budget_covers_prestop_and_graceful_timeout():
    pod = deployment()["spec"]["template"]["spec"]
    command = api_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    graceful = float(config_env()["GRACEFUL_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + graceful + 5


def test_metrics_directory_is_an_emptydir_and_resources_are_bounded():
    pod = deployment()["spec"]["template"]["spec"]
    container = api_container()
    env = config_env()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume_name = mounts[env["PROMETHEUS_MULTIPROC_DIR"]]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[volume_name]

    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    memory_limit = quantity_bytes(resources["limits"]["memory"])
    assert quantity_bytes(resources["requests"]["memory"]) <= memory_limit
    # The health check's per-worker budget fits the container's limit.
    assert int(env["MEMORY_LIMIT_BYTES"]) * int(env["WEB_CONCURRENCY"]) <= memory_limit


def test_selectors_targets_and_images_agree():
    deploy = deployment()
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert one("Service")["spec"]["selector"].items() <= pod_labels.items()
    assert one("PodDisruptionBudget", "api")["spec"]["selector"]["matchLabels"].items() \
        <= pod_labels.items()
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deploy["metadata"]["name"])

    job = one("Job")
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["command"][-2:] == ["run.py", "migrate"]
    assert migrate["image"] == api_container()["image"]
    assert migrate["envFrom"] == api_container()["envFrom"]
    names = {(d["kind"], d["metadata"]["name"]) for d in manifests()}
    for source in api_container()["envFrom"]:
        if "configMapRef" in source:
            assert ("ConfigMap", source["configMapRef"]["name"]) in names
        else:
            assert ("Secret", source["secretRef"]["name"]) in names
    assert api_container()["command"] == ["gunicorn", "-c", "deploy/gunicorn.conf.py"]


# --- the container image ----------------------------------------------------------------------
def test_dockerfile_runs_unprivileged_with_a_healthcheck_and_no_migrations():
    text = dockerfile()
    user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)[-1]
    uid = user.split(":")[0]
    assert uid not in ("root", "0")
    pod_security = deployment()["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert str(pod_security["runAsUser"]) == uid

    healthcheck = re.search(r"^HEALTHCHECK .*?CMD (.+)$", text, re.MULTILINE | re.DOTALL)
    assert healthcheck
    paths = set(re.findall(r"(/health/\w+)", healthcheck.group(1)))
    assert paths and paths <= route_paths()

    exposed = re.findall(r"^EXPOSE\s+(\d+)", text, re.MULTILINE)
    assert exposed == [config_env()["PORT"]]
    assert re.search(r"PORT=(\d+)", text).group(1) == config_env()["PORT"]
    cmd = re.findall(r"^CMD (.+)$", text, re.MULTILINE)[-1]
    assert json.loads(cmd) == ["gunicorn", "-c", "deploy/gunicorn.conf.py"]
    assert "migrate" not in cmd  # migrations are their own step
    assert "COPY deploy/gunicorn.conf.py" in text


# --- Prometheus and Grafana --------------------------------------------------------------------
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ",
                  expr)  # grouping label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("("):
            continue  # a function or aggregation
        if match.group(0).lower() not in PROMQL_WORDS:
            names.add(match.group(0))
    return names


def test_promql_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds'
            '_bucket{route!="/metrics", x=~"a(b)"}[5m]))) / on (pod) group_left '
            'max without (check) (health_status) > 0 and up{job="saypi"} == 0')
    assert promql_metric_names(expr) == {"http_request_duration_seconds_bucket",
                                         "health_status", "up"}


def alert_rules() -> list[dict]:
    config = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in config["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "saypi-dashboard.json").read_text())


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            metric = re.match(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,", query["query"])
            exprs.append(metric.group(1))
    return exprs


def test_alerts_and_panels_cover_what_operators_need():
    rules = " ".join(rule["expr"] for rule in alert_rules())
    assert 'status=~"5.."' in rules  # error rate
    assert "histogram_quantile(0.99" in rules  # p99 latency
    assert "db_pool_waiting" in rules  # pool waiting
    assert 'health_status{check="overall"}' in rules  # readiness
    for rule in alert_rules():
        assert rule["annotations"]["summary"] and rule["labels"]["severity"]
    exprs = " ".join(dashboard_exprs())
    for needle in ("rate(http_requests_total", 'status=~"5.."', "histogram_quantile(0.5,",
                   "histogram_quantile(0.99,", "db_pool_available", "rate_limited_total"):
        assert needle in exprs, needle
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for job in scrape["scrape_configs"]:
        assert job["metrics_path"] in route_paths()
    for rule_file in scrape["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).exists()


def test_tracing_is_wired_from_pods_to_the_collector_and_the_dashboard():
    collector = yaml.safe_load((DEPLOY / "otel" / "collector.yaml").read_text())
    http = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    pipeline = collector["service"]["pipelines"]["traces"]
    assert "otlp" in pipeline["receivers"] and pipeline["exporters"]
    for name in (*pipeline["processors"], *pipeline["exporters"]):
        assert name in {**collector["processors"], **collector["exporters"]}, name
    endpoint = config_env()["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint.startswith("http://") and endpoint.rsplit(":", 1)[1] == http.rsplit(":", 1)[1]
    # The pod's resource attributes, as Kubernetes expands them, are a valid setting.
    env = {item["name"]: item.get("value", "pod-or-namespace")
           for item in api_container()["env"]}
    attributes = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)],
                        env["OTEL_RESOURCE_ATTRIBUTES"])
    config = Config.from_env({**config_env(), "OTEL_RESOURCE_ATTRIBUTES": attributes}, [])
    assert dict(config.otel_resource_attributes)["k8s.pod.name"] == "pod-or-namespace"
    # The request-rate panel links each route to its traces.
    (rate,) = [p for p in dashboard()["panels"] if p["title"] == "Request rate by route"]
    (link,) = rate["fieldConfig"]["defaults"]["links"]
    assert link["url"].startswith("/explore?") and "http.route" in unquote(link["url"])
    assert "${__field.labels.route" in link["url"]
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    assert "${traces}" in link["url"] and "traces" in variables


# --- Kubernetes, validated against its OpenAPI schemas ----------------------------------------
# One Kubernetes minor version, pinned: the schemas come with the pinned
# kubernetes-validate (pyproject.toml); move both together.
KUBERNETES_VERSION = "1.33.0"


def validation_errors(doc: dict) -> str | None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
    return None


def test_every_manifest_is_valid_for_the_pinned_kubernetes_version():
    docs = manifests()
    assert len(docs) >= 9
    errors = [e for e in map(validation_errors, docs) if e]
    assert not errors, errors


def test_the_schema_validation_catches_what_parsing_does_not():
    import copy

    broken = copy.deepcopy(deployment())
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["paht"] = "/health/ready"  # unknown field
    assert validation_errors(broken)
    broken = copy.deepcopy(deployment())
    broken["spec"]["replicas"] = "three"
    assert validation_errors(broken)
    broken = copy.deepcopy(one("PodDisruptionBudget", "api"))
    broken["spec"]["selector"] = ["app.kubernetes.io/name"]
    assert validation_errors(broken)


def pod_specs() -> dict[str, dict]:
    return {"Deployment": deployment()["spec"]["template"]["spec"],
            "relay Deployment": deployment("relay")["spec"]["template"]["spec"],
            "Job": one("Job")["spec"]["template"]["spec"]}


def test_every_container_runs_unprivileged_on_a_read_only_root():
    for kind, pod in pod_specs().items():
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0, kind
        assert security["seccompProfile"]["type"] == "RuntimeDefault", kind
        assert pod["automountServiceAccountToken"] is False, kind
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (kind, container["name"])
            assert context["readOnlyRootFilesystem"] is True, (kind, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (kind, container["name"])
            assert "add" not in context["capabilities"], (kind, container["name"])
            assert not context.get("privileged"), (kind, container["name"])
            # A read-only root: what is written goes to an emptyDir on /tmp.
            volumes = {v["name"]: v for v in pod["volumes"]}
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], (kind, container["name"])
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), (kind, container["name"])
            assert {"cpu", "memory"} <= set(resources["limits"]), (kind, container["name"])


def test_graceful_shutdown_outlasts_the_drain_and_prestop_pauses_first():
    pod = deployment()["spec"]["template"]["spec"]
    graceful = float(config_env()["GRACEFUL_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > graceful
    pre_stop = api_container()["lifecycle"]["preStop"]
    # A pause while the endpoint removal reaches every proxy, before SIGTERM.
    assert pre_stop["exec"]["command"][0] == "sleep" and float(pre_stop["exec"]["command"][1]) > 0
    readiness = api_container()["readinessProbe"]
    # Readiness (503 from SIGTERM on) is seen failed well within the drain.
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < graceful


def test_replicas_autoscaler_and_disruption_budget_agree():
    replicas = deployment()["spec"]["replicas"]
    hpa = one("HorizontalPodAutoscaler")["spec"]
    pdb = one("PodDisruptionBudget", "api")["spec"]
    assert hpa["minReplicas"] <= replicas <= hpa["maxReplicas"]
    assert hpa["minReplicas"] >= 2  # one pod down must never mean no service
    # The budget lets a node drain go on (one pod at a time) and keeps the rest.
    if "maxUnavailable" in pdb:
        assert 1 <= int(pdb["maxUnavailable"]) < hpa["minReplicas"]
    else:
        assert 1 <= int(pdb["minAvailable"]) < hpa["minReplicas"]
    # CPU utilisation is measured against the request, so there must be one.
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "cpu" in api_container()["resources"]["requests"]
    # A rollout never lowers serving capacity: a new pod first, an old one when it is ready.
    rolling = deployment()["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
    # Connections at full scale stay below what PostgreSQL allows (default max_connections 100
    # is raised to at least this in production; the README's sizing rule).
    env = config_env()
    assert hpa["maxReplicas"] * int(env["WEB_CONCURRENCY"]) * int(env["DB_POOL_MAX"]) <= 160


def test_relay_runs_beside_the_api_with_its_own_probes_budget_and_policy():
    """run.py relay, probed on its own health port, two pods of which a drain takes one at
    a time, and a grace period that outlasts RELAY_GRACE_SECONDS."""
    relay = deployment("relay")
    pod = relay["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][-2:] == ["run.py", "relay"]
    assert container["image"] == api_container()["image"]  # one image, one release
    assert container["envFrom"] == api_container()["envFrom"]  # one configuration
    config = Config.from_env(config_env(), ["relay"])
    (port,) = container["ports"]
    assert port["containerPort"] == config.relay_port
    annotations = relay["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == config.relay_port
    for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready"),
                        ("startupProbe", "/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": port["name"]}, probe
    assert pod["terminationGracePeriodSeconds"] >= config.relay_grace_seconds + 5
    # SIGTERM lets the deliveries under way finish within the grace bound.
    assert config.relay_grace_seconds >= config.webhook_timeout_seconds + 5
    assert relay["spec"]["replicas"] >= 2
    pdb = one("PodDisruptionBudget", "relay")["spec"]
    assert pdb["selector"]["matchLabels"].items() \
        <= relay["spec"]["template"]["metadata"]["labels"].items()
    assert 1 <= int(pdb["maxUnavailable"]) < relay["spec"]["replicas"]
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert "relay.yaml" in kustomization["resources"]


def test_migrations_run_before_the_rollout():
    """The Job is applied and waited for first; `apply -k` does not include it; a pod of a
    release whose expand migrations did not run is never ready, so the rollout stops."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert "migrate-job.yaml" not in kustomization["resources"]
    assert "networkpolicy.yaml" in kustomization["resources"]
    job = one("Job")
    tag = api_container()["image"].rsplit(":", 1)[1]
    assert job["metadata"]["name"].endswith(tag.replace(".", "-"))  # a new Job per release
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    readme = (DEPLOY / "README.md").read_text()
    readme = readme[readme.index("## A release"):]
    job_name = job["metadata"]["name"]
    order = [readme.index("kubectl apply -f deploy/kubernetes/migrate-job.yaml"),
             readme.index(f"kubectl wait --for=condition=complete job/{job_name}"),
             readme.index("kubectl apply -k deploy/kubernetes")]
    assert order == sorted(order)
    assert api_container()["readinessProbe"]["httpGet"]["path"] == "/health/ready"


def test_network_policies_admit_http_only_and_reach_postgres_and_dns():
    policies = {d["metadata"]["name"]: d["spec"] for d in manifests()
                if d["kind"] == "NetworkPolicy"}
    api = policies["saypi"]
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert api["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(api["policyTypes"]) == {"Ingress", "Egress"}
    ports = {p["name"] for p in api_container()["ports"]}
    for rule in api["ingress"]:
        assert rule["from"], "ingress from anywhere"
        assert {p["port"] for p in rule["ports"]} <= ports
    database_port = psycopg.conninfo.conninfo_to_dict(
        config_env()["DATABASE_URL"]).get("port", "5432")
    # The relay also delivers webhooks (HTTPS) and publishes to Pushpin: nothing else.
    extra = {"saypi-relay": {(443, "TCP"), (5561, "TCP")}}
    for name, policy in policies.items():
        egress_ports = {(p["port"], p.get("protocol", "TCP")) for rule in policy["egress"]
                        for p in rule["ports"]}
        assert egress_ports == {(int(database_port), "TCP"), (53, "UDP"), (53, "TCP"),
                                *extra.get(name, ())}, name
    migrate_labels = one("Job")["spec"]["template"]["metadata"]["labels"]
    assert policies["saypi-migrate"]["podSelector"]["matchLabels"].items() \
        <= migrate_labels.items()
    assert "ingress" not in policies["saypi-migrate"]  # takes no traffic


# --- the image: runtime dependencies only -------------------------------------------------
def pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerfile_is_multi_stage_with_stop_signal_and_runtime_dependencies_only():
    text = dockerfile()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert len(stages) >= 2 and stages[0][1] == "build"
    final = text[text.rindex("\nFROM "):]
    assert "COPY --from=build /opt/saypi /opt/saypi" in final
    assert "pip" not in final and "apt-get" not in final  # nothing installed at run time
    assert re.search(r"^STOPSIGNAL\s+SIGTERM\s*$", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK ", text, re.MULTILINE)
    install = re.search(r"pip install (.*?) \.(\s|$)", text)
    assert install and "[" not in install.group(0)  # no extras: no pgserver, httpx, tests
    user = re.findall(r"^USER\s+(\S+)", final, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")

    project = pyproject()["project"]
    runtime = " ".join(project["dependencies"]).lower()
    for name in ("pgserver", "httpx", "pytest", "hypothesis", "schemathesis", "playwright",
                 "ruff", "kubernetes-validate", "matplotlib", "py-spy"):
        assert name not in runtime, name
    extras = project["optional-dependencies"]
    assert any("pgserver" in d for d in extras["embedded"])
    assert any("httpx" in d for d in extras["client"])
    assert "kubernetes-validate==" in " ".join(extras["test"])  # pinned
    makefile = (ROOT / "Makefile").read_text()
    assert "'.[embedded,client,test,bench]'" in makefile


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_server_imports_no_optional_dependency():
    """httpx only in the client, pgserver only in the embedded PostgreSQL (lazily)."""
    sources = [ROOT / "run.py", ROOT / "routes.py", DEPLOY / "gunicorn.conf.py",
               *sorted((ROOT / "app").rglob("*.py"))]
    allowed = {"httpx": {ROOT / "app" / "client.py"},
               "pgserver": {ROOT / "app" / "store" / "embedded_pg.py"}}
    for path in sources:
        for name, where in allowed.items():
            if name in imported_modules(path):
                assert path in where, (path, name)
    embedded = (ROOT / "app" / "store" / "embedded_pg.py").read_text()
    assert not re.search(r"^import pgserver", embedded, re.MULTILINE)  # only inside a function
