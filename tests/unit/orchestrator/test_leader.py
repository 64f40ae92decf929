"""One active orchestrator among replicas: the holder of a Postgres advisory lock. Standbys
answer UNAVAILABLE and report their service NOT_SERVING until the leader dies."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic.orchestrator.v1 import orchestrator_pb2_grpc
from cic_orchestrator.providers.local import LocalProvider
from cic_orchestrator.server import SERVICE_NAME
from tests.support.net import free_port, wait_for_port
from tests.unit.orchestrator.conftest import (
    Orchestrator,
    eventually,
    local_launch,
    now,
    process_runs,
    provider_handle,
)
from tests.unit.orchestrator.test_agents import replacement_of

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(channel: grpc.aio.Channel, service: str = SERVICE_NAME) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return reply.status


async def _end_lock_connections(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )
    finally:
        await conn.close()


async def _refused_as_standby(stub: orchestrator_pb2_grpc.OrchestratorServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListNodes(pb.ListNodesRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "standby" in refused.value.details()


async def test_the_second_replica_stands_by_until_the_first_stops(start_orchestrator) -> None:
    first: Orchestrator = await start_orchestrator(LEADER_POLL_INTERVAL_S="0.05")
    second: Orchestrator = await start_orchestrator(LEADER_POLL_INTERVAL_S="0.05")
    assert (first.service.active, second.service.active) == (True, False)
    assert first.metric("cic_orchestrator_leader") == 1
    assert second.metric("cic_orchestrator_leader") == 0
    second_channel = second.channel
    assert await _health(second_channel) == NOT_SERVING
    assert await _health(second_channel, "") == SERVING  # the process itself is alive
    await _refused_as_standby(second.stub)
    await _refused_as_standby_for_every_call(second.stub)
    node_id = (await first.stub.LaunchNode(local_launch())).node.id

    await first.service.stop()

    async def took_over() -> bool:
        return await _health(second_channel) == SERVING

    await eventually(took_over, "standby active")
    assert second.metric("cic_orchestrator_leader") == 1
    node = await second.node(node_id)  # the first one ended its simulator on the way out
    assert node.state == pb.NODE_STATE_TERMINATED


async def test_the_leader_reports_serving_only_once_its_providers_are_warm(
    start_orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SkyPilot's SDK takes seconds to import: until a provider's warm-up ends, a readiness probe
    must not send launches (they would wait past the caller's deadline)."""
    warm = asyncio.get_running_loop().create_future()
    monkeypatch.setattr(LocalProvider, "warm_up", lambda self: warm)
    leader: Orchestrator = await start_orchestrator()
    assert leader.service.active
    assert await _health(leader.channel) == NOT_SERVING
    assert await _health(leader.channel, "") == SERVING  # the process itself is alive
    warm.set_result(None)

    async def serving() -> bool:
        return await _health(leader.channel) == SERVING

    await eventually(serving, "serving once warm")


