"""The node registry in Redis, shared by every scheduler replica.

Every change is one Lua script (``lua/*.lua``, each prefixed with ``lua/common.lua``), so each
is atomic across replicas; a pick is one script and one round trip. The key layout is described
in ``lua/common.lua`` and the node hash in ``lua/register.lua``; every key starts with
``{REDIS_KEY_PREFIX}scheduler:``. Scripts touch node keys they compute from the model's node set,
so the registry needs a single Redis (or one hash slot), not a sharded cluster. Times are the
scheduler's wall clock (epoch seconds): replicas should keep their clocks in sync.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cic_common.redis import ScriptRunner
from cic_scheduler.nodes import (
    BreakerState,
    ExpiredLease,
    Lease,
    LoadSample,
    ModelNotServed,
    NodeNotFound,
    NodeSpec,
    NodeState,
    NodeStatus,
    NodeTerminated,
    NodeView,
    NoReadyNode,
    Outcome,
    PickRequest,
    RegistryUnavailable,
    Release,
    SchedulerError,
)
from cic_scheduler.policy import LoadScoring, Policy
from cic_scheduler.registry import NodeRegistry

_SCRIPTS = (
    "register",
    "touch",
    "deregister",
    "list",
    "load",
    "pick",
    "release",
    "expire",
    "probe",
    "reindex",
)
_EXPIRE_BATCH = 500
# Deadline of one round trip of scripts.
_SCRIPT_TIMEOUT_S = 2.0


def _script_source(name: str) -> str:
    folder = resources.files("cic_scheduler") / "lua"
    common = (folder / "common.lua").read_text(encoding="utf-8")
    return common + "\n" + (folder / f"{name}.lua").read_text(encoding="utf-8")


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Redis failures as :class:`RegistryUnavailable` (UNAVAILABLE to callers, who retry)."""
    try:
        yield
    except (RedisError, OSError) as err:
        raise RegistryUnavailable(str(err) or type(err).__name__) from err


