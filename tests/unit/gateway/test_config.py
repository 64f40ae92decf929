"""Settings: required values, the admin token's length, addresses; one line naming the variable."""

import subprocess
import sys

import pytest

from cic_common.settings import SettingsError, parse_settings
from cic_gateway.config import GatewaySettings

GOOD = {
    "DATABASE_URL": "postgresql://u:secret-password@db:5432/cic",
    "REDIS_URL": "redis://redis:6379/0",
    "ADMIN_API_TOKEN": "t" * 32,
    "SCHEDULER_ADDR": "scheduler:50051",
    "BILLING_ADDR": "billing:50052",
    "ORCHESTRATOR_ADDR": "[::1]:50053",
}


def test_defaults() -> None:
    settings = parse_settings(GatewaySettings, GOOD)
    assert settings.gateway_port == 8080
    assert settings.metrics_port == 9100
    assert settings.max_body_bytes == 8 * 1024 * 1024
    assert settings.upstream_connect_timeout_s == 5
    assert settings.upstream_read_timeout_s == 600
    assert settings.shutdown_grace_s == 25
    assert settings.key_cache_ttl_s == 5
    assert "t" * 32 not in repr(settings)


def test_short_admin_token_is_refused_by_name() -> None:
    with pytest.raises(SettingsError) as err:
        parse_settings(GatewaySettings, {**GOOD, "ADMIN_API_TOKEN": "t" * 31})
    message = str(err.value)
    assert message.startswith("ADMIN_API_TOKEN is invalid")
    assert "32 characters" in message
    assert "t" * 31 not in message
    assert "\n" not in message


@pytest.mark.parametrize("name", sorted(GOOD))
def test_each_required_setting_is_named_when_missing(name: str) -> None:
    environ = {k: v for k, v in GOOD.items() if k != name}
    with pytest.raises(SettingsError, match=f"^{name} is required but not set$"):
        parse_settings(GatewaySettings, environ)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCHEDULER_ADDR", "scheduler"),
        ("BILLING_ADDR", "billing:0"),
        ("ORCHESTRATOR_ADDR", "http://orchestrator:50053"),
        ("DATABASE_URL", "mysql://u:secret-password@db/cic"),
        ("REDIS_URL", "http://redis"),
        ("KEY_CACHE_TTL_S", "30"),
    ],
)
def test_bad_values_are_named(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name} is invalid") as err:
        parse_settings(GatewaySettings, {**GOOD, name: value})
    assert "secret-password" not in str(err.value)


def test_the_process_refuses_to_start_with_a_short_token() -> None:
    env = {**GOOD, "ADMIN_API_TOKEN": "short", "PATH": ""}
    done = subprocess.run(
        [sys.executable, "-m", "cic_gateway"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("configuration error: ADMIN_API_TOKEN is invalid")
    assert "at least 32 characters" in lines[0]
