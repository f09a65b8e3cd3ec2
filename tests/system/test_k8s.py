"""The kustomize manifests under k8s/: checked as files always, and built with kustomize when a binary is there.

PyYAML is not a declared dependency (it comes with the test extras' openapi tooling), so the module skips,
saying so, without it. The build checks use `kustomize build` or `kubectl kustomize`, whichever is on PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the k8s/ manifests")

K8S = Path(__file__).resolve().parents[2] / "k8s"
BASE = K8S / "base"
OVERLAYS = {"dev": K8S / "overlays" / "dev", "production": K8S / "overlays" / "production"}
ROLES = ("ingest", "query", "projector", "relay")
IMAGE = "ghcr.io/reciprocity-ledger/reciprocity"
CONFIGMAP = "reciprocity"
EXPECTED_REPLICAS = {
    "dev": {"ingest": 1, "query": 1, "projector": 1, "relay": 1},
    "production": {"ingest": 3, "query": 3, "projector": 2, "relay": 2},
}
# A database URL, a password, or credentials inside any URL (user:secret@host).
SECRET_LIKE = re.compile(r"postgres(ql)?://|passw(or)?d|DATABASE_URL|://[^/\s@]+:[^/\s@]+@", re.IGNORECASE)


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def referenced_paths(kust: dict[str, Any]) -> list[str]:
    """Every local path a kustomization names: resources, components, patches and strategic merge patches."""
    paths = [*kust.get("resources", []), *kust.get("components", []), *kust.get("patchesStrategicMerge", [])]
    paths += [patch["path"] for patch in kust.get("patches", []) if "path" in patch]
    return paths


def base_resources() -> list[dict[str, Any]]:
    return [doc for name in kustomization(BASE)["resources"] for doc in documents(BASE / name)]


def base_deployments() -> dict[str, dict[str, Any]]:
    """The base's Deployments by their component label."""
    found = [doc for doc in base_resources() if doc["kind"] == "Deployment"]
    by_role = {doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc for doc in found}
    assert len(by_role) == len(found), "two Deployments share a component label"
    return by_role


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def generator_literals(kust: dict[str, Any]) -> list[str]:
    return [literal for gen in kust.get("configMapGenerator", []) for literal in gen.get("literals", [])]


def test_every_file_a_kustomization_names_exists():
    """Each resources/components/patches entry of base and overlays is a file, or a directory with a kustomization."""
    for directory in (BASE, *OVERLAYS.values()):
        for entry in referenced_paths(kustomization(directory)):
            target = (directory / entry).resolve()
            if target.is_dir():
                assert (target / "kustomization.yaml").is_file(), f"{directory.name}: {entry} has no kustomization"
            else:
                assert target.is_file(), f"{directory.name}: {entry} does not exist"


def test_each_base_deployment_runs_its_own_role_with_the_health_probes():
    """One Deployment per role runs `reciprocity serve --role <its component>`, ready on /readyz, live on /healthz."""
    deployments = base_deployments()
    assert sorted(deployments) == sorted(ROLES)
    for role, deployment in deployments.items():
        assert deployment["metadata"]["name"] == f"reciprocity-{role}"
        labels = {"app.kubernetes.io/name": "reciprocity", "app.kubernetes.io/component": role}
        assert deployment["spec"]["selector"]["matchLabels"] == labels
        assert deployment["spec"]["template"]["metadata"]["labels"] == labels
        main = container(deployment)
        assert [*main["command"], *main["args"]] == ["reciprocity", "serve", "--role", role]
        assert main["image"] == IMAGE
        assert main["ports"] == [{"name": "http", "containerPort": 8080}]
        assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert annotations["prometheus.io/port"] == "8080"


def test_base_deployments_share_config_security_and_volumes():
    """Every role gets the generated ConfigMap, the URL from the Secret, a read-only root and the two emptyDirs."""
    for role, deployment in base_deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        main = container(deployment)
        assert main["envFrom"] == [{"configMapRef": {"name": CONFIGMAP}}], role
        assert main["env"] == [
            {
                "name": "RECIPROCITY_DATABASE_URL",
                "valueFrom": {"secretKeyRef": {"name": "reciprocity-database", "key": "url"}},
            }
        ], role
        assert pod["securityContext"]["runAsNonRoot"] is True, role
        assert main["securityContext"]["readOnlyRootFilesystem"] is True, role
        assert main["securityContext"]["allowPrivilegeEscalation"] is False, role
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: mount["name"] for mount in main["volumeMounts"]}
        assert set(mounts) == {"/var/lib/reciprocity", "/tmp"}, role
        assert all("emptyDir" in volumes[name] for name in mounts.values()), role
        assert pod["terminationGracePeriodSeconds"] >= 30, role
        for kind in ("requests", "limits"):
            assert set(main["resources"][kind]) == {"cpu", "memory"}, role


def test_services_and_budgets_select_the_ingest_and_query_pods():
    """Services reciprocity-ingest/-query send port 80 to the pods' http port; a PDB covers each; selectors match."""
    deployments = base_deployments()
    resources = base_resources()
    for kind in ("Service", "PodDisruptionBudget"):
        found = {doc["metadata"]["name"]: doc for doc in resources if doc["kind"] == kind}
        assert sorted(found) == ["reciprocity-ingest", "reciprocity-query"], kind
        for name, doc in found.items():
            role = name.removeprefix("reciprocity-")
            selector = doc["spec"]["selector"] if kind == "Service" else doc["spec"]["selector"]["matchLabels"]
            assert selector == deployments[role]["spec"]["template"]["metadata"]["labels"], name
            if kind == "Service":
                assert doc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http"}]


