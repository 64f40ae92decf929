"""The node agent reaches GPU nodes without a package index: its wheel is built from
agents/node-agent (as the orchestrator's image build does), named by NODE_AGENT_PACKAGE, copied
to the node by the SkyPilot task's ``file_mounts`` (the real SDK uploads it to the stand-in API
server) and installed by the task's setup from where it lands; installed into a fresh virtual
environment, that wheel gives a working ``cic-node-agent``."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from cic.orchestrator.v1 import orchestrator_pb2 as pb
from cic_common.settings import SettingsError, parse_settings
from cic_orchestrator.config import Settings
from cic_orchestrator.providers import build_providers
from cic_orchestrator.task import AGENT_WHEEL_DIR_ON_NODE, DEFAULT_VLLM_VERSION
from tests.support.fake_skypilot import FakeSkyPilot
from tests.unit.orchestrator.conftest import Orchestrator, skypilot_env

ROOT = Path(__file__).resolve().parents[3]
AGENT = ROOT / "agents" / "node-agent"


def _uv() -> str:
    """uv as the Makefile finds it: on PATH, else the one `make` installs in .venv-tools."""
    found = shutil.which("uv") or str(ROOT / ".venv-tools" / "bin" / "uv")
    assert os.access(found, os.X_OK), "uv is needed to build the agent's wheel (make installs it)"
    return found


def _version() -> str:
    return str(tomllib.loads((AGENT / "pyproject.toml").read_text())["project"]["version"])


@pytest.fixture(scope="module")
def agent_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("agent-wheel")
    subprocess.run(
        [_uv(), "build", "--wheel", "--out-dir", str(out), str(AGENT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("cic_node_agent-*.whl")
    assert wheel.name == f"cic_node_agent-{_version()}-py3-none-any.whl"
    return wheel


async def test_a_launched_node_receives_the_wheel_its_setup_installs(
    skypilot: FakeSkyPilot, start_orchestrator, agent_wheel: Path, tmp_path: Path
) -> None:
    orchestrator: Orchestrator = await start_orchestrator(
        **skypilot_env(
            skypilot,
            NODE_AGENT_CONTROL_PLANE_URL="https://api.example.com",
            NODE_AGENT_PACKAGE=str(agent_wheel),
        )
    )
    launch = pb.LaunchNodeRequest(model="cic-sim-small", accelerators="H100:1", cloud="aws")
    node = (await orchestrator.stub.LaunchNode(launch)).node
    await orchestrator.wait_state(node.id, pb.NODE_STATE_READY)
    cluster = skypilot.clusters[f"cic-{node.id}"]
    on_node = f"{AGENT_WHEEL_DIR_ON_NODE}/{agent_wheel.name}"
    assert cluster.files == {on_node: agent_wheel.read_bytes()}
    assert any(call.startswith("upload_v2 ") for call in skypilot.calls)
    (task,) = [d for d in yaml.safe_load_all(cluster.task_yaml) if d and "setup" in d]
    setup = shlex.split(task["setup"])
    assert setup == ["pip", "install", f"vllm=={DEFAULT_VLLM_VERSION}", on_node]
    assert task["run"].splitlines()[0] == "cic-node-agent &"

    # What the setup installs, installed the same way into a fresh environment, runs.
    landed = tmp_path / "wheels" / Path(on_node).name
    landed.parent.mkdir()
    landed.write_bytes(cluster.files[on_node])
    venv = tmp_path / "venv"
    subprocess.run([_uv(), "venv", "--quiet", str(venv)], check=True, timeout=120)
    subprocess.run(
        [_uv(), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), landed],
        check=True,
        timeout=300,
    )
    agent = str(venv / "bin" / "cic-node-agent")
    helped = subprocess.run([agent, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: cic-node-agent")
    assert "CIC_CONTROL_PLANE_URL" in helped.stdout
    version = subprocess.run([agent, "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"cic-node-agent {_version()}"
    # Started without its settings it names the first one missing (its dependencies load).
    bare = subprocess.run(
        [agent], capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]}
    )
    assert bare.returncode == 2
    assert bare.stderr.startswith("cic-node-agent: CIC_NODE_ID")


def test_an_orchestrator_naming_a_wheel_that_is_not_there_does_not_start(
    skypilot: FakeSkyPilot, tmp_path: Path
) -> None:
    missing = tmp_path / "cic_node_agent-0.1.0-py3-none-any.whl"
    settings = parse_settings(
        Settings,
        {
            "DATABASE_URL": "postgresql://cic@127.0.0.1:5432/cic",
            "SCHEDULER_ADDR": "127.0.0.1:50051",
            **skypilot_env(skypilot),
            "NODE_AGENT_CONTROL_PLANE_URL": "https://api.example.com",
            "NODE_AGENT_PACKAGE": str(missing),
        },
    )
    with pytest.raises(SettingsError) as refused:
        build_providers(settings)
    assert str(refused.value) == f"NODE_AGENT_PACKAGE: there is no node agent wheel at {missing}"
    with pytest.raises(SettingsError, match="NODE_AGENT_PACKAGE"):
        parse_settings(
            Settings,
            {
                "DATABASE_URL": "postgresql://cic@127.0.0.1:5432/cic",
                "SCHEDULER_ADDR": "127.0.0.1:50051",
                "NODE_AGENT_CONTROL_PLANE_URL": "https://api.example.com",
            },
        )


def test_the_image_and_the_manifests_name_the_wheel_the_build_makes() -> None:
    wheel = f"/app/node-agent/cic_node_agent-{_version()}-py3-none-any.whl"
    dockerfile = (ROOT / "services" / "orchestrator" / "Dockerfile").read_text()
    assert "uv build --wheel --out-dir /app/node-agent agents/node-agent" in dockerfile
    assert f"NODE_AGENT_PACKAGE={wheel}" in dockerfile
    assert "COPY --from=builder /app/node-agent /app/node-agent" in dockerfile
    env = (ROOT / "deploy" / "k8s" / "base" / "config" / "orchestrator.env").read_text()
    assert re.search(rf"^NODE_AGENT_PACKAGE={re.escape(wheel)}$", env, re.MULTILINE)
