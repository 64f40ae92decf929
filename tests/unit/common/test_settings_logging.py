"""Settings fail fast with one line naming the variable; logs never carry a secret."""

import io
import json
import logging

import pytest
from pydantic import Field

from cic_common.logging import RedactingFilter, configure_logging, redact
from cic_common.settings import (
    GrpcServiceSettings,
    HostPort,
    PostgresUrl,
    RedisUrl,
    SettingsError,
    parse_settings,
)


class _Settings(GrpcServiceSettings):
    database_url: str
    pool_size: int = Field(default=5, ge=1)


def test_settings_read_and_typed() -> None:
    s = parse_settings(
        _Settings, {"DATABASE_URL": "postgresql://x/y", "GRPC_PORT": "6000", "OTHER": "ignored"}
    )
    assert (s.database_url, s.grpc_port, s.pool_size, s.shutdown_grace_s) == (
        "postgresql://x/y",
        6000,
        5,
        25.0,
    )
    with pytest.raises(ValueError):
        s.grpc_port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "DATABASE_URL is required but not set"),
        ({"DATABASE_URL": "x", "GRPC_PORT": "nope"}, "GRPC_PORT is invalid"),
        ({"DATABASE_URL": "x", "POOL_SIZE": "0"}, "POOL_SIZE is invalid"),
        ({"DATABASE_URL": "x", "LOG_FORMAT": "xml"}, "LOG_FORMAT is invalid"),
    ],
)
def test_bad_settings_name_the_variable_in_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse_settings(_Settings, env)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "secret",
    [
        "sk-cic-AbCdEf0123456789_-xyzXYZ0123456789abcdefghij",
        "sk_test_51HxYzAbCdEf",
        "sk_live_abcdef123456",
        "whsec_abc123DEF",
    ],
)
def test_redact_removes_secrets(secret: str) -> None:
    assert secret not in redact(f"calling with {secret} now")


def test_redact_headers_and_bearer() -> None:
    text = redact(
        'headers={"Authorization": "Bearer abc.def", "X-Admin-Token": "t0ps3cr3t"}'
        " ADMIN_API_TOKEN=zzz"
    )
    for secret in ("abc.def", "t0ps3cr3t", "zzz"):
        assert secret not in text


@pytest.fixture
def root_logger_restored():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_log_lines_are_redacted_including_args_and_tracebacks(root_logger_restored) -> None:
    configure_logging("INFO", "json", "test-svc")
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    handler.stream = stream  # type: ignore[attr-defined]
    log = logging.getLogger("cic.test")
    key = "sk-cic-" + "Q" * 43
    log.info("key %s used", key)
    try:
        raise ValueError(f"bad key {key}")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    assert lines[0]["message"] == "key [REDACTED] used"
    assert lines[0]["service"] == "test-svc" and lines[0]["level"] == "INFO"
    assert key not in stream.getvalue()
    assert any(isinstance(f, RedactingFilter) for f in handler.filters)


class _Urls(GrpcServiceSettings):
    database_url: PostgresUrl
    redis_url: RedisUrl
    peer_addr: HostPort


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DATABASE_URL": "mysql://u:hunter2@h/db"}, "DATABASE_URL is invalid"),
        ({"REDIS_URL": "http://h"}, "REDIS_URL is invalid"),
        ({"PEER_ADDR": "h:99999"}, "PEER_ADDR is invalid"),
        ({"PEER_ADDR": "no-port"}, "PEER_ADDR is invalid"),
    ],
)
def test_shared_url_types_refuse_bad_values_without_echoing_them(env, message) -> None:
    good = {
        "DATABASE_URL": "postgresql://h/db",
        "REDIS_URL": "unix:///tmp/r.sock",
        "PEER_ADDR": "[::1]:5",
    }
    with pytest.raises(SettingsError) as err:
        parse_settings(_Urls, {**good, **env})
    assert str(err.value).startswith(message)
    assert "hunter2" not in str(err.value)
    assert parse_settings(_Urls, good).peer_addr == "[::1]:5"