def test_no_configmap_literal_or_plain_env_value_holds_a_database_url_or_password():
    """configMapGenerator literals (base and overlays), ConfigMap resources and plain env values carry no secret."""
    values: list[str] = []
    for directory in (BASE, *OVERLAYS.values()):
        values += generator_literals(kustomization(directory))
        for path in directory.glob("*.yaml"):
            for doc in documents(path):
                if doc.get("kind") == "ConfigMap":
                    values += [f"{key}={value}" for key, value in (doc.get("data") or {}).items()]
    for deployment in base_deployments().values():
        values += [f"{env['name']}={env['value']}" for env in container(deployment)["env"] if "value" in env]
    assert values, "found no literals to check"
    offending = [value for value in values if SECRET_LIKE.search(value)]
    assert offending == []


def test_overlays_reference_only_the_base_and_their_own_files():
    """An overlay names ../../base plus its own files, uses every file it holds and redefines no base object."""
    base_names = {(doc["kind"], doc["metadata"]["name"]) for doc in base_resources()}
    for env, directory in OVERLAYS.items():
        kust = kustomization(directory)
        entries = referenced_paths(kust)
        assert "../../base" in kust["resources"], env
        own = [entry for entry in entries if entry != "../../base"]
        for entry in own:
            assert "/" not in entry and (directory / entry).is_file(), f"{env}: {entry} is not a file of its own"
        held = {path.name for path in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert held == set(own), f"{env}: files held but not used, or used but not held"
        for name in kust.get("resources", []):
            if name == "../../base":
                continue
            for doc in documents(directory / name):
                assert (doc["kind"], doc["metadata"]["name"]) not in base_names, f"{env}: {name} copies a base object"
        for generator in kust.get("configMapGenerator", []):
            assert generator.get("behavior") == "merge", f"{env}: the ConfigMap is merged, not replaced"


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


needs_kustomize = pytest.mark.skipif(
    kustomize_command() is None, reason="neither kustomize nor kubectl on PATH: only the file checks ran"
)


def build(directory: Path) -> list[dict[str, Any]]:
    command = kustomize_command()
    assert command is not None
    done = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def quantity(value: str | int) -> float:
    """A Kubernetes CPU or memory quantity as a number (only the suffixes these manifests use)."""
    text = str(value)
    for suffix, factor in (("m", 1e-3), ("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30)):
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


@needs_kustomize
@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_each_overlay_builds_with_its_replicas_image_and_hashed_configmap(env):
    """The overlay builds with its replicas, and every pod uses the one hash-named ConfigMap, so a change rolls them."""
    docs = build(OVERLAYS[env])
    (configmap,) = by_kind(docs, "ConfigMap").values()
    assert re.fullmatch(rf"{CONFIGMAP}-[a-z0-9]{{10}}", configmap["metadata"]["name"])
    assert configmap["data"]["RECIPROCITY_LOG_FORMAT"] == ("console" if env == "dev" else "json")
    assert configmap["data"]["RECIPROCITY_HTTP_HOST"] == "0.0.0.0"  # merged, not replaced
    assert configmap["data"]["RECIPROCITY_DATA_DIR"] == "/var/lib/reciprocity"
    assert not any(SECRET_LIKE.search(f"{key}={value}") for key, value in configmap["data"].items())
    deployments = by_kind(docs, "Deployment")
    assert {name: d["spec"]["replicas"] for name, d in deployments.items()} == {
        f"reciprocity-{role}": count for role, count in EXPECTED_REPLICAS[env].items()
    }
    for name, deployment in deployments.items():
        main = container(deployment)
        assert main["image"] == f"{IMAGE}:latest", name
        assert main["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}], name
        role = name.removeprefix("reciprocity-")
        assert main["args"] == ["serve", "--role", role], name


@needs_kustomize
def test_dev_asks_for_less_than_the_base_for_every_role():
    """The dev patch reaches every Deployment and lowers each request and limit below the base's."""
    base = by_kind(build(BASE), "Deployment")
    dev = by_kind(build(OVERLAYS["dev"]), "Deployment")
    assert set(dev) == set(base)
    for name in base:
        ours, theirs = container(dev[name])["resources"], container(base[name])["resources"]
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                assert quantity(ours[kind][resource]) < quantity(theirs[kind][resource]), (name, kind, resource)
    assert by_kind(build(OVERLAYS["dev"]), "HorizontalPodAutoscaler") == {}


@needs_kustomize
def test_production_autoscales_ingest_and_query_on_cpu_from_their_replica_count():
    """Production has a CPU HPA for ingest and query only, its floor being the Deployment's replicas."""
    docs = build(OVERLAYS["production"])
    deployments = by_kind(docs, "Deployment")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    assert sorted(hpas) == ["reciprocity-ingest", "reciprocity-query"]
    for name, hpa in hpas.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert spec["minReplicas"] == deployments[name]["spec"]["replicas"] < spec["maxReplicas"]
        assert [metric["resource"]["name"] for metric in spec["metrics"]] == ["cpu"]
        assert "cpu" in container(deployments[name])["resources"]["requests"]  # utilization needs a request
