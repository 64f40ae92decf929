"""Scaling policies: per model, how many nodes to keep and how to launch new ones (table
``orchestrator.scaling_policies``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import asyncpg

from cic_orchestrator.nodes import InvalidNodeRequest, NodeError
from cic_orchestrator.sizing import AUTO, choose
from cic_orchestrator.validation import check_accelerators, check_cloud, check_model

MAX_NODES = 1000
MAX_LATENCY_MS = 600_000.0


class PolicyNotFound(NodeError):
    """No scaling policy for that model (NOT_FOUND)."""


@dataclass(frozen=True)
class ScalingPolicy:
    model: str
    min_nodes: int
    max_nodes: int
    target_queue_per_node: float
    accelerators: str = ""
    cloud: str = ""
    use_spot: bool = False
    vllm_args: tuple[str, ...] = ()
    clouds: tuple[str, ...] = ()
    # Mean time to first token (ms) above which one more node is wanted; 0: not used.
    target_latency_ms: float = 0.0

    @property
    def launch_cloud(self) -> str:
        """The cloud a new node is launched with (several infras: SkyPilot picks)."""
        return ",".join(self.clouds) if self.clouds else self.cloud

    def launch_resources(self) -> tuple[str, tuple[str, ...]]:
        """Accelerators and flags of a new node (``auto`` chosen from the model's size)."""
        if self.accelerators == AUTO:
            return choose(self.model, self.launch_cloud, self.vllm_args)
        return self.accelerators, self.vllm_args

    def desired_nodes(
        self,
        queued: float,
        current: int = 0,
        latency_ms: float | None = None,
        launching: bool = False,
    ) -> int:
        """Nodes needed so that each holds about ``target_queue_per_node`` of ``queued``; and,
        with a latency target, while ``latency_ms`` (the nodes' recent mean time to first
        token; None: no request started lately) is above it, one more than the ``current``
        nodes — or as many while one is ``launching`` (its effect is not seen yet). Within
        the bounds either way."""
        wanted = math.ceil(queued / self.target_queue_per_node - 1e-9) if queued > 0 else 0
        if self.latency_too_high(latency_ms) and current > 0:
            wanted = max(wanted, current if launching else current + 1)
        return max(self.min_nodes, min(self.max_nodes, wanted))

    def latency_too_high(self, latency_ms: float | None) -> bool:
        return 0 < self.target_latency_ms < (latency_ms if latency_ms is not None else 0)


def check_policy(policy: ScalingPolicy) -> ScalingPolicy:
    """Checks the numbers and names (the launch fields are checked by the provider too)."""
    check_model(policy.model)
    if policy.accelerators != AUTO:
        check_accelerators(policy.accelerators)
    check_cloud(policy.cloud)
    if policy.clouds:
        check_cloud(policy.launch_cloud)
    if not 0 <= policy.min_nodes <= MAX_NODES:
        raise InvalidNodeRequest(f"min_nodes must be between 0 and {MAX_NODES}")
    if not policy.min_nodes <= policy.max_nodes <= MAX_NODES:
        raise InvalidNodeRequest(f"max_nodes must be between min_nodes and {MAX_NODES}")
    if policy.max_nodes == 0:
        raise InvalidNodeRequest("max_nodes must be at least 1")
    target = policy.target_queue_per_node
    if not math.isfinite(target) or not 0 < target <= 100_000:
        raise InvalidNodeRequest("target_queue_per_node must be above 0 and at most 100000")
    latency = policy.target_latency_ms
    if not math.isfinite(latency) or not 0 <= latency <= MAX_LATENCY_MS:
        raise InvalidNodeRequest(
            f"target_latency_ms must be between 0 (not used) and {MAX_LATENCY_MS:g}"
        )
    return policy


def _policy(row: asyncpg.Record) -> ScalingPolicy:
    return ScalingPolicy(
        model=row["model"],
        min_nodes=row["min_nodes"],
        max_nodes=row["max_nodes"],
        target_queue_per_node=row["target_queue_per_node"],
        accelerators=row["accelerators"],
        cloud=row["cloud"],
        use_spot=row["use_spot"],
        vllm_args=tuple(json.loads(row["vllm_args"])),
        clouds=tuple(json.loads(row["clouds"])),
        target_latency_ms=row["target_latency_ms"],
    )


class PolicyStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def put(self, policy: ScalingPolicy) -> ScalingPolicy:
        row = await self._pool.fetchrow(
            "INSERT INTO scaling_policies (model, min_nodes, max_nodes, target_queue_per_node,"
            " accelerators, cloud, use_spot, vllm_args, clouds, target_latency_ms)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, $10)"
            " ON CONFLICT (model) DO UPDATE SET min_nodes = $2, max_nodes = $3,"
            " target_queue_per_node = $4, accelerators = $5, cloud = $6, use_spot = $7,"
            " vllm_args = $8::jsonb, clouds = $9::jsonb, target_latency_ms = $10,"
            " updated_at = now()"
            " RETURNING *",
            policy.model,
            policy.min_nodes,
            policy.max_nodes,
            policy.target_queue_per_node,
            policy.accelerators,
            policy.cloud,
            policy.use_spot,
            json.dumps(list(policy.vllm_args)),
            json.dumps(list(policy.clouds)),
            policy.target_latency_ms,
        )
        assert row is not None
        return _policy(row)

    async def get(self, model: str) -> ScalingPolicy:
        check_model(model)
        row = await self._pool.fetchrow("SELECT * FROM scaling_policies WHERE model = $1", model)
        if row is None:
            raise PolicyNotFound(f"no scaling policy for model {model}")
        return _policy(row)

    async def list(self) -> list[ScalingPolicy]:
        rows = await self._pool.fetch("SELECT * FROM scaling_policies ORDER BY model")
        return [_policy(r) for r in rows]

    async def delete(self, model: str) -> None:
        check_model(model)
        deleted = await self._pool.fetchval(
            "DELETE FROM scaling_policies WHERE model = $1 RETURNING model", model
        )
        if deleted is None:
            raise PolicyNotFound(f"no scaling policy for model {model}")
