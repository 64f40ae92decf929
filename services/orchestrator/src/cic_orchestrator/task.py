"""The SkyPilot task a node is launched with: resources, a setup that installs vLLM, and a run
command that starts vLLM's OpenAI server with the node's checked arguments.

Every value that reaches the run command has passed a narrow check (model name, an allowlist
of vLLM flags with a check per value) and is quoted with :func:`shlex.quote` besides; the YAML
is written by ``yaml.safe_dump``, which quotes whatever needs it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from cic_orchestrator.nodes import InvalidNodeRequest
from cic_orchestrator.validation import (
    SWITCH,
    ValueCheck,
    check_accelerators,
    check_cloud,
    check_flag_args,
    check_model,
    cloud_list,
    matching,
    number,
    one_of,
    whole_number,
)

# The vLLM release new nodes install unless VLLM_VERSION says otherwise.
DEFAULT_VLLM_VERSION = "0.33.0"
_VERSION = re.compile(r"^\d{1,4}\.\d{1,4}(?:\.\d{1,4})?(?:\.post\d{1,4}|rc\d{1,4})?$")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}"

# vLLM server flags a launch may set, each with the check its value must pass. Flags that
# name files, hosts, ports, keys, templates or remote code are left out on purpose.
VLLM_FLAGS: dict[str, ValueCheck] = {
    "--tensor-parallel-size": whole_number(1, 64),
    "--pipeline-parallel-size": whole_number(1, 64),
    "--data-parallel-size": whole_number(1, 64),
    "--max-model-len": whole_number(1, 10_000_000),
    "--max-num-seqs": whole_number(1, 100_000),
    "--max-num-batched-tokens": whole_number(1, 10_000_000),
    "--gpu-memory-utilization": number(0.05, 1),
    "--swap-space": number(0, 1024),
    "--block-size": one_of("8", "16", "32", "64", "128"),
    "--dtype": one_of("auto", "half", "float16", "bfloat16", "float", "float32"),
    "--kv-cache-dtype": one_of("auto", "fp8", "fp8_e4m3", "fp8_e5m2"),
    "--quantization": one_of(
        "awq",
        "gptq",
        "fp8",
        "bitsandbytes",
        "marlin",
        "awq_marlin",
        "gptq_marlin",
        "compressed-tensors",
    ),
    "--seed": whole_number(0, 2**32 - 1),
    "--max-logprobs": whole_number(0, 1000),
    "--served-model-name": matching(_NAME, "a model name (letters, digits and . _ / : -)"),
    "--tokenizer": matching(_NAME, "a model name (letters, digits and . _ / : -)"),
    "--revision": matching(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "a branch, tag or commit"),
    "--enable-prefix-caching": SWITCH,
    "--enable-chunked-prefill": SWITCH,
    "--enforce-eager": SWITCH,
    "--enable-force-include-usage": SWITCH,
    "--disable-log-requests": SWITCH,
}


# What installs the node agent beside vLLM. Usually the wheel built from agents/node-agent (the
# orchestrator's image carries it): a local path, which the task's file_mounts copy to the node,
# so no package index is involved. Else a requirement on an index the nodes use, or a wheel's
# https URL. Empty: none chosen (then nodes cannot run the agent).
DEFAULT_AGENT_PACKAGE = ""
_AGENT_PACKAGE = re.compile(
    r"^(?:cic-node-agent(?:==\d{1,4}\.\d{1,4}\.\d{1,4})?"
    r"|https://[A-Za-z0-9.-]{1,253}(?::\d{1,5})?/[A-Za-z0-9._~/+-]{1,400}\.whl)$"
)
_AGENT_WHEEL = re.compile(
    r"^/(?:[A-Za-z0-9_][A-Za-z0-9._-]{0,100}/){0,20}"
    r"cic_node_agent-\d{1,4}\.\d{1,4}\.\d{1,4}-py3-none-any\.whl$"
)
# Where the task's file_mounts put the agent's wheel on the node (setup installs it from there):
# under the home directory of the user SkyPilot runs the task as.
AGENT_WHEEL_DIR_ON_NODE = "~/.cic/node-agent"
_CONTROL_PLANE = re.compile(
    r"^https?://[A-Za-z0-9.-]{1,253}(?::\d{1,5})?(?:/[A-Za-z0-9._~/-]{0,200})?$"
)
_NODE_ID = re.compile(r"^node-[0-9a-f]{12}$")
_AGENT_TOKEN = re.compile(r"^cic-node-[A-Za-z0-9_-]{43}$")


def is_agent_wheel_path(value: str) -> bool:
    return bool(_AGENT_WHEEL.fullmatch(value))


def check_agent_package(value: str, control_plane_url: str = "") -> str:
    """Checks the agent's install source (a wheel's path: its form; that the file is there is
    :func:`check_agent_wheel_exists`, on the machine that launches)."""
    if not value:
        if control_plane_url:
            raise ValueError(
                "required with a control-plane URL: the path of the node agent's wheel "
                "(uv build --wheel agents/node-agent), or a requirement or https URL"
            )
        return value
    if is_agent_wheel_path(value):
        if ".." in PurePosixPath(value).parts:
            raise ValueError("must be a path without ..")
        return value
    if not _AGENT_PACKAGE.fullmatch(value):
        raise ValueError(
            "must be the absolute path of a cic_node_agent-X.Y.Z-py3-none-any.whl, "
            "cic-node-agent, cic-node-agent==X.Y.Z or an https:// URL of a .whl"
        )
    return value


def check_control_plane_url(value: str) -> str:
    if value and not _CONTROL_PLANE.fullmatch(value):
        raise ValueError("must be the gateway's http(s):// URL (host, optional port and path)")
    return value.rstrip("/")


def check_vllm_version(value: str) -> str:
    if not _VERSION.fullmatch(value):
        raise ValueError("must be a vLLM release such as 0.33.0")
    return value


def check_agent_wheel_exists(settings: TaskSettings) -> None:
    """Raises ValueError when the task would copy an agent wheel that is not there."""
    package = settings.agent_package
    if settings.control_plane_url and is_agent_wheel_path(package) and not Path(package).is_file():
        raise ValueError(f"there is no node agent wheel at {package}")


class TaskSettings(BaseModel):
    """What every rendered task shares (VLLM_VERSION, VLLM_PORT)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    vllm_version: str = DEFAULT_VLLM_VERSION
    vllm_port: int = Field(default=8000, ge=1024, le=65535)
    # The gateway's public URL the node agent reports to; empty: no agent.
    control_plane_url: str = ""
    agent_package: str = Field(default=DEFAULT_AGENT_PACKAGE, validate_default=True)

    @field_validator("vllm_version")
    @classmethod
    def _version(cls, value: str) -> str:
        return check_vllm_version(value)

    @field_validator("control_plane_url")
    @classmethod
    def _control_plane(cls, value: str) -> str:
        return check_control_plane_url(value)

    @field_validator("agent_package")
    @classmethod
    def _agent_package(cls, value: str, info: ValidationInfo) -> str:
        return check_agent_package(value, info.data.get("control_plane_url", ""))


