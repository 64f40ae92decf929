"""The service as a whole: settings, gRPC health, metrics, and the real process's life cycle."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import aiohttp
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic.scheduler.v1 import scheduler_pb2_grpc as pb_grpc
from cic_common.grpc_client import create_channel
from cic_common.settings import SettingsError, parse_settings
from cic_scheduler.config import SchedulerSettings
from tests.support.net import free_port, wait_for_port
from tests.unit.scheduler.support import RunningScheduler

REQUIRED = {"REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_settings_defaults() -> None:
    settings = parse_settings(SchedulerSettings, REQUIRED)
    assert (settings.grpc_port, settings.metrics_port, settings.shutdown_grace_s) == (
        50051,
        9101,
        25.0,
    )
    assert settings.health_probe_interval_s == 2.0
    assert settings.health_probe_timeout_s == 2.0
    assert (settings.breaker_failures, settings.breaker_open_s) == (3, 10.0)
    assert settings.redis_key_prefix == "cic:"
    assert (settings.routing_policy, settings.routing_policy_by_model) == ("least_loaded", "")
    assert settings.prefix_affinity_max_extra_load == 4.0
    assert settings.lease_ttl_s == 600.0
    assert settings.lease_sweep_interval_s == 10.0
    short = parse_settings(SchedulerSettings, {**REQUIRED, "LEASE_TTL_S": "0.2"})
    assert short.lease_sweep_interval_s == 0.05


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LEASE_TTL_S", "0"),
        ("BREAKER_FAILURES", "0"),
        ("HEALTH_PROBE_INTERVAL_S", "-1"),
        ("HEALTH_PROBE_TIMEOUT_S", "soon"),
        ("GRPC_PORT", "70000"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("ROUTING_POLICY", "random"),
        ("ROUTING_POLICY_BY_MODEL", "model-a=fastest"),
        ("ROUTING_POLICY_BY_MODEL", "model-a"),
        ("BREAKER_OPEN_S", "-1"),
    ],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        parse_settings(SchedulerSettings, {**REQUIRED, name: value})


def test_redis_url_is_required() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL"):
        parse_settings(SchedulerSettings, {})


async def test_health_service_reports_serving(scheduler: RunningScheduler) -> None:
    health = health_pb2_grpc.HealthStub(scheduler.channel)
    for name in ("", "cic.scheduler.v1.SchedulerService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _child_environment(**overrides: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GRPC_", "METRICS_"))}
    environ.update(overrides)
    return environ


async def test_process_serves_then_stops_cleanly_on_sigterm(
    redis_url: str, redis_prefix: str
) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cic_scheduler",
        env=_child_environment(
            GRPC_PORT=str(grpc_port),
            METRICS_PORT=str(metrics_port),
            REDIS_URL=redis_url,
            REDIS_KEY_PREFIX=redis_prefix,
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await wait_for_port(grpc_port)
        channel = create_channel(f"127.0.0.1:{grpc_port}")
        try:
            stub = pb_grpc.SchedulerServiceStub(channel)
            request = pb.RegisterNodeRequest(id="n1", model="m", endpoint="http://127.0.0.1:1")
            await stub.RegisterNode(request)
            assert [n.id for n in (await stub.ListNodes(pb.ListNodesRequest())).nodes] == ["n1"]
        finally:
            await channel.close()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
        ):
            exposition = await response.text()
        assert 'cic_scheduler_nodes{healthy="true",state="ready"} 1.0' in exposition
        process.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    messages = [json.loads(line)["message"] for line in stdout.decode().splitlines()]
    assert messages[-1] == "scheduler stopped"


async def test_process_refuses_a_bad_setting_with_one_line() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cic_scheduler",
        env=_child_environment(LEASE_TTL_S="never", REDIS_URL="redis://127.0.0.1:1/0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 2
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "LEASE_TTL_S" in lines[0]
