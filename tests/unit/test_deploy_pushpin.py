"""deploy/pushpin and deploy/kubernetes/pushpin kept honest without running anything: the
manifests validate, run unprivileged, and configure Pushpin as deploy/pushpin/pushpin.conf
does, pointed at SayPI's Service, reachable by the relay only on its publish port."""

from __future__ import annotations

import configparser

import yaml

from harness import ROOT
from harness.pushpin import render_config
from tests.unit.test_deploy import validation_errors

PUSHPIN = ROOT / "deploy" / "kubernetes" / "pushpin"


def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted(PUSHPIN.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] != "Kustomization":
                docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def parsed(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return parser


def test_every_pushpin_manifest_is_valid_and_listed():
    docs = manifests()
    assert not [e for e in map(validation_errors, docs.values()) if e]
    kustomization = yaml.safe_load((PUSHPIN / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        p.name for p in PUSHPIN.glob("*.yaml")
        if p.name not in ("kustomization.yaml", "secret.example.yaml"))


def test_the_pushpin_pods_run_unprivileged_on_a_read_only_root():
    docs = manifests()
    for name in ("StatefulSet/saypi-pushpin",):
        pod = docs[name]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        (container,) = pod["containers"]
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, name
    pushpin = docs["StatefulSet/saypi-pushpin"]["spec"]["template"]["spec"]["containers"][0]
    assert {"/run/pushpin", "/etc/pushpin", "/etc/pushpin-routes"} <= {
        m["mountPath"] for m in pushpin["volumeMounts"]}


def test_the_cluster_configuration_is_the_deployed_one_with_only_its_paths_changed():
    conf = manifests()["Secret/saypi-pushpin-config"]["stringData"]["pushpin.conf"]
    mine = parsed(conf)
    assert mine["global"]["rundir"] == "/run/pushpin"
    assert mine["proxy"]["routesfile"] == "/etc/pushpin-routes/routes"
    expected = render_config({key: mine[section][key] for section, key in (
        ("global", "rundir"), ("runner", "logdir"), ("handler", "push_in_http_addr"),
        ("proxy", "routesfile"), ("proxy", "sig_key"))})
    assert conf.strip() == expected.strip()
    ports = {p["name"]: p["containerPort"] for p in manifests()[
        "StatefulSet/saypi-pushpin"]["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"http": int(mine["runner"]["http_port"]),
                     "publish": int(mine["handler"]["push_in_http_port"])}
    # The relay's seals repeat the last event's id: Pushpin's id cache would drop them all.
    assert mine["handler"]["id_cache_ttl"] == "0"
    # zurl runs inside the instance, on its rundir's sockets (not Debian's /var/run/zurl).
    assert "zurl" in mine["runner"]["services"]
    assert all("{rundir}" in mine["proxy"][k] for k in (
        "zurl_out_specs", "zurl_out_stream_specs", "zurl_in_specs"))


def test_routes_reach_saypi_and_only_the_relay_may_publish():
    docs = manifests()
    routes = docs["ConfigMap/saypi-pushpin-routes"]["data"]["routes"]
    service = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "service.yaml").read_text())
    assert f"* {service['metadata']['name']}:{service['spec']['ports'][0]['port']}" in routes
    policy = docs["NetworkPolicy/saypi-pushpin"]["spec"]
    publish = [rule for rule in policy["ingress"]
               if any(p["port"] == "publish" for p in rule["ports"])]
    assert len(publish) == 1
    assert publish[0]["from"][0]["podSelector"]["matchLabels"][
        "app.kubernetes.io/component"] == "relay"
    # The relay (reading the shared ConfigMap) publishes to every instance by its name.
    config = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())
    replicas = docs["StatefulSet/saypi-pushpin"]["spec"]["replicas"]
    assert config["data"]["PUSHPIN_PUBLISH_URLS"].split(",") == [
        f"http://saypi-pushpin-{n}.saypi-pushpin-instances:5561" for n in range(replicas)]
    secret = yaml.safe_load(
        (ROOT / "deploy" / "kubernetes" / "secret.example.yaml").read_text())
    assert "GRIP_KEY" in secret["stringData"]
    # SayPI's own policy lets Pushpin in, on http only.
    api_policy = next(d for d in yaml.safe_load_all(
        (ROOT / "deploy" / "kubernetes" / "networkpolicy.yaml").read_text())
        if d["metadata"]["name"] == "saypi")
    assert any(peer.get("podSelector", {}).get("matchLabels", {}).get(
        "app.kubernetes.io/component") == "pushpin"
        for rule in api_policy["spec"]["ingress"] for peer in rule["from"])
    headless = docs["Service/saypi-pushpin-instances"]["spec"]
    assert headless["clusterIP"] == "None"
    assert docs["StatefulSet/saypi-pushpin"]["spec"]["serviceName"] == \
        "saypi-pushpin-instances"