@dataclass(frozen=True)
class AgentIdentity:
    """Who the node's agent reports as: its node id and the per-node token (a task secret)."""

    node_id: str
    token: str = field(repr=False)

    def __post_init__(self) -> None:
        if not _NODE_ID.fullmatch(self.node_id) or not _AGENT_TOKEN.fullmatch(self.token):
            raise InvalidNodeRequest("the node agent's id or token is malformed")


@dataclass(frozen=True)
class NodeTask:
    """A checked launch request: the values are safe to put in a command."""

    model: str
    accelerators: str
    cloud: str = ""
    use_spot: bool = False
    vllm_args: tuple[str, ...] = ()


def check_task(
    model: str,
    accelerators: str,
    cloud: str = "",
    vllm_args: Sequence[str] = (),
    use_spot: bool = False,
) -> NodeTask:
    """Checks every field; raises :class:`InvalidNodeRequest` naming the first bad one."""
    check_model(model)
    if not accelerators:
        raise InvalidNodeRequest("accelerators is required, e.g. H100:1")
    check_accelerators(accelerators)
    check_cloud(cloud)
    if cloud == "local":
        raise InvalidNodeRequest("cloud `local` runs simulators, not SkyPilot tasks")
    args = tuple(check_flag_args(vllm_args, VLLM_FLAGS))
    return NodeTask(model, accelerators, cloud, use_spot, args)


def run_command(task: NodeTask, port: int) -> str:
    words = ["vllm", "serve", task.model, "--host", "0.0.0.0", "--port", str(port)]
    words += task.vllm_args
    return "exec " + shlex.join(words)


def _cloud_name(infra: str) -> str:
    """The agent's metadata service: aws, gcp or azure, else auto (it finds out)."""
    if "," in infra:
        return "auto"
    first = infra.split("/", 1)[0]
    return first if first in ("aws", "gcp", "azure") else "auto"


def task_config(
    task: NodeTask, settings: TaskSettings, name: str = "", agent: AgentIdentity | None = None
) -> dict[str, Any]:
    """The task as SkyPilot's YAML schema has it (``sky.Task.from_yaml_config`` takes it).

    With ``agent`` and a control-plane URL, the setup also installs ``cic-node-agent`` (a local
    wheel is copied to the node by the task's ``file_mounts`` and installed from there) and the
    run command starts it in the background before vLLM; the agent's token travels as a
    SkyPilot secret (redacted in SkyPilot's own displays), never in the command."""
    resources: dict[str, Any] = {
        "accelerators": task.accelerators,
        "use_spot": task.use_spot,
        "ports": settings.vllm_port,
    }
    infras = cloud_list(task.cloud)
    if len(infras) == 1:
        resources["infra"] = infras[0]
    elif infras:
        resources["any_of"] = [{"infra": infra} for infra in infras]
    config: dict[str, Any] = {}
    if name:
        config["name"] = name
    config["resources"] = resources
    packages = [f"vllm=={settings.vllm_version}"]
    copied = ""  # the agent's wheel on the node: a checked name, left unquoted for the `~`
    run = run_command(task, settings.vllm_port)
    if agent is not None and settings.control_plane_url:
        install = settings.agent_package
        if is_agent_wheel_path(install):
            copied = f"{AGENT_WHEEL_DIR_ON_NODE}/{PurePosixPath(install).name}"
            config["file_mounts"] = {copied: install}
        else:
            packages.append(install)
        config["envs"] = {
            "CIC_NODE_ID": agent.node_id,
            "CIC_CONTROL_PLANE_URL": settings.control_plane_url,
            "CIC_VLLM_URL": f"http://127.0.0.1:{settings.vllm_port}",
            "CIC_NODE_CLOUD": _cloud_name(task.cloud),
        }
        config["secrets"] = {"CIC_NODE_TOKEN": agent.token}
        run = "cic-node-agent &\n" + run
    config["setup"] = " ".join(["pip install", shlex.join(packages), copied]).rstrip()
    config["run"] = run
    return config


def render_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)
