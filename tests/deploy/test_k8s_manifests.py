"""deploy/k8s: every overlay renders with kustomize (after deploy/tools/make-secrets.py, as an
operator runs it) and every object validates offline against the Kubernetes schemas; the
properties the platform relies on hold in the rendered output, least privilege included."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_tools import DEPLOY

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.37.0"
BUILDS = ["base", "overlays/dev", "overlays/gpu", "overlays/dev-tls-monitoring", "overlays/dev-s3"]
OVERLAYS = BUILDS[1:]
# Custom resources: their schemas come with the operator's CRDs, not with Kubernetes, so
# kubernetes-validate has none. Their shape is checked by hand in test_service_monitor below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
WORKERS = ["text-embedding", "image-embedding", "captioning"]
GRPC_PORTS = {"registry": 50051, "worker": 8001, "benchmark": 50061}
METRICS_PORTS = {"registry": 9101, "worker": 9102, "benchmark": 9103}

Objects = list[dict[str, Any]]


def render(kubectl: str, root: Path, build: str) -> Objects:
    result = subprocess.run(
        [kubectl, "kustomize", str(root / build)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {build} failed:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def make_secrets(overlay: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "tools" / "make-secrets.py"), str(overlay), *extra],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deploy/k8s as an operator prepares it: secrets generated per overlay, plus an overlay that
    adds the TLS and monitoring components, and one that adds the S3-compatible object store."""
    root = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, root, ignore=shutil.ignore_patterns("secrets"))
    assert make_secrets(root / "overlays/dev").returncode == 0
    assert (
        make_secrets(
            root / "overlays/gpu", "--database-url", "postgresql://m:pw@db:5432/modelyard"
        ).returncode
        == 0
    )
    full = root / "overlays/dev-tls-monitoring"
    full.mkdir()
    (full / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../dev]\n"
        "components: [../../components/tls, ../../components/prometheus-operator]\n"
    )
    s3 = root / "overlays/dev-s3"
    s3.mkdir()
    (s3 / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../dev]\n"
        "components: [../../components/s3-compatible]\n"
    )
    return root


@pytest.fixture(scope="module")
def rendered(kubectl: str, k8s_copy: Path) -> dict[str, Objects]:
    return {build: render(kubectl, k8s_copy, build) for build in BUILDS}


def find(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def modelyard_deployments(objects: Objects) -> Objects:
    return [
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].startswith("modelyard-")
    ]


def grpc_deployments(objects: Objects) -> Objects:
    """The gRPC servers (everything but the web console, which speaks HTTP and has no /metrics)."""
    return [
        d
        for d in modelyard_deployments(objects)
        if d["metadata"]["labels"]["app.kubernetes.io/component"] != "console"
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
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGte"] = {"port": 9101}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("build", BUILDS)
def test_servers_have_native_grpc_probes_metrics_and_a_long_enough_grace(
    rendered: dict[str, Objects], build: str
) -> None:
    objects = rendered[build]
    settings = find(objects, "ConfigMap", "modelyard-settings")["data"]
    server_grace = float(settings["MODELYARD_GRACE_PERIOD_S"])
    deployments = grpc_deployments(objects)
    assert len(deployments) == 5  # registry, three workers, benchmark
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        role = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        # HTTP on the metrics port (it follows gRPC health, and works when gRPC speaks TLS).
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, name
        if role != "worker":
            assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}, name
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
def test_registry_is_replicated_and_protected(rendered: dict[str, Objects], build: str) -> None:
    objects = rendered[build]
    registry = find(objects, "Deployment", "modelyard-registry")
    assert registry["spec"]["replicas"] == 2
    pdb = find(objects, "PodDisruptionBudget", "modelyard-registry")
    assert pdb["spec"]["minAvailable"] == 1
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= registry["spec"]["template"]["metadata"]["labels"].items()
    )


def test_the_base_ships_no_secret(rendered: dict[str, Objects]) -> None:
    assert [o for o in rendered["base"] if o["kind"] == "Secret"] == []
    committed = "\n".join(p.read_text() for p in K8S.rglob("*.yaml"))
    assert "change-me" not in committed and "modelyard-dev" not in committed


def _secret_values(objects: Objects) -> dict[str, dict[str, str]]:
    return {
        o["metadata"]["name"]: {k: base64.b64decode(v).decode().strip() for k, v in o.get("data", {}).items()}
        for o in objects
        if o["kind"] == "Secret"
    }


