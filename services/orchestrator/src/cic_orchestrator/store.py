"""Node records in Postgres (schema ``orchestrator``); every state change is a compare-and-set."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg

from cic_orchestrator.nodes import (
    EndpointInUse,
    NodeHealth,
    NodeRecord,
    NodeSpec,
    NodeState,
    token_digest,
)


def _record(row: asyncpg.Record) -> NodeRecord:
    previous = row.get("previous_state")
    return NodeRecord(
        id=row["id"],
        model=row["model"],
        provider=row["provider"],
        accelerators=row["accelerators"],
        cloud=row["cloud"],
        vllm_args=tuple(json.loads(row["vllm_args"])),
        state=NodeState(row["state"]),
        endpoint=row["endpoint"],
        failure_reason=row["failure_reason"],
        provider_handle=json.loads(row["provider_handle"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        use_spot=row["use_spot"],
        health=NodeHealth(row["health"]),
        agent_seen_at=row["agent_seen_at"],
        agent_vllm_healthy=row["agent_vllm_healthy"],
        probe_failing_since=row["probe_failing_since"],
        has_agent_token=bool(row["agent_token_sha256"]),
        replaces=row["replaces"],
        replaced_by=row["replaced_by"],
        preemption=row["preemption"],
        previous_state=NodeState(previous) if previous else None,
    )


def _states(states: Iterable[NodeState]) -> list[str]:
    return [s.value for s in states]


class NodeStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(
        self,
        spec: NodeSpec,
        provider: str,
        state: NodeState,
        endpoint: str = "",
        handle: Mapping[str, Any] | None = None,
    ) -> NodeRecord:
        """Adds a node; raises :class:`EndpointInUse` if a live node has ``endpoint``."""
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO nodes (id, model, provider, accelerators, cloud, vllm_args, state,"
                " endpoint, use_spot, agent_token_sha256, replaces, provider_handle)"
                " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12::jsonb)"
                " RETURNING *",
                spec.node_id,
                spec.model,
                provider,
                spec.accelerators,
                spec.cloud,
                json.dumps(list(spec.vllm_args)),
                state.value,
                endpoint,
                spec.use_spot,
                token_digest(spec.agent_token) if spec.agent_token else "",
                spec.replaces,
                json.dumps(dict(handle or {})),
            )
        except asyncpg.UniqueViolationError:
            raise EndpointInUse(f"a live node already serves {endpoint}") from None
        assert row is not None
        return _record(row)

    async def get(self, node_id: str) -> NodeRecord | None:
        row = await self._pool.fetchrow("SELECT * FROM nodes WHERE id = $1", node_id)
        return None if row is None else _record(row)

    async def list(self, states: Sequence[NodeState] = ()) -> list[NodeRecord]:
        """Nodes oldest first; every node when ``states`` is empty."""
        rows = await self._pool.fetch(
            "SELECT * FROM nodes"
            " WHERE cardinality($1::text[]) = 0 OR state = ANY($1::text[])"
            " ORDER BY created_at, id",
            _states(states),
        )
        return [_record(r) for r in rows]

    async def set_launched(
        self, node_id: str, endpoint: str, handle: Mapping[str, Any]
    ) -> NodeRecord | None:
        """Stores where a provider started the node and how to find it again."""
        row = await self._pool.fetchrow(
            "UPDATE nodes SET endpoint = $2, provider_handle = $3::jsonb, updated_at = now()"
            " WHERE id = $1 RETURNING *",
            node_id,
            endpoint,
            json.dumps(dict(handle)),
        )
        return None if row is None else _record(row)

    async def transition(
        self,
        node_id: str,
        allowed_from: Sequence[NodeState],
        to: NodeState,
        failure_reason: str = "",
    ) -> NodeRecord | None:
        """Moves the node to ``to`` if it is in one of ``allowed_from``; else returns None. The
        returned record's ``previous_state`` is the state it left."""
        row = await self._pool.fetchrow(
            "UPDATE nodes AS n SET state = $3, failure_reason = $4, updated_at = now()"
            " FROM (SELECT id, state FROM nodes WHERE id = $1 FOR UPDATE) AS old"
            " WHERE n.id = old.id AND old.state = ANY($2::text[])"
            " RETURNING n.*, old.state AS previous_state",
            node_id,
            _states(allowed_from),
            to.value,
            failure_reason,
        )
        return None if row is None else _record(row)

    async def agent_token_digest(self, node_id: str) -> tuple[NodeState, str] | None:
        row = await self._pool.fetchrow(
            "SELECT state, agent_token_sha256 FROM nodes WHERE id = $1", node_id
        )
        return None if row is None else (NodeState(row["state"]), row["agent_token_sha256"])

    async def agent_seen(self, node_id: str, vllm_healthy: bool) -> None:
        """The agent reported now, saying whether vLLM's /health answers on its machine."""
        await self._pool.execute(
            "UPDATE nodes SET agent_seen_at = now(), agent_vllm_healthy = $2 WHERE id = $1",
            node_id,
            vllm_healthy,
        )

    async def set_preemption(self, node_id: str, notice: str) -> None:
        await self._pool.execute(
            "UPDATE nodes SET preemption = $2, agent_seen_at = now() WHERE id = $1",
            node_id,
            notice,
        )

    async def set_health(self, node_id: str, health: NodeHealth, probe_ok: bool) -> None:
        """Stores the node's health; the probes' failing streak starts (ends) with ``probe_ok``."""
        await self._pool.execute(
            "UPDATE nodes SET health = $2, probe_failing_since = CASE WHEN $3 THEN NULL"
            " ELSE coalesce(probe_failing_since, now()) END WHERE id = $1",
            node_id,
            health.value,
            probe_ok,
        )

    async def claim_replacement(self, node_id: str) -> bool:
        """True once per node: the caller launches its replacement."""
        claimed = await self._pool.fetchval(
            "UPDATE nodes SET replaced_by = 'pending' WHERE id = $1 AND replaced_by = ''"
            " RETURNING id",
            node_id,
        )
        return claimed is not None

    async def set_replaced_by(self, node_id: str, replacement_id: str) -> None:
        await self._pool.execute(
            "UPDATE nodes SET replaced_by = $2 WHERE id = $1", node_id, replacement_id
        )

    async def count_by_state(self) -> dict[tuple[str, str], int]:
        """``(state, provider)`` → number of nodes."""
        rows = await self._pool.fetch(
            "SELECT state, provider, count(*) AS n FROM nodes GROUP BY state, provider"
        )
        return {(r["state"], r["provider"]): int(r["n"]) for r in rows}
