"""The node agent against local fakes of AWS's, GCP's and Azure's metadata services, a vLLM
server and the control plane: it registers once vLLM answers, heart-beats, and reports the
cloud's spot-termination notice at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime

import aiohttp
import pytest

from cic_node_agent.agent import NodeAgent
from cic_node_agent.config import load_settings
from tests.support.fake_cloud_metadata import CLOUDS, FakeCloudMetadata
from tests.unit.node_agent.conftest import FakeControlPlane, FakeVllm, eventually

NODE_ID = "node-0123456789ab"
TOKEN = "cic-node-" + "t" * 43


@pytest.fixture(params=CLOUDS)
async def metadata(request: pytest.FixtureRequest) -> AsyncIterator[FakeCloudMetadata]:
    fake = FakeCloudMetadata(request.param)
    await fake.start()
    yield fake
    await fake.stop()


def agent_env(control_plane: str, vllm: str, metadata: str, cloud: str = "auto") -> dict[str, str]:
    return {
        "CIC_NODE_ID": NODE_ID,
        "CIC_NODE_TOKEN": TOKEN,
        "CIC_CONTROL_PLANE_URL": control_plane,
        "CIC_VLLM_URL": vllm,
        "CIC_NODE_CLOUD": cloud,
        # Every cloud's address points at the one fake: `auto` must tell which cloud it is.
        "CIC_AWS_METADATA_URL": metadata,
        "CIC_GCP_METADATA_URL": metadata,
        "CIC_AZURE_METADATA_URL": metadata,
        "CIC_HEARTBEAT_INTERVAL_S": "0.05",
        "CIC_NOTICE_POLL_INTERVAL_S": "0.05",
        "CIC_VLLM_HEALTH_INTERVAL_S": "0.02",
        "CIC_HTTP_TIMEOUT_S": "2",
    }


async def test_registers_after_vllm_heartbeats_and_reports_the_notice_at_once(
    metadata: FakeCloudMetadata, control_plane: FakeControlPlane, vllm: FakeVllm
) -> None:
    settings = load_settings(agent_env(control_plane.url, vllm.url, metadata.url))
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        agent = NodeAgent(settings, session)
        running = asyncio.create_task(agent.run(stop))
        try:
            # vLLM still loads: nothing is registered, but the notice is watched already.
            await eventually((lambda: len(metadata.requests) >= 3), "metadata polled")
            await asyncio.sleep(0.1)
            assert control_plane.calls == []

            vllm.healthy = True
            await eventually((lambda: control_plane.paths().count("heartbeat") >= 2), "beats")
            first = control_plane.calls[0]
            assert first.path == f"/internal/nodes/{NODE_ID}/register"
            assert first.authorization == f"Bearer {TOKEN}"
            assert first.body == {"agent_version": "0.1.0"}
            assert control_plane.calls[1].body == {"vllm_healthy": True}
            # Azure's fake always lists a Preempt event for another VM: never ours.
            assert "preemption" not in control_plane.paths()

            metadata.expire_tokens()  # AWS: a stale session token is replaced, not fatal
            when = metadata.preempt(seconds_ahead=120)
            await eventually((lambda: "preemption" in control_plane.paths()), "preemption")
            reported = [c for c in control_plane.calls if c.path.endswith("/preemption")]
            assert len(reported) == 1
            body = reported[0].body
            assert body["cloud"] == metadata.cloud
            assert reported[0].authorization == f"Bearer {TOKEN}"
            if metadata.cloud == "gcp":
                assert body == {"cloud": "gcp", "notice": "preempted"}
            else:
                assert datetime.fromisoformat(body["not_after"]) == when
                assert body["notice"] == {"aws": "terminate", "azure": "Preempt"}[metadata.cloud]

            # Heartbeats go on while the node drains; the notice is reported once.
            beats = control_plane.paths().count("heartbeat")
            await eventually(
                (lambda: control_plane.paths().count("heartbeat") > beats + 1), "more beats"
            )
            assert control_plane.paths().count("preemption") == 1
        finally:
            stop.set()
            await asyncio.wait_for(running, 5)


async def test_stops_when_the_control_plane_says_the_node_is_gone(
    control_plane: FakeControlPlane, vllm: FakeVllm
) -> None:
    vllm.healthy = True
    env = agent_env(control_plane.url, vllm.url, "http://127.0.0.1:9", cloud="none")
    async with aiohttp.ClientSession() as session:
        agent = NodeAgent(load_settings(env), session)
        control_plane.state = "terminated"
        await asyncio.wait_for(agent.run(asyncio.Event()), 5)
    assert control_plane.paths() == ["register", "heartbeat"]


def test_a_missing_setting_stops_it_with_one_line_naming_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIC_")}
    env |= {"CIC_CONTROL_PLANE_URL": "http://127.0.0.1:1", "CIC_NODE_TOKEN": TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "cic_node_agent"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["cic-node-agent: CIC_NODE_ID: Field required"]
    assert TOKEN not in done.stderr
