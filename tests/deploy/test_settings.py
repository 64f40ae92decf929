"""Every variable a service reads is set in every rendered target, with a value its settings
class accepts, and secrets come from Secret references only. The variables are read from the
settings classes at test time, so a new setting fails here until the manifests carry it."""

from __future__ import annotations

import pytest

from cic_common.settings import parse_settings
from tests.deploy.manifests import (
    SERVICES,
    EnvValue,
    Rendered,
    container_env,
    is_secret,
    settings_class,
    variables,
)

SECRET_NAME = "cic-secrets"
# Stand-ins for what the operator puts in the Secret, to check the whole environment parses.
SECRET_STAND_INS = {
    "database-url": "postgresql://cic:password@postgres.example:5432/cic?sslmode=require",
    "redis-url": "rediss://:password@redis.example:6379/0",
    "admin-api-token": "t" * 48,
    "stripe-api-key": "sk_live_0000000000000000",
    "stripe-webhook-secret": "whsec_0000000000000000",
    "skypilot-api-server-endpoint": "https://skypilot.example:46580",
    "smtp-password": "smtp-password",
    "oidc-client-secret": "oidc-client-secret",
}
POD_IP = "10.1.2.3"
# Variables read outside the settings classes: OpenTelemetry's own (cic_common.tracing).
OTEL_VARIABLES = {"OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME"}


def environment(env: dict[str, EnvValue]) -> dict[str, str]:
    """The environment the container would see, secrets replaced by stand-ins."""
    values = {}
    for name, source in env.items():
        if source.source == "secret":
            values[name] = SECRET_STAND_INS[source.secret[1]]
        elif source.source == "field":
            assert source.value == "status.podIP", f"{name}: unexpected field {source.value}"
            values[name] = POD_IP
        else:
            values[name] = source.value
    return values


@pytest.mark.parametrize("service", SERVICES)
def test_every_setting_is_set(rendered: Rendered, service: str) -> None:
    cls = settings_class(service)
    env = container_env(rendered, rendered.container(service))
    missing = variables(cls) - env.keys()
    assert not missing, f"{rendered.target}: cic-{service} does not set {sorted(missing)}"
    assert OTEL_VARIABLES <= env.keys()


@pytest.mark.parametrize("service", SERVICES)
def test_the_environment_parses(rendered: Rendered, service: str) -> None:
    """The values in the manifests are ones the service accepts (a bad one would stop it)."""
    cls = settings_class(service)
    env = container_env(rendered, rendered.container(service))
    parse_settings(cls, environment(env))


@pytest.mark.parametrize("service", SERVICES)
def test_service_config_names_only_its_own_settings(rendered: Rendered, service: str) -> None:
    """A misspelt variable in a service's ConfigMap would be ignored silently: none is."""
    config = rendered.get("ConfigMap", config_map_name(rendered, service, "config"))
    unknown = set(config["data"]) - variables(settings_class(service))
    assert not unknown, f"{rendered.target}: cic-{service}-config sets unknown {sorted(unknown)}"


@pytest.mark.parametrize("service", SERVICES)
def test_secrets_come_from_secret_references(rendered: Rendered, service: str) -> None:
    cls = settings_class(service)
    env = container_env(rendered, rendered.container(service))
    for field_name, field in cls.model_fields.items():
        if not is_secret(cls, field_name):
            continue
        name = field_name.upper()
        source = env[name]
        assert source.source == "secret", f"{rendered.target}: {name} of cic-{service} is a value"
        assert source.secret[0] == SECRET_NAME
        assert source.secret[1] in SECRET_STAND_INS
        # A setting the service cannot start without is not optional in the Secret either.
        assert source.optional == (not field.is_required()), f"{name} of cic-{service}"


def test_no_config_map_holds_a_secret(rendered: Rendered) -> None:
    secret_names = {
        name.upper()
        for service in SERVICES
        for name in settings_class(service).model_fields
        if is_secret(settings_class(service), name)
    }
    assert {"DATABASE_URL", "REDIS_URL", "ADMIN_API_TOKEN"} <= secret_names
    for config in rendered.of_kind("ConfigMap"):
        held = secret_names & set(config.get("data", {}))
        assert not held, f"{rendered.target}: ConfigMap {config['metadata']['name']} holds {held}"


def test_migrations_job_reads_the_database_url_from_the_secret(rendered: Rendered) -> None:
    spec = rendered.get("Job", "cic-migrate")["spec"]["template"]["spec"]
    for container in spec.get("initContainers", []) + spec["containers"]:
        env = container_env(rendered, container)
        assert env["DATABASE_URL"].source == "secret"
        assert env["DATABASE_URL"].secret == (SECRET_NAME, "database-url")


def config_map_name(rendered: Rendered, service: str, kind: str) -> str:
    """The rendered (hash-suffixed) name of ConfigMap cic-<service>-<kind> as the pod uses it."""
    wanted = f"cic-{service}-{kind}"
    for source in rendered.container(service).get("envFrom", []):
        name = source["configMapRef"]["name"]
        if name == wanted or name.rsplit("-", 1)[0] == wanted:
            return str(name)
    raise AssertionError(f"{rendered.target}: cic-{service} does not read {wanted}")


def test_shared_config_names_only_settings_some_service_reads(rendered: Rendered) -> None:
    shared = [
        c
        for c in rendered.of_kind("ConfigMap")
        if c["metadata"]["name"].rsplit("-", 1)[0] == "cic-config"
    ]
    assert len(shared) == 1
    known = set().union(*(variables(settings_class(s)) for s in SERVICES)) | OTEL_VARIABLES
    unknown = set(shared[0]["data"]) - known
    assert not unknown, f"{rendered.target}: cic-config sets unknown {sorted(unknown)}"
