"""NetworkPolicies, read as Kubernetes reads them: only the gateway's HTTP port is open to
everyone, each gRPC port only to that service's callers (found from the settings: a service
with ``<X>_ADDR`` calls X), metrics only to Prometheus, and nothing else at all."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import GRPC_SERVICES, SERVICES, Obj, Rendered, callers_of

WORLD = "anyone"
PROMETHEUS = "namespace monitoring"


def pod_labels(rendered: Rendered, service: str) -> dict[str, str]:
    return dict(rendered.deployment(service)["spec"]["template"]["metadata"]["labels"])


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def port_matches(rule_port: Obj, name: str, number: int) -> bool:
    port = rule_port.get("port")
    if port is None:
        return True
    if isinstance(port, str):
        return port == name
    end: int = rule_port.get("endPort") or port
    return port <= number <= end


def peers(rendered: Rendered, peer_list: list[Obj] | None) -> set[str]:
    """Who a rule's `from` admits: services of this namespace, Prometheus, or anyone."""
    if not peer_list:
        return {WORLD}
    admitted = set()
    for peer in peer_list:
        if "ipBlock" in peer:
            admitted.add(WORLD)
        elif "namespaceSelector" in peer:
            labels = peer["namespaceSelector"].get("matchLabels", {})
            assert labels == {"kubernetes.io/metadata.name": "monitoring"}, peer
            assert "podSelector" not in peer, peer
            admitted.add(PROMETHEUS)
        else:
            admitted |= {
                s for s in SERVICES if selects(peer["podSelector"], pod_labels(rendered, s))
            }
    return admitted


def admitted_to(rendered: Rendered, service: str, port_name: str) -> set[str]:
    """Everyone some policy admits to ``port_name`` of ``service``'s pods."""
    container = rendered.container(service)
    number = {p["name"]: p["containerPort"] for p in container["ports"]}[port_name]
    admitted: set[str] = set()
    for policy in rendered.of_kind("NetworkPolicy"):
        spec = policy["spec"]
        if "Ingress" not in spec["policyTypes"]:
            continue
        if not selects(spec["podSelector"], pod_labels(rendered, service)):
            continue
        for rule in spec.get("ingress", []):
            ports = rule.get("ports") or [{}]
            if any(port_matches(p, port_name, number) for p in ports):
                admitted |= peers(rendered, rule.get("from"))
    return admitted


def test_ingress_is_denied_by_default(rendered: Rendered) -> None:
    deny = [
        p
        for p in rendered.of_kind("NetworkPolicy")
        if p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"]
    ]
    assert len(deny) == 1
    assert not deny[0]["spec"].get("ingress")


def test_only_the_gateways_http_port_is_open_to_everyone(rendered: Rendered) -> None:
    assert admitted_to(rendered, "gateway", "http") == {WORLD}
    for service in SERVICES:
        for port in rendered.container(service)["ports"]:
            if (service, port["name"]) != ("gateway", "http"):
                assert WORLD not in admitted_to(rendered, service, port["name"]), (
                    f"{rendered.target}: {service} {port['name']} is open to everyone"
                )


def test_callers_are_found_in_the_settings() -> None:
    assert callers_of("scheduler") >= {"gateway", "orchestrator"}
    assert callers_of("billing") >= {"gateway"}
    assert callers_of("orchestrator") >= {"gateway"}


@pytest.mark.parametrize("service", GRPC_SERVICES)
def test_grpc_ports_admit_their_callers_only(rendered: Rendered, service: str) -> None:
    assert admitted_to(rendered, service, "grpc") == callers_of(service)


@pytest.mark.parametrize("service", SERVICES)
def test_metrics_ports_admit_prometheus_only(rendered: Rendered, service: str) -> None:
    assert admitted_to(rendered, service, "metrics") == {PROMETHEUS}
