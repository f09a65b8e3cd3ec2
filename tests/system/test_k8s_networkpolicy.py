"""The rendered NetworkPolicies, evaluated: who may reach each role, and who may reach PostgreSQL and NATS.

A small evaluator of the NetworkPolicy semantics these manifests use (pod and namespace selectors with
matchLabels and matchExpressions, ports, both directions) runs connections between the real pod labels of
each overlay's workloads and the peers of the documented assumptions: the Ingress controller in
`ingress-nginx`, Prometheus in `monitoring`, PostgreSQL in `db`, NATS in `nats`, DNS in `kube-system`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.system.test_k8s import NAMESPACE, OVERLAYS, ROLES, build, needs_kustomize, pod_templates

pytestmark = needs_kustomize

JOBS = ("migrate", "rebuild")
NAME_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)


INGRESS_CONTROLLER = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
POSTGRESQL = Pod("db", {"app.kubernetes.io/name": "postgresql"})
NATS = Pod("nats", {"app.kubernetes.io/name": "nats"})
DNS = Pod("kube-system", {"k8s-app": "kube-dns"})
# Something else in our namespace (a debugging pod someone started) and a pod of another app elsewhere.
STRANGER_HERE = Pod(NAMESPACE, {"app": "debug"})
STRANGER_ELSEWHERE = Pod("default", {"app": "other"})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector: {} selects everything; matchLabels and matchExpressions must all hold."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        held = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not held:
            return False
    return True


def peer_matches(peer: dict[str, Any], policy_namespace: str, other: Pod) -> bool:
    assert "ipBlock" not in peer, "the evaluator knows no ipBlock: extend it before using one"
    namespace_selector = peer.get("namespaceSelector")
    if namespace_selector is None:  # a podSelector alone means pods of the policy's own namespace
        in_namespace = other.namespace == policy_namespace
    else:
        in_namespace = selects(namespace_selector, {NAME_LABEL: other.namespace})
    return in_namespace and selects(peer.get("podSelector") or {}, other.labels)


def port_matches(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:  # no ports: every port
        return True
    return any(entry.get("protocol", "TCP") == protocol and entry.get("port") in (None, port) for entry in ports)


def allowed(policies: list[dict[str, Any]], source: Pod, target: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether a connection from `source` to `target:port` gets through both ends' policies."""
    return _direction(policies, source, target, port, protocol, "Egress") and _direction(
        policies, target, source, port, protocol, "Ingress"
    )


