"""Start-up reconcile of what a previous run left, and shutdown ending the local nodes."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import grpc
import psutil

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic.orchestrator.v1 import orchestrator_pb2_grpc
from cic_common.db import open_pool
from tests.support.net import free_port, wait_for_port
from tests.unit.orchestrator.conftest import (
    Orchestrator,
    answers,
    eventually,
    local_launch,
    now,
    process_runs,
    provider_handle,
)

SIM = str(Path(sys.executable).parent / "cic-vllm-sim")


async def _insert(pool, node_id: str, provider: str, state: str, endpoint: str, handle: dict):
    await pool.execute(
        "INSERT INTO nodes (id, model, provider, cloud, state, endpoint, provider_handle)"
        " VALUES ($1, 'cic-sim-small', $2, $3, $4, $5, $6::jsonb)",
        node_id,
        provider,
        "local" if provider == "local" else "",
        state,
        endpoint,
        json.dumps(handle),
    )


def _leftover_simulator(port: int) -> subprocess.Popen:
    """A simulator as a killed orchestrator leaves it: running, in its own session."""
    return subprocess.Popen(
        [SIM, "--host", "127.0.0.1", "--port", str(port), "--model", "cic-sim-small"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def test_reconcile_fails_lost_local_nodes_and_takes_back_external_ones(
    database_url: str, start_orchestrator, scheduler, running_server: str
) -> None:
    exited = subprocess.Popen(["true"])
    exited.wait()
    leftover_port = free_port()
    leftover = _leftover_simulator(leftover_port)
    await wait_for_port(leftover_port)
    leftover_handle = {
        "pid": leftover.pid,
        "port": leftover_port,
        "started_at": psutil.Process(leftover.pid).create_time(),
    }
    pool = await open_pool(database_url, "orchestrator", "cic_orchestrator.migrations")
    try:
        gone = {"pid": exited.pid, "port": 1, "started_at": 1.0}
        await _insert(pool, "node-00000000000a", "local", "ready", "http://127.0.0.1:1", gone)
        not_ours = {"pid": os.getpid(), "port": 2, "started_at": 1.0}
        await _insert(
            pool, "node-00000000000b", "local", "draining", "http://127.0.0.1:2", not_ours
        )
        endpoint = f"http://127.0.0.1:{leftover_port}"
        await _insert(pool, "node-00000000000c", "local", "launching", endpoint, leftover_handle)
        await _insert(pool, "node-00000000000d", "external", "ready", running_server, {})
        await _insert(pool, "node-00000000000e", "external", "draining", "http://127.0.0.1:3", {})
        await _insert(pool, "node-00000000000f", "local", "terminated", "http://127.0.0.1:4", gone)
    finally:
        await pool.close()

    orchestrator: Orchestrator = await start_orchestrator()
    for lost in ("node-00000000000a", "node-00000000000b", "node-00000000000c"):
        node = await orchestrator.node(lost)
        assert node.state == pb.NODE_STATE_FAILED
        assert node.failure_reason == "lost: orchestrator restarted"
    leftover.wait(timeout=10)  # ended (the simulator exits 0 on SIGTERM)

    await orchestrator.wait_state("node-00000000000d", pb.NODE_STATE_READY)
    await eventually(now(lambda: "node-00000000000d" in scheduler.nodes), "registered again")
    assert scheduler.nodes["node-00000000000d"].endpoint == running_server
    await orchestrator.wait_state("node-00000000000e", pb.NODE_STATE_TERMINATED)
    assert (await orchestrator.node("node-00000000000f")).state == pb.NODE_STATE_TERMINATED
    assert await answers(running_server)


async def test_shutdown_ends_the_simulators_it_started(
    database_url: str, start_orchestrator, scheduler
) -> None:
    orchestrator: Orchestrator = await start_orchestrator()
    ids = []
    for _ in range(2):
        ids.append((await orchestrator.stub.LaunchNode(local_launch())).node.id)
    handles = []
    for node_id in ids:
        await orchestrator.wait_state(node_id, pb.NODE_STATE_READY)
        await eventually(now(lambda node_id=node_id: node_id in scheduler.nodes), "registered")
        handles.append(await orchestrator.handle(node_id))
    assert all(process_runs(h) for h in handles)

    await orchestrator.service.stop()

    assert not any(process_runs(h) for h in handles)
    conn = await asyncpg.connect(database_url)
    try:
        states = await conn.fetch("SELECT id, state FROM orchestrator.nodes ORDER BY id")
    finally:
        await conn.close()
    assert {(r["id"], r["state"]) for r in states} == {(i, "terminated") for i in ids}
    for node_id in ids:
        assert scheduler.methods_for(node_id)[-1] == "DeregisterNode"
    assert scheduler.nodes == {}


async def test_the_command_serves_until_sigterm_then_ends_its_simulators(
    database_url: str, scheduler, tmp_path: Path
) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SCHEDULER_ADDR": scheduler.address,
        "GRPC_PORT": str(grpc_port),
        "METRICS_PORT": str(metrics_port),
        "HEALTH_POLL_INTERVAL_S": "0.05",
        "LOG_FORMAT": "console",
    }
    command = str(Path(sys.executable).parent / "cic-orchestrator")
    output = tmp_path / "orchestrator.log"
    with output.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        await wait_for_port(grpc_port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            node_id = (await stub.LaunchNode(local_launch())).node.id

            async def ready():
                node = (await stub.GetNode(pb.GetNodeRequest(node_id=node_id))).node
                return node.state == pb.NODE_STATE_READY

            await eventually(ready, "node ready")
        handle = await provider_handle(database_url, node_id)
        assert process_runs(handle)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert not process_runs(handle)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        print(output.read_text())  # shown when the test fails


async def test_the_command_names_a_missing_setting() -> None:
    command = str(Path(sys.executable).parent / "cic-orchestrator")
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SCHEDULER_ADDR")}
    process = await asyncio.create_subprocess_exec(
        command, "serve", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    assert process.returncode == 2
    assert stderr.decode().strip().splitlines() == [
        "configuration error: DATABASE_URL is required but not set"
    ]