async def _refused_as_standby_for_every_call(
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub,
) -> None:
    calls = [
        (stub.LaunchNode, local_launch()),
        (stub.RegisterNode, pb.RegisterNodeRequest(endpoint="http://127.0.0.1:1", model="m")),
        (stub.TerminateNode, pb.TerminateNodeRequest(node_id="node-000000000000")),
        (stub.GetNode, pb.GetNodeRequest(node_id="node-000000000000")),
        (stub.SetScalingPolicy, pb.SetScalingPolicyRequest()),
        (stub.GetScalingPolicy, pb.GetScalingPolicyRequest(model="m")),
        (stub.ListScalingPolicies, pb.ListScalingPoliciesRequest()),
        (stub.DeleteScalingPolicy, pb.DeleteScalingPolicyRequest(model="m")),
    ]
    for method, request in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await method(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, method


async def test_a_leader_that_loses_its_lock_connection_steps_down(
    start_orchestrator, database_url: str, running_server: str
) -> None:
    leader: Orchestrator = await start_orchestrator(LEADER_POLL_INTERVAL_S="0.5")
    standby: Orchestrator = await start_orchestrator(LEADER_POLL_INTERVAL_S="0.05")
    assert leader.service.active and not standby.service.active
    running = await leader.stub.RegisterNode(
        pb.RegisterNodeRequest(endpoint=running_server, model="cic-sim-small")
    )
    await leader.wait_state(running.node.id, pb.NODE_STATE_READY)
    await eventually(  # the gauges follow the records a moment later
        now(
            lambda: leader.metric("cic_orchestrator_nodes", state="ready", provider="external") == 1
        ),
        "the leader counts it",
    )

    assert await _end_lock_connections(database_url) == 1

    async def swapped() -> bool:
        return standby.service.active and not leader.service.active

    await eventually(swapped, "the standby leads and the old leader stands by")
    await _refused_as_standby(leader.stub)
    assert leader.metric("cic_orchestrator_leader") == 0
    # Node counts come from the leader only, so that summing over replicas counts once.
    assert leader.metric("cic_orchestrator_nodes", state="ready", provider="external") == 0
    # The new leader takes the registered server back (it is never stopped by a step-down).
    await standby.wait_state(running.node.id, pb.NODE_STATE_READY)
    await eventually(
        now(
            lambda: (
                standby.metric("cic_orchestrator_nodes", state="ready", provider="external") == 1
            )
        ),
        "the new leader counts it",
    )


async def test_a_lone_leader_that_loses_its_lock_connection_leads_on_with_its_nodes(
    start_orchestrator, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Postgres went away and came back (here: only the lock's connection was ended): with no
    other replica to take over, the leader takes the lock again and its simulators, which it
    left running meanwhile, go on serving; nothing is ended or replaced."""
    caplog.set_level(logging.INFO, logger="cic_orchestrator")
    leader: Orchestrator = await start_orchestrator(LEADER_POLL_INTERVAL_S="0.1")
    simulated = (await leader.stub.LaunchNode(local_launch())).node
    await leader.wait_state(simulated.id, pb.NODE_STATE_READY)
    handle = await provider_handle(database_url, simulated.id)

    assert await _end_lock_connections(database_url) == 1

    await eventually(
        now(lambda: "took the lock again" in caplog.text), "the leader takes the lock again"
    )
    await eventually(now(lambda: leader.service.active), "the leader leads again")
    assert await _health(leader.channel) == SERVING
    assert "lost the lock connection" in caplog.text
    assert process_runs(handle)  # the same simulator process, never stopped
    await leader.wait_state(simulated.id, pb.NODE_STATE_READY)
    nodes = (await leader.stub.ListNodes(pb.ListNodesRequest(), timeout=5)).nodes
    assert [(n.id, n.state) for n in nodes] == [(simulated.id, pb.NODE_STATE_READY)]
    assert leader.metric("cic_orchestrator_leader") == 1


async def test_the_new_leader_replaces_the_simulators_the_old_one_ended(
    start_orchestrator, database_url: str
) -> None:
    leader: Orchestrator = await start_orchestrator(LEADER_POLL_INTERVAL_S="0.5")
    standby: Orchestrator = await start_orchestrator(LEADER_POLL_INTERVAL_S="0.05")
    simulated = (await leader.stub.LaunchNode(local_launch())).node
    await leader.wait_state(simulated.id, pb.NODE_STATE_READY)
    assert await _end_lock_connections(database_url) == 1
    await eventually(now(lambda: standby.service.active), "the standby leads")
    # Its simulator ended with the old leader's lead (which replica records it first, and so
    # the reason, depends on timing): lost capacity, which the new leader replaces.
    await standby.wait_state(simulated.id, pb.NODE_STATE_FAILED)
    replacement = await replacement_of(standby, simulated.id)
    await standby.wait_state(replacement.id, pb.NODE_STATE_READY)


async def test_killing_the_leader_process_hands_over_to_the_standby(
    database_url: str, scheduler, tmp_path: Path
) -> None:
    ports = [free_port() for _ in range(4)]
    processes = []
    logs = []
    for index in range(2):
        log_path = tmp_path / f"orchestrator-{index}.log"
        logs.append(log_path)
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "SCHEDULER_ADDR": scheduler.address,
            "GRPC_PORT": str(ports[index]),
            "METRICS_PORT": str(ports[index + 2]),
            "HEALTH_POLL_INTERVAL_S": "0.05",
            "LEADER_POLL_INTERVAL_S": "0.1",
            "LOG_FORMAT": "console",
        }
        with log_path.open("wb") as sink:
            processes.append(
                subprocess.Popen(
                    [str(Path(sys.executable).parent / "cic-orchestrator")],
                    env=env,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            )
        await wait_for_port(ports[index])
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports[:2]]
    stubs = [orchestrator_pb2_grpc.OrchestratorServiceStub(c) for c in channels]
    try:
        assert await _health(channels[0]) == SERVING
        assert await _health(channels[1]) == NOT_SERVING
        await _refused_as_standby(stubs[1])
        node_id = (await stubs[0].LaunchNode(local_launch())).node.id

        async def ready() -> bool:
            node = (await stubs[0].GetNode(pb.GetNodeRequest(node_id=node_id))).node
            return node.state == pb.NODE_STATE_READY

        await eventually(ready, "node ready on the leader")
        handle = await provider_handle(database_url, node_id)
        assert process_runs(handle)

        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout=10)

        async def took_over() -> bool:
            return await _health(channels[1]) == SERVING

        await eventually(took_over, "the standby leads", timeout=30)
        # The new leader cannot supervise the dead leader's simulator: it ends it and fails it.
        lost = (await stubs[1].GetNode(pb.GetNodeRequest(node_id=node_id))).node
        assert lost.state == pb.NODE_STATE_FAILED
        assert lost.failure_reason == "lost: orchestrator restarted"
        assert not process_runs(handle)
        fresh = (await stubs[1].LaunchNode(local_launch())).node.id

        async def fresh_ready() -> bool:
            node = (await stubs[1].GetNode(pb.GetNodeRequest(node_id=fresh))).node
            return node.state == pb.NODE_STATE_READY

        await eventually(fresh_ready, "a node launched by the new leader is ready")
        processes[1].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(processes[1].wait, 30) == 0
    finally:
        for channel in channels:
            await channel.close()
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log_path in logs:
            print(log_path.read_text())  # shown when the test fails