def _direction(policies: list[dict[str, Any]], pod: Pod, other: Pod, port: int, protocol: str, kind: str) -> bool:
    """One end: not isolated in this direction, or some rule of a policy selecting the pod allows the peer."""
    rules_key, peers_key = ("egress", "to") if kind == "Egress" else ("ingress", "from")
    selecting = [
        policy
        for policy in policies
        if policy["metadata"]["namespace"] == pod.namespace
        and kind in policy["spec"].get("policyTypes", ["Ingress"])
        and selects(policy["spec"]["podSelector"], pod.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(rules_key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(peer_matches(p, policy["metadata"]["namespace"], other) for p in peers)
            if peer_ok and port_matches(rule.get("ports"), port, protocol):
                return True
    return False


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def rendered(request) -> tuple[list[dict[str, Any]], dict[str, Pod]]:
    """The overlay's NetworkPolicies, and one pod per role and Job, with the labels its template gives it."""
    docs = build(OVERLAYS[request.param])
    policies = [doc for doc in docs if doc["kind"] == "NetworkPolicy"]
    pods = {}
    for template in pod_templates(docs).values():
        labels = template["metadata"]["labels"]
        pods[labels["app.kubernetes.io/component"]] = Pod(NAMESPACE, labels)
    assert sorted(pods) == sorted((*ROLES, *JOBS))
    return policies, pods


def test_every_pod_of_the_namespace_is_isolated_both_ways_by_default(rendered):
    """A pod that no other policy names (a debugging pod) can neither be reached nor reach anything."""
    policies, _ = rendered
    for other in (INGRESS_CONTROLLER, PROMETHEUS, STRANGER_ELSEWHERE):
        assert not allowed(policies, other, STRANGER_HERE, 8080)
    for target, port in ((POSTGRESQL, 5432), (NATS, 4222), (DNS, 53), (STRANGER_ELSEWHERE, 443)):
        assert not allowed(policies, STRANGER_HERE, target, port)


def test_ingest_and_query_accept_http_from_the_ingress_controller_and_prometheus_only(rendered):
    """Port 8080 of ingest and query is open to the Ingress controller and to Prometheus, to nobody else."""
    policies, pods = rendered
    for role in ("ingest", "query"):
        assert allowed(policies, INGRESS_CONTROLLER, pods[role], 8080), role
        assert allowed(policies, PROMETHEUS, pods[role], 8080), role
        assert not allowed(policies, INGRESS_CONTROLLER, pods[role], 9090), role
        for other in (STRANGER_HERE, STRANGER_ELSEWHERE, POSTGRESQL, NATS):
            assert not allowed(policies, other, pods[role], 8080), (role, other)


def test_projector_and_relay_accept_only_metrics_scrapes(rendered):
    """Projector and relay accept Prometheus on 8080 and nothing else, the Ingress controller included."""
    policies, pods = rendered
    for role in ("projector", "relay"):
        assert allowed(policies, PROMETHEUS, pods[role], 8080), role
        for other in (INGRESS_CONTROLLER, STRANGER_HERE, STRANGER_ELSEWHERE, NATS):
            assert not allowed(policies, other, pods[role], 8080), (role, other)


def test_the_jobs_accept_nothing(rendered):
    """The migrate and rebuild pods serve nothing, so nothing reaches them, Prometheus included."""
    policies, pods = rendered
    for job in JOBS:
        for other in (INGRESS_CONTROLLER, PROMETHEUS, STRANGER_HERE):
            assert not allowed(policies, other, pods[job], 8080), job


def test_only_the_roles_and_the_jobs_reach_postgresql_and_only_the_nats_users_reach_nats(rendered):
    """PostgreSQL:5432 from the four roles, migrate and rebuild; NATS:4222 from query, projector and relay
    (ingest never connects to NATS; the Jobs work on PostgreSQL alone); nothing else leaves the namespace."""
    policies, pods = rendered
    for name, pod in pods.items():
        assert allowed(policies, pod, POSTGRESQL, 5432), name
        assert allowed(policies, pod, NATS, 4222) == (name in ("query", "projector", "relay")), name
        assert allowed(policies, pod, DNS, 53, "UDP") and allowed(policies, pod, DNS, 53, "TCP"), name
        assert not allowed(policies, pod, POSTGRESQL, 4222), name
        assert not allowed(policies, pod, STRANGER_ELSEWHERE, 443), name
        assert not allowed(policies, pod, DNS, 5432), name
    assert not allowed(policies, STRANGER_HERE, POSTGRESQL, 5432)
    assert not allowed(policies, STRANGER_HERE, NATS, 4222)


def test_the_evaluator_agrees_with_the_specification_on_small_cases():
    """The evaluator itself: an empty selector selects all, a podSelector alone stays in its namespace,
    an unisolated pod accepts anything, and both ends must allow a connection."""
    here = {"metadata": {"namespace": "a"}}
    deny_all = {**here, "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}
    from_same_namespace = {
        **here,
        "spec": {"podSelector": {"matchLabels": {"x": "1"}}, "ingress": [{"from": [{"podSelector": {}}]}]},
    }
    pod_a, other_a, pod_b = Pod("a", {"x": "1"}), Pod("a", {"y": "2"}), Pod("b", {"x": "1"})
    assert allowed([], pod_b, pod_a, 80)
    assert allowed([from_same_namespace], other_a, pod_a, 80)
    assert not allowed([from_same_namespace], pod_b, pod_a, 80)
    assert not allowed([deny_all, from_same_namespace], other_a, pod_a, 80)  # the source's egress is denied
    assert allowed([from_same_namespace], pod_a, pod_b, 80)  # b has no policy at all
    assert selects({"matchExpressions": [{"key": "x", "operator": "NotIn", "values": ["2"]}]}, {"x": "1"})
    assert not selects({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}, {"x": "1"})