class RedisNodeRegistry(NodeRegistry):
    def __init__(
        self,
        redis: Redis,
        key_prefix: str,
        *,
        lease_ttl_s: float,
        breaker_failures: int,
        breaker_open_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prefix = f"{key_prefix}scheduler:"
        self._lease_ttl_s = lease_ttl_s
        self._breaker_failures = breaker_failures
        self._breaker_open_s = breaker_open_s
        self._clock = clock
        self._scripts = {name: redis.register_script(_script_source(name)) for name in _SCRIPTS}
        # Replies come as text: every value the scripts return is a string or an integer.
        self._runner = ScriptRunner(redis, _SCRIPT_TIMEOUT_S, text=True)

    async def aclose(self) -> None:
        await self._runner.aclose()

    async def _run(self, name: str, *args: Any, keys: Sequence[str] = ()) -> Any:
        """One script's reply; calls made meanwhile share its round trip."""
        with _reachable():
            return await self._runner.call(self._scripts[name], keys, [self.prefix, *args])

    async def _run_many(self, calls: Sequence[tuple[str, list[str], list[Any]]]) -> list[Any]:
        """Each ``(script name, keys, args)`` run once, all in one round trip (each run atomic),
        on the script runner's own connections."""
        replies = await self._runner.run(
            [(self._scripts[name], keys, args) for name, keys, args in calls]
        )
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _view(self, reply: Sequence[Any], now: float) -> NodeView:
        node_id, in_flight, flat = reply
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        stored = BreakerState(fields.get("breaker", "closed"))
        breaker = self._breaker(stored, fields.get("opened_at"), now)
        load = None
        if fields.get("load_at"):
            load = LoadSample(
                running=float(fields["load_running"]),
                waiting=float(fields["load_waiting"]),
                kv_cache_usage=float(fields["load_kv"]),
                scraped_at=float(fields["load_at"]),
            )
        return NodeView(
            id=node_id,
            model=fields["model"],
            endpoint=fields["endpoint"],
            state=NodeState(fields["state"]),
            labels=json.loads(fields["labels"]),
            in_flight=int(in_flight),
            healthy=stored is BreakerState.CLOSED,
            last_heartbeat=datetime.fromtimestamp(float(fields["heartbeat"]), UTC),
            load=load,
            breaker=breaker,
        )

    def _breaker(self, stored: BreakerState, opened_at: str | None, now: float) -> BreakerState:
        """The breaker as callers see it: a stored open one is half-open once it has been open
        for ``breaker_open_s`` (its trial pick is then allowed)."""
        if stored is BreakerState.OPEN and now >= float(opened_at or 0) + self._breaker_open_s:
            return BreakerState.HALF_OPEN
        return stored

    def _status(self, reply: Sequence[Any], now: float) -> NodeStatus:
        node_id, in_flight, model, state, breaker, opened_at = reply
        return NodeStatus(
            id=node_id,
            model=model,
            state=NodeState(state),
            in_flight=int(in_flight),
            breaker=self._breaker(BreakerState(breaker), opened_at, now),
        )

    def _breaker_args(self) -> tuple[float, int]:
        return self._breaker_open_s, self._breaker_failures

    async def register(self, spec: NodeSpec) -> NodeView:
        now = self._clock()
        labels = json.dumps(dict(spec.labels), sort_keys=True)
        region = spec.labels.get("region", "")
        reply = await self._run(
            "register", spec.id, spec.model, spec.endpoint, spec.state.value, labels, now, region
        )
        return self._view(reply, now)

    async def _touch(self, node_id: str, action: str) -> NodeView:
        now = self._clock()
        reply = await self._run("touch", node_id, action, now)
        status = reply[0]
        if status == "missing":
            raise NodeNotFound(node_id)
        if status == "terminal":
            raise NodeTerminated(node_id, NodeState(reply[1]))
        return self._view(reply[1], now)

    async def heartbeat(self, node_id: str) -> NodeView:
        return await self._touch(node_id, "heartbeat")

    async def drain(self, node_id: str) -> NodeView:
        return await self._touch(node_id, "drain")

    async def deregister(self, node_id: str) -> None:
        if not await self._run("deregister", node_id):
            raise NodeNotFound(node_id)

    async def list_nodes(self, model: str | None = None) -> list[NodeView]:
        now = self._clock()
        replies = await self._run("list", model or "")
        return sorted((self._view(r, now) for r in replies), key=lambda v: v.id)

    async def update_load(self, node_id: str, sample: LoadSample) -> None:
        await self._run(
            "load",
            node_id,
            sample.running,
            sample.waiting,
            sample.kv_cache_usage,
            sample.scraped_at,
        )

    def _pick_call(
        self, request: PickRequest, policy: Policy, now: float
    ) -> tuple[str, list[str], list[Any]]:
        """A new lease id and the pick script's keys and arguments for ``request``."""
        rule = policy.rule()
        lease_id = uuid.uuid4().hex
        p = self.prefix
        keys = [
            f"{p}model:{request.model}",
            f"{p}turn:{request.model}",
            f"{p}lease_expiry",
            f"{p}lease_node",
        ]
        args = [
            p,
            now,
            lease_id,
            now + self._lease_ttl_s,
            self._breaker_open_s,
            rule.mode,
            rule.scoring.waiting_weight,
            rule.scoring.kv_cache_weight,
            rule.scoring.max_sample_age_s,
            rule.max_extra_load,
            request.prefix_key,
            request.model,
            request.region,
            *sorted(request.exclude_node_ids),
        ]
        return lease_id, keys, args

    def _picked(self, request: PickRequest, lease_id: str, reply: Any, now: float) -> Lease:
        status = reply[0]
        if status == "not_served":
            raise ModelNotServed(request.model)
        if status == "no_node":
            raise NoReadyNode(request.model)
        return Lease(lease_id=lease_id, node=self._view(reply[1], now), trial=bool(reply[2]))

    async def release_and_acquire(
        self, returns: Sequence[tuple[str, Outcome]], picks: Sequence[tuple[PickRequest, Policy]]
    ) -> tuple[list[Release], list[Lease | SchedulerError]]:
        """Each release, then each pick, its own script (atomic each), all in one round trip."""
        now = self._clock()
        calls: list[tuple[str, list[str], list[Any]]] = [
            ("release", [], [self.prefix, lease_id, outcome.value, now, self._breaker_failures])
            for lease_id, outcome in returns
        ]
        lease_ids = []
        for request, policy in picks:
            lease_id, keys, args = self._pick_call(request, policy, now)
            lease_ids.append(lease_id)
            calls.append(("pick", keys, args))
        if not calls:
            return [], []
        with _reachable():
            replies = await self._run_many(calls)
        released = [self._release(reply, now) for reply in replies[: len(returns)]]
        results: list[Lease | SchedulerError] = []
        for (request, _), lease_id, reply in zip(
            picks, lease_ids, replies[len(returns) :], strict=True
        ):
            try:
                results.append(self._picked(request, lease_id, reply, now))
            except SchedulerError as err:
                results.append(err)
        return released, results

    def _release(self, reply: Sequence[Any], now: float) -> Release:
        if not reply[0]:
            return Release(node=None)
        transition = reply[1]
        return Release(
            node=self._status(reply[2], now),
            marked_unhealthy=transition == "opened",
            breaker_closed=transition == "closed",
        )

    async def reindex(self, scoring: LoadScoring) -> int:
        """Rebuilds every model's pick index from the node hashes; returns the node count."""
        return int(await self._run("reindex", scoring.waiting_weight, scoring.kv_cache_weight))

    async def expire_leases(self) -> list[ExpiredLease]:
        expired: list[ExpiredLease] = []
        while True:
            flat = await self._run("expire", self._clock(), _EXPIRE_BATCH)
            pairs = list(flat)
            expired.extend(
                ExpiredLease(*pair) for pair in zip(pairs[::2], pairs[1::2], strict=True)
            )
            if len(pairs) < 2 * _EXPIRE_BATCH:
                return expired

    async def record_probe(self, node_id: str, endpoint: str, ok: bool) -> NodeView | None:
        now = self._clock()
        reply = await self._run(
            "probe", node_id, endpoint, 1 if ok else 0, now, *self._breaker_args()
        )
        if not reply:
            return None
        return self._view(reply[1], now)
