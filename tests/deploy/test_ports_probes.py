"""Ports, probes, addresses and scrape settings in the manifests match the services: the ports
their settings default to (the contract's table), the health service each gRPC server registers,
the gateway's routes, and the shutdown grace each service takes."""

from __future__ import annotations

import functools
import importlib

import pytest
from prometheus_client import CollectorRegistry

from cic_common.settings import parse_settings
from tests.deploy.manifests import (
    GRPC_SERVICES,
    SERVICES,
    Obj,
    Rendered,
    container_env,
    settings_class,
)
from tests.deploy.test_settings import environment

CONTRACT_PORTS = {
    "gateway": {"http": 8080, "metrics": 9100},
    "scheduler": {"grpc": 50051, "metrics": 9101},
    "billing": {"grpc": 50052, "metrics": 9102},
    "orchestrator": {"grpc": 50053, "metrics": 9103},
}
PORT_SETTING = {"http": "gateway_port", "grpc": "grpc_port", "metrics": "metrics_port"}


def container_ports(container: Obj) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def resolve(container: Obj, port: int | str) -> int:
    return container_ports(container)[port] if isinstance(port, str) else port


def env_of(rendered: Rendered, service: str) -> dict[str, str]:
    return environment(container_env(rendered, rendered.container(service)))


@pytest.mark.parametrize("service", SERVICES)
def test_ports_are_the_contracts_and_the_settings(rendered: Rendered, service: str) -> None:
    container = rendered.container(service)
    settings = parse_settings(settings_class(service), env_of(rendered, service))
    defaults = settings_class(service).model_fields
    assert container_ports(container) == CONTRACT_PORTS[service]
    for name, number in CONTRACT_PORTS[service].items():
        assert getattr(settings, PORT_SETTING[name]) == number, f"{service} {name} setting"
        assert defaults[PORT_SETTING[name]].default == number, f"{service} {name} default"


@pytest.mark.parametrize("service", GRPC_SERVICES)
def test_grpc_probes_ask_the_servers_health_service(rendered: Rendered, service: str) -> None:
    container = rendered.container(service)
    grpc_port = container_ports(container)["grpc"]
    pb2 = importlib.import_module(f"cic.{service}.v1.{service}_pb2")
    (service_name,) = (s.full_name for s in pb2.DESCRIPTOR.services_by_name.values())
    ready = container["readinessProbe"]["grpc"]
    # Readiness asks for the service itself (NOT_SERVING while stopping, or on a standby).
    assert ready == {"port": grpc_port, "service": service_name}
    # Liveness and start-up ask for the server as a whole.
    assert container["livenessProbe"]["grpc"] == {"port": grpc_port}
    assert container["startupProbe"]["grpc"] == {"port": grpc_port}


@functools.cache
def gateway_routes() -> frozenset[tuple[str, str]]:
    from cic_gateway.app import create_app

    environ = {
        "DATABASE_URL": "postgresql://u@h/db",
        "REDIS_URL": "redis://h:6379/0",
        "ADMIN_API_TOKEN": "t" * 40,
        "SCHEDULER_ADDR": "s:1",
        "BILLING_ADDR": "b:1",
        "ORCHESTRATOR_ADDR": "o:1",
    }
    app = create_app(parse_settings(settings_class("gateway"), environ), CollectorRegistry())
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        routes.add((route.method, str(info.get("path", info.get("formatter", "")))))
    return frozenset(routes)


def test_gateway_probes_are_its_health_routes(rendered: Rendered) -> None:
    container = rendered.container("gateway")
    routes = gateway_routes()
    for probe, path in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ]:
        http = container[probe]["httpGet"]
        assert http["path"] == path
        assert resolve(container, http["port"]) == CONTRACT_PORTS["gateway"]["http"]
        assert ("GET", path) in routes, f"the gateway serves no GET {path}"


@pytest.mark.parametrize("service", SERVICES)
def test_services_target_the_named_ports(rendered: Rendered, service: str) -> None:
    svc = rendered.get("Service", f"cic-{service}")
    pod_labels = rendered.deployment(service)["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    ports = container_ports(rendered.container(service))
    kind = "http" if service == "gateway" else "grpc"
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == kind and kind in ports
    assert port["appProtocol"] == kind


@pytest.mark.parametrize("service", GRPC_SERVICES)
def test_addresses_name_the_services(rendered: Rendered, service: str) -> None:
    """<SERVICE>_ADDR, wherever a service sets it, is that Service's name and port."""
    svc = rendered.get("Service", f"cic-{service}")
    (port,) = svc["spec"]["ports"]
    expected = f"{svc['metadata']['name']}:{port['port']}"
    users = [s for s in SERVICES if f"{service.upper()}_ADDR" in env_of(rendered, s)]
    assert users, f"nobody is told where cic-{service} is"
    for user in users:
        assert env_of(rendered, user)[f"{service.upper()}_ADDR"] == expected


@pytest.mark.parametrize("service", SERVICES)
def test_prometheus_scrapes_the_metrics_port(rendered: Rendered, service: str) -> None:
    template = rendered.deployment(service)["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    metrics = container_ports(rendered.container(service))["metrics"]
    assert int(annotations["prometheus.io/port"]) == metrics


def prestop_seconds(container: Obj) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if pre_stop is None:
        return 0.0
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", f"unexpected preStop {command}"
    return float(command[1])


@pytest.mark.parametrize("service", SERVICES)
def test_termination_grace_covers_the_shutdown_grace(rendered: Rendered, service: str) -> None:
    """The kubelet's SIGKILL comes only after the preStop pause and SHUTDOWN_GRACE_S, with
    a margin for flushing and closing."""
    settings = parse_settings(settings_class(service), env_of(rendered, service))
    spec = rendered.deployment(service)["spec"]["template"]["spec"]
    needed = prestop_seconds(rendered.container(service)) + settings.shutdown_grace_s
    assert spec["terminationGracePeriodSeconds"] >= needed + 5


def test_the_route_check_sees_routes() -> None:
    """gateway_routes() reads the real router: it finds the OpenAI routes, not an empty set."""
    assert ("POST", "/v1/chat/completions") in gateway_routes()
