"""``accelerators: auto``: GPUs chosen from the model's size, read from its name (``8B``,
``70B``, ``8x7B``, ``1.5B``): weights in 16 bits (2 bytes per parameter) plus a quarter for
the KV cache and activations must fit in the GPUs' memory. Multi-GPU choices also set vLLM's
``--tensor-parallel-size`` (unless the deployment sets it)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from cic_orchestrator.nodes import InvalidNodeRequest

AUTO = "auto"
_SIZE = re.compile(r"(?:^|[-_./])(?:(\d{1,3})x)?(\d{1,4}(?:\.\d{1,2})?)[bB](?=$|[-_./])")
# (GiB of GPU memory, accelerators), smallest first.
CHOICES: tuple[tuple[int, str], ...] = (
    (24, "L4:1"),
    (48, "L40S:1"),
    (80, "H100:1"),
    (160, "H100:2"),
    (320, "H100:4"),
    (640, "H100:8"),
)
BYTES_PER_PARAMETER = 2
OVERHEAD = 1.25
TP_FLAG = "--tensor-parallel-size"


def parameters_billion(model: str) -> float:
    match = _SIZE.search(model)
    if match is None:
        raise InvalidNodeRequest(
            f"accelerators auto: cannot tell the size of {model} from its name; "
            "name the accelerators, e.g. H100:1"
        )
    experts = int(match.group(1) or 1)
    return experts * float(match.group(2))


def choose(model: str, cloud: str, vllm_args: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """The accelerators for ``model`` and its flags with the tensor parallelism they need."""
    if cloud == "local":
        return "SIM:1", tuple(vllm_args)
    need_gib = parameters_billion(model) * BYTES_PER_PARAMETER * OVERHEAD
    for memory_gib, accelerators in CHOICES:
        if need_gib <= memory_gib:
            count = int(accelerators.split(":")[1])
            args = tuple(vllm_args)
            if count > 1 and not any(a.split("=")[0] == TP_FLAG for a in args):
                args += (f"{TP_FLAG}={count}",)
            return accelerators, args
    raise InvalidNodeRequest(
        f"accelerators auto: {model} needs about {math.ceil(need_gib)} GiB, more than one "
        "node of 8 H100; name the accelerators"
    )