ROLE_SECRETS = {
    # What each pod may hold: its own token at most, and verifiers (sha256) of its callers'.
    "registry": ({"url"}, {"ADMIN_TOKENS", "READER_TOKENS", "WORKER_TOKENS", "BENCHMARK_TOKENS"}, None),
    "worker": (set(), {"ADMIN_TOKENS", "READER_TOKENS", "BENCHMARK_TOKENS"}, "modelyard-worker-token"),
    "benchmark": (set(), {"ADMIN_TOKENS", "READER_TOKENS"}, "modelyard-benchmark-token"),
    # No token: it forwards the one each user logs in with.
    "console": (set(), {"ADMIN_TOKENS", "READER_TOKENS"}, None),
}


@pytest.mark.parametrize("build", OVERLAYS)
def test_each_pod_gets_only_its_own_token_and_verifiers(rendered: dict[str, Objects], build: str) -> None:
    objects = rendered[build]
    secrets = _secret_values(objects)
    tokens = {}
    for deployment in modelyard_deployments(objects):
        name = deployment["metadata"]["name"]
        role = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        other_keys, verifier_keys, own_secret = ROLE_SECRETS[role]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
                and "secretKeyRef" in e["valueFrom"]}  # fmt: skip
        for variable, ref in refs.items():
            if ref["name"] == "modelyard-object-store":
                continue  # the operator creates it (components/s3-compatible); checked below
            value = secrets[ref["name"]][ref["key"]]  # every reference resolves to a generated key
            if variable == "MODELYARD_TOKEN":
                assert ref["name"].startswith(f"{own_secret}-"), f"{name} holds another role's token"
                tokens[role] = value
            elif ref["name"].startswith("modelyard-verifiers-"):
                assert ref["key"] in verifier_keys, f"{name} checks {ref['key']}"
                assert variable == f"MODELYARD_{ref['key']}"
                for entry in value.split(","):
                    token_name, _, verifier = entry.partition(":")
                    assert token_name and verifier.startswith("sha256:") and len(verifier) == 71, entry
            else:
                assert ref["key"] in other_keys, f"{name} reads {ref}"
        assert {
            r["key"] for r in refs.values() if r["name"].startswith("modelyard-verifiers-")
        } == verifier_keys
        assert ("MODELYARD_TOKEN" in refs) == (own_secret is not None), name
    assert tokens["worker"] != tokens["benchmark"]


def test_make_secrets_keeps_what_exists_and_needs_a_database(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text("resources: []\n")
    refused = make_secrets(overlay)
    assert refused.returncode == 2 and "--database-url" in refused.stderr
    assert make_secrets(overlay, "--database-url", "postgresql://a:b@c/d").returncode == 0
    first = {p.name: p.read_text() for p in (overlay / "secrets").iterdir()}
    assert make_secrets(overlay).returncode == 0
    assert {p.name: p.read_text() for p in (overlay / "secrets").iterdir()} == first
    assert all(((overlay / "secrets" / name).stat().st_mode & 0o077) == 0 for name in first)
    assert sorted(first) == [
        "admin.token",
        "benchmark.env",
        "database.env",
        "reader.token",
        "verifiers.env",
        "worker.env",
    ]


def test_tls_component_puts_every_server_and_client_on_tls(rendered: dict[str, Objects]) -> None:
    objects = rendered["overlays/dev-tls-monitoring"]
    for deployment in modelyard_deployments(objects):
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        env = env_of(container)
        assert env["MODELYARD_TLS"] == "true" and env["MODELYARD_TLS_SERVER_NAME"] == "modelyard.internal"
        mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
        assert env["MODELYARD_TLS_CERT_FILE"].startswith(mount["mountPath"] + "/")
        assert env["MODELYARD_TLS_KEY_FILE"].startswith(mount["mountPath"] + "/")
        assert (
            next(v for v in spec["volumes"] if v["name"] == "tls")["secret"]["secretName"] == "modelyard-tls"
        )
    for service in (
        o for o in objects if o["kind"] == "Service" and "modelyard.io/job" in o["metadata"]["labels"]
    ):
        assert all("appProtocol" not in p for p in service["spec"]["ports"]), "gRPC is TLS now, not h2c"
    assert not any(e for d in modelyard_deployments(rendered["overlays/dev"])
                   for e in d["spec"]["template"]["spec"]["containers"][0]["env"] if e["name"] == "MODELYARD_TLS")  # fmt: skip


@pytest.mark.parametrize("build", BUILDS)
def test_services_select_their_pods_and_expose_grpc_and_metrics(
    rendered: dict[str, Objects], build: str
) -> None:
    objects = rendered[build]
    for deployment in grpc_deployments(objects):
        name = deployment["metadata"]["name"]
        service = find(objects, "Service", name)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items(), name
        worker = name.startswith("modelyard-worker-")
        # Workers also serve OIP over HTTP, on the port their settings name.
        assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"} | (
            {"http"} if worker else set()
        )
        if worker:
            [container] = deployment["spec"]["template"]["spec"]["containers"]
            env = {e["name"]: e.get("value") for e in container["env"]}
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert env["MODELYARD_WORKER_HTTP_PORT"] == str(ports["http"]), name
        assert "modelyard.io/job" in service["metadata"]["labels"], f"{name}: ServiceMonitor would skip it"
    assert {d["metadata"]["name"] for d in modelyard_deployments(objects)} >= {
        f"modelyard-worker-{w}" for w in WORKERS
    }


