"""deploy/k8s: every overlay renders with kustomize and every object validates offline against
the Kubernetes schemas; the properties the platform relies on hold in the rendered output."""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_tools import DEPLOY

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.37.0"
BUILDS = ["base", "overlays/dev", "overlays/gpu"]
# Custom resources: their schemas come with the operator's CRDs, not with Kubernetes, so
# kubernetes-validate has none. Their shape is checked by hand in test_service_monitor below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
WORKERS = ["text-embedding", "image-embedding", "captioning"]
GRPC_PORTS = {"registry": 50051, "worker": 8001, "benchmark": 50061}
METRICS_PORTS = {"registry": 9101, "worker": 9102, "benchmark": 9103}

Objects = list[dict[str, Any]]


def render(kubectl: str, build: str) -> Objects:
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / build)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {build} failed:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, Objects]:
    return {build: render(kubectl, build) for build in BUILDS}


def find(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def modelyard_deployments(objects: Objects) -> Objects:
    return [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("modelyard-")
    ]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("build", BUILDS)
def test_every_object_validates_against_the_kubernetes_schemas(
    rendered: dict[str, Objects], build: str
) -> None:
    objects = rendered[build]
    assert objects, f"{build} rendered nothing"
    errors = []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: no schema for {obj['apiVersion']}")
    assert not errors, "\n".join(errors)


def test_the_validator_rejects_a_broken_object(rendered: dict[str, Objects]) -> None:
    # Guards the test above against validating nothing: strict mode must catch a typo.
    broken = copy.deepcopy(find(rendered["base"], "Deployment", "modelyard-registry"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {"port": 50051}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("build", BUILDS)
def test_servers_have_native_grpc_probes_metrics_and_a_long_enough_grace(
    rendered: dict[str, Objects], build: str
) -> None:
    objects = rendered[build]
    settings = find(objects, "ConfigMap", "modelyard-settings")["data"]
    server_grace = float(settings["MODELYARD_GRACE_PERIOD_S"])
    deployments = modelyard_deployments(objects)
    assert len(deployments) == 5  # registry, three workers, benchmark
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        role = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["readinessProbe"]["grpc"]["port"] == GRPC_PORTS[role], name
        if role != "worker":
            assert container["livenessProbe"]["grpc"]["port"] == GRPC_PORTS[role], name
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["spec"]["terminationGracePeriodSeconds"] > pre_stop + server_grace, name
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == str(METRICS_PORTS[role]), name
        env = env_of(container)
        if role == "worker":
            assert env["MODELYARD_WORKER_REGISTRY"] == f"modelyard-registry:{GRPC_PORTS['registry']}", name
            assert json.loads(env["MODELYARD_WORKER_DEPLOYMENTS"]) == [name.removeprefix("modelyard-worker-")]
        prefix = {"registry": "REGISTRY", "worker": "WORKER", "benchmark": "BENCHMARK"}[role]
        assert env[f"MODELYARD_{prefix}_HOST"] == "0.0.0.0", name
        assert env[f"MODELYARD_{prefix}_PORT"] == str(GRPC_PORTS[role]), name
        assert env[f"MODELYARD_{prefix}_METRICS_PORT"] == str(METRICS_PORTS[role]), name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name} {kind}"
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False, name


@pytest.mark.parametrize("build", BUILDS)
def test_registry_is_replicated_protected_and_reads_its_secrets(
    rendered: dict[str, Objects], build: str
) -> None:
    objects = rendered[build]
    registry = find(objects, "Deployment", "modelyard-registry")
    assert registry["spec"]["replicas"] == 2
    pdb = find(objects, "PodDisruptionBudget", "modelyard-registry")
    assert pdb["spec"]["minAvailable"] == 1
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= registry["spec"]["template"]["metadata"]["labels"].items()
    )
    env = env_of(registry["spec"]["template"]["spec"]["containers"][0])
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    for variable, key in [
        ("MODELYARD_DATABASE_URL", "url"),
        ("MODELYARD_ADMIN_TOKENS", "admin-tokens"),
        ("MODELYARD_READER_TOKENS", "reader-tokens"),
    ]:
        ref = env[variable]["secretKeyRef"]
        assert ref["key"] == key
        assert key in secrets[ref["name"]]["stringData"], f"{variable}: {ref} names no existing key"


@pytest.mark.parametrize("build", BUILDS)
def test_services_select_their_pods_and_expose_grpc_and_metrics(
    rendered: dict[str, Objects], build: str
) -> None:
    objects = rendered[build]
    for deployment in modelyard_deployments(objects):
        name = deployment["metadata"]["name"]
        service = find(objects, "Service", name)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), name
        assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}, name
        assert "modelyard.io/job" in service["metadata"]["labels"], f"{name}: ServiceMonitor would skip it"
    assert {d["metadata"]["name"] for d in modelyard_deployments(objects)} >= {
        f"modelyard-worker-{w}" for w in WORKERS
    }


def test_service_monitor(rendered: dict[str, Objects]) -> None:
    monitor = find(rendered["base"], "ServiceMonitor", "modelyard")
    assert monitor["spec"]["jobLabel"] == "modelyard.io/job"
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    jobs = {
        o["metadata"]["labels"]["modelyard.io/job"]
        for o in rendered["base"]
        if o["kind"] == "Service" and "modelyard.io/job" in o["metadata"]["labels"]
    }
    # The same job names as deploy/prometheus/prometheus.yml, so rules.yml works in both places.
    assert jobs == {"modelyard-registry", "modelyard-worker", "modelyard-benchmark"}


def test_dev_overlay_runs_postgres_and_points_the_registry_at_it(rendered: dict[str, Objects]) -> None:
    objects = rendered["overlays/dev"]
    statefulset = find(objects, "StatefulSet", "postgres")
    service = find(objects, "Service", "postgres")
    assert (
        service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    )
    url = find(objects, "Secret", "modelyard-database")["stringData"]["url"]
    credentials = find(objects, "Secret", "postgres")["stringData"]
    expected = (
        f"postgresql://{credentials['POSTGRES_USER']}:{credentials['POSTGRES_PASSWORD']}"
        f"@postgres:{service['spec']['ports'][0]['port']}/{credentials['POSTGRES_DB']}"
    )
    assert url == expected


def test_gpu_overlay_puts_workers_on_gpus_and_nothing_else(rendered: dict[str, Objects]) -> None:
    objects = rendered["overlays/gpu"]
    for deployment in modelyard_deployments(objects):
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        is_worker = deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
        assert ("nvidia.com/gpu" in container["resources"]["limits"]) == is_worker
        assert ("cuda" in container["image"]) == is_worker
        if is_worker:
            assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
            assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
            assert spec["nodeSelector"]
