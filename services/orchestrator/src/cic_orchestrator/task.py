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
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cic_orchestrator.nodes import InvalidNodeRequest
from cic_orchestrator.validation import (
    SWITCH,
    ValueCheck,
    check_accelerators,
    check_cloud,
    check_flag_args,
    check_model,
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


def check_vllm_version(value: str) -> str:
    if not _VERSION.fullmatch(value):
        raise ValueError("must be a vLLM release such as 0.33.0")
    return value


class TaskSettings(BaseModel):
    """What every rendered task shares (VLLM_VERSION, VLLM_PORT)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    vllm_version: str = DEFAULT_VLLM_VERSION
    vllm_port: int = Field(default=8000, ge=1024, le=65535)

    @field_validator("vllm_version")
    @classmethod
    def _version(cls, value: str) -> str:
        return check_vllm_version(value)


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


def task_config(task: NodeTask, settings: TaskSettings, name: str = "") -> dict[str, Any]:
    """The task as SkyPilot's YAML schema has it (``sky.Task.from_yaml_config`` takes it)."""
    resources: dict[str, Any] = {
        "accelerators": task.accelerators,
        "use_spot": task.use_spot,
        "ports": settings.vllm_port,
    }
    if task.cloud:
        resources["infra"] = task.cloud
    config: dict[str, Any] = {}
    if name:
        config["name"] = name
    config["resources"] = resources
    config["setup"] = "pip install " + shlex.quote(f"vllm=={settings.vllm_version}")
    config["run"] = run_command(task, settings.vllm_port)
    return config


def render_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)