def test_service_monitor_is_an_optional_component(rendered: dict[str, Objects]) -> None:
    for build in ("base", "overlays/dev", "overlays/gpu"):
        assert not [o for o in rendered[build] if o["kind"] == "ServiceMonitor"], f"{build} needs the CRDs"
    monitor = find(rendered["overlays/dev-tls-monitoring"], "ServiceMonitor", "modelyard")
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
    secrets = {name.rsplit("-", 1)[0]: values for name, values in _secret_values(objects).items()}
    url = secrets["modelyard-database"]["url"]
    credentials = secrets["postgres"]
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


@pytest.mark.parametrize("build", BUILDS)
def test_console_holds_no_token_and_reaches_the_services_by_name(
    rendered: dict[str, Objects], build: str
) -> None:
    objects = rendered[build]
    deployment = find(objects, "Deployment", "modelyard-console")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = env_of(container)
    assert container["args"] == ["console", "serve"]
    assert "MODELYARD_TOKEN" not in env, "the console forwards each user's token, it holds none"
    assert env["MODELYARD_CONSOLE_REGISTRY"] == f"modelyard-registry:{GRPC_PORTS['registry']}"
    assert env["MODELYARD_CONSOLE_BENCHMARK"] == f"modelyard-benchmark:{GRPC_PORTS['benchmark']}"
    assert env["MODELYARD_CONSOLE_HOST"] == "0.0.0.0"
    port = int(env["MODELYARD_CONSOLE_PORT"])
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["readinessProbe"]["tcpSocket"] == {"port": "http"}
    service = find(objects, "Service", "modelyard-console")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP", "exposed through an ingress, not directly"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("build", BUILDS)
def test_only_workers_read_artifacts_and_only_they_get_object_store_access(
    rendered: dict[str, Objects], build: str
) -> None:
    """Artifacts live where every worker reaches them (an object store by default); workers run as
    the one ServiceAccount a workload identity is bound to, and with the S3-compatible component
    they alone get the endpoint and keys: the registry checks source URIs but never reads them."""
    objects = rendered[build]
    settings = find(objects, "ConfigMap", "modelyard-settings")["data"]
    roots = settings["MODELYARD_ARTIFACT_ROOTS"].split(",")
    assert roots and all(r.startswith(("s3://", "gs://", "file:///")) and r.endswith("/") for r in roots)
    account = find(objects, "ServiceAccount", "modelyard-worker")
    assert account["automountServiceAccountToken"] is False
    with_s3 = "s3" in build
    for deployment in modelyard_deployments(objects):
        spec = deployment["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        is_worker = deployment["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
        assert (spec.get("serviceAccountName") == "modelyard-worker") == is_worker, deployment["metadata"]
        assert spec["automountServiceAccountToken"] is False
        env = env_of(container)
        sources = {s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s}
        assert "modelyard-settings" in sources, "the shared settings survive the component's patch"
        gets_keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= env.keys()
        assert gets_keys == (is_worker and with_s3), deployment["metadata"]["name"]
        assert ("modelyard-object-store" in sources) == (is_worker and with_s3)
        if gets_keys:
            assert env["AWS_SECRET_ACCESS_KEY"] == {
                "secretKeyRef": {"name": "modelyard-object-store", "key": "secret_access_key"}
            }
    if with_s3:
        endpoint = find(objects, "ConfigMap", "modelyard-object-store")["data"]["AWS_ENDPOINT_URL"]
        assert endpoint.startswith(("http://", "https://"))
