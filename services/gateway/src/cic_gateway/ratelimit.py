"""Layered limits, shared by every replica through Redis: per API key (requests and tokens per
minute, concurrent requests), per environment (tokens per minute and per day, concurrent
requests), per tenant (requests and tokens per minute) and for the whole platform (requests and
tokens per minute, ``GLOBAL_RPM_LIMIT``/``GLOBAL_TPM_LIMIT``).

Algorithm: GCRA, run in Redis as one Lua script (``ratelimit.lua``, where it is explained) that
checks every bucket and concurrency set that applies to a request and takes from all of them or
from none, on Redis's clock: one script call admits a request, one more settles it when it ends.
A full window's worth may be used at once; after that, capacity comes back continuously (one
request every 60/RPM seconds). A refusal names the layer that refused (the 429's message and its
``x-ratelimit-scope`` header).

Concurrency slots are leases (a sorted set per key or environment, one member per request in
flight, scored with the lease's end): the limiter renews its leases every third of
``CONCURRENCY_LEASE_S`` while their requests run and removes them when they end, on every path;
the leases of a gateway that died run out on their own, so no slot is lost for longer than that.

Tokens are reserved before the request goes to a node: the prompt estimated without a tokenizer
(its text's UTF-8 bytes / 4, rounded up) plus the completion's cap (``max_tokens`` or
``max_completion_tokens``, times ``n``; ``DEFAULT_MAX_TOKENS_ESTIMATE`` when the client sets
none). Afterwards the reservation is settled with the tokens the node reported, on every path:
what was not used goes back, what was used beyond it is charged (which can take a bucket over
its limit; the next request then waits). A request estimated above a whole bucket is reserved
the whole bucket, so that a low limit delays it rather than refusing it for ever.

Redis keys: ``{prefix}rl:{<tenant id>}:key:<key id>:{requests|tokens|concurrent}``,
``{prefix}rl:{<tenant id>}:env:<environment id>:{tokens|tokens_per_day|concurrent}``,
``{prefix}rl:{<tenant id>}:tenant:{requests|tokens}`` and ``{prefix}rl:global:{requests|tokens}``,
each a hash (or sorted set) that expires once empty. The hash tag keeps a tenant's keys in one
cluster slot; the platform ceiling's keys are outside it, so with a global limit set the script
needs a Redis that is not a cluster (the platform runs one Redis).

When Redis does not answer within ``RATE_LIMIT_REDIS_TIMEOUT_S`` the request is served without
limits (``RATE_LIMIT_FAIL_OPEN=true``, the default) or refused with 503; Redis is then left alone
for a second, every affected call is counted in ``cic_gateway_ratelimit_errors_total``, and a
warning is logged at most once a minute.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

from aiohttp import web
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from cic_common.periodic import cancel_and_wait
from cic_common.redis import ScriptRunner
from cic_gateway.errors import SERVER_ERROR, ApiError
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.ratelimit_http import (
    BucketState,
    estimate_tokens,
    limit_headers,
    rate_limited_error,
)
from cic_gateway.store import KeyAuth

log = logging.getLogger(__name__)

WINDOW_S = 60.0
DAY_S = 86_400.0
REQUESTS, TOKENS, TOKENS_PER_DAY, CONCURRENT = "requests", "tokens", "tokens_per_day", "concurrent"
KEY, ENVIRONMENT, TENANT, GLOBAL = "key", "environment", "tenant", "global"
LEASE_S = 60.0
# After a failure, Redis is not asked again for this long (no request waits on a dead server).
PAUSE_AFTER_FAILURE_S = 1.0
LOG_EVERY_S = 60.0
SETTLE_DRAIN_TIMEOUT_S = 2.0

# The headers set on a request's responses once it is admitted (see add_rate_limit_headers).
RATE_LIMIT_HEADERS = web.RequestKey("rate_limit_headers", dict[str, str])


@dataclass(frozen=True, slots=True)
class Limits:
    """The per-minute limits used when a key's or tenant's row has none, and the platform's
    ceiling (0 = unlimited)."""

    key_rpm: int = 0
    key_tpm: int = 0
    tenant_rpm: int = 0
    tenant_tpm: int = 0
    global_rpm: int = 0
    global_tpm: int = 0


@dataclass(frozen=True, slots=True)
class Bucket:
    """One limit that applies to a request, and what the request takes from it."""

    scope: str
    kind: str
    limit: int
    redis_key: str
    cost: int
    window_us: int = int(WINDOW_S * 1_000_000)


@dataclass(frozen=True, slots=True)
class Slot:
    """A concurrency limit that applies to a request (a sorted set of leases in Redis)."""

    scope: str
    limit: int
    redis_key: str


@dataclass(slots=True)
class Reservation:
    """What an admitted request holds: the tokens it reserved, its concurrency leases (under
    ``member``), the headers its responses carry, and the tokens its node reported (added up
    over its exchanges)."""

    token_buckets: tuple[Bucket, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    used_tokens: int = 0
    settled: bool = False
    slots: tuple[Slot, ...] = ()
    member: str = ""

    def add_usage(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.used_tokens += prompt_tokens + completion_tokens


def _pick(own: int | None, default: int) -> int:
    return own if own is not None else default


_MAX_REFUSALS_REMEMBERED = 10_000


class RateLimiter:
    def __init__(
        self,
        redis: Redis,
        metrics: GatewayMetrics,
        *,
        prefix: str,
        defaults: Limits,
        fail_open: bool,
        timeout_s: float,
        default_max_tokens: int = 256,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        lease_s: float = LEASE_S,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._prefix = prefix
        self._defaults = defaults
        self._fail_open = fail_open
        self._timeout_s = timeout_s
        self._default_max_tokens = default_max_tokens
        self._window_us = int(window_s * 1_000_000)
        self._day_us = int(window_s * DAY_S / WINDOW_S * 1_000_000)
        self._lease_s = lease_s
        # member -> the slots it holds, for the requests in flight here (renewed in the background)
        self._leases: dict[str, tuple[Slot, ...]] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._clock = clock
        script = files("cic_gateway").joinpath("ratelimit.lua").read_text()
        self._script = redis.register_script(script)
        # EVALSHA (loading it on NOSCRIPT); calls made meanwhile share a round trip
        self._scripts = ScriptRunner(redis, timeout_s)
        self._paused_until = 0.0
        self._outage = _OutageLog(clock)
        self._settling: set[asyncio.Task[None]] = set()
        # tenant id -> when its last refusal's wait ends (this replica's view; see likely_admits)
        self._refused_until: dict[str, float] = {}

    def likely_admits(self, auth: KeyAuth) -> bool:
        """False while a request of ``auth``'s tenant was refused here and the wait it was told
        has not passed: a hint (never a decision) that lets the caller skip work it would start
        alongside the check, so that a client hammering past its limit costs little."""
        until = self._refused_until.get(auth.tenant_id)
        if until is None:
            return True
        if self._clock() < until:
            return False
        del self._refused_until[auth.tenant_id]
        return True

    def _refused(self, auth: KeyAuth, wait_us: int) -> None:
        if len(self._refused_until) >= _MAX_REFUSALS_REMEMBERED:
            self._refused_until.clear()
        self._refused_until[auth.tenant_id] = self._clock() + wait_us / 1_000_000

    def buckets(self, auth: KeyAuth, tokens: Callable[[], int]) -> list[Bucket]:
        """The buckets that apply to ``auth``'s requests; ``tokens`` (the request's estimate) is
        computed only when a token limit applies."""
        d, env = self._defaults, auth.environment
        minute, day = self._window_us, self._day_us
        limits = [
            (KEY, REQUESTS, _pick(auth.rpm_limit, d.key_rpm), minute),
            (KEY, TOKENS, _pick(auth.tpm_limit, d.key_tpm), minute),
            (ENVIRONMENT, TOKENS, env.tpm_limit or 0, minute),
            (ENVIRONMENT, TOKENS_PER_DAY, env.tokens_per_day or 0, day),
            (TENANT, REQUESTS, _pick(auth.tenant_rpm_limit, d.tenant_rpm), minute),
            (TENANT, TOKENS, _pick(auth.tenant_tpm_limit, d.tenant_tpm), minute),
            (GLOBAL, REQUESTS, d.global_rpm, minute),
            (GLOBAL, TOKENS, d.global_tpm, minute),
        ]
        estimate: int | None = None
        found = []
        for scope, kind, limit, window_us in limits:
            if limit <= 0:
                continue
            if kind != REQUESTS and estimate is None:
                estimate = max(0, tokens())
            cost = 1 if kind == REQUESTS else min(estimate or 0, limit)
            key = self._redis_key(auth, scope, kind)
            found.append(Bucket(scope, kind, limit, key, cost, window_us))
        return found

    def slots(self, auth: KeyAuth) -> list[Slot]:
        """The concurrency limits that apply to ``auth``'s requests."""
        limits = [(KEY, auth.concurrency_limit), (ENVIRONMENT, auth.environment.concurrency_limit)]
        return [
            Slot(scope, limit, self._redis_key(auth, scope, CONCURRENT))
            for scope, limit in limits
            if limit
        ]

    def _redis_key(self, auth: KeyAuth, scope: str, kind: str) -> str:
        if scope == GLOBAL:
            return f"{self._prefix}rl:global:{kind}"
        owners = {
            KEY: f"key:{auth.key_id}",
            ENVIRONMENT: f"env:{auth.environment.id}",
            TENANT: "tenant",
        }
        return f"{self._prefix}rl:{{{auth.tenant_id}}}:{owners[scope]}:{kind}"

    async def admit(
        self, request: web.Request, auth: KeyAuth, body: dict[str, Any], *, generates: bool
    ) -> Reservation:
        """:meth:`acquire` for an OpenAI request body; its responses then carry the headers."""
        reservation = await self.acquire(
            auth,
            lambda: estimate_tokens(
                body, generates=generates, default_max_tokens=self._default_max_tokens
            ),
        )
        request[RATE_LIMIT_HEADERS] = reservation.headers
        return reservation

    async def acquire(self, auth: KeyAuth, tokens: Callable[[], int]) -> Reservation:
        """Takes from every bucket and a slot of every concurrency limit of ``auth``, or raises
        the 429 (or, with Redis down and failing closed, the 503) to answer."""
        buckets, slots = self.buckets(auth, tokens), self.slots(auth)
        if not buckets and not slots:
            return Reservation()
        member = secrets.token_hex(8)
        try:
            reply = await self._run("check", "take", buckets, slots=slots, member=member)
        except BaseException:
            self._release_soon(slots, member)  # cancelled or failed: the script may have run
            raise
        if reply is None:
            self._release_soon(slots, member)
            return Reservation()
        allowed, worst, wait_us = int(reply[0]), int(reply[1]), int(reply[2])
        states = [
            BucketState(
                b.scope,
                TOKENS if b.kind == TOKENS_PER_DAY else b.kind,
                b.limit,
                int(reply[3 + 2 * i]),
                int(reply[4 + 2 * i]),
            )
            for i, b in enumerate(buckets)
        ]
        headers = limit_headers(states)
        if not allowed:
            if worst <= len(buckets):
                hit = buckets[worst - 1]
                scope, kind, limit, cost = hit.scope, hit.kind, hit.limit, hit.cost
            else:
                slot = slots[worst - 1 - len(buckets)]
                scope, kind, limit, cost = slot.scope, CONCURRENT, slot.limit, 1
            self._metrics.rate_limited.labels(scope, kind).inc()
            self._refused(auth, wait_us)
            raise rate_limited_error(
                scope, kind, limit, cost, wait_us, headers, environment=auth.environment.name
            )
        token_buckets = tuple(b for b in buckets if b.kind != REQUESTS)
        reservation = Reservation(token_buckets, headers, slots=tuple(slots), member=member)
        if slots:
            self._hold(reservation)
        return reservation

    def _hold(self, reservation: Reservation) -> None:
        self._leases[reservation.member] = reservation.slots
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_forever(), name="lease-renewer")

    async def _renew_forever(self) -> None:
        """Renews every lease held here, in one script call, every third of a lease."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            if not self._leases:
                continue
            held = [(slot, member) for member, slots in self._leases.items() for slot in slots]
            await self._run(
                "renew",
                "renew",
                (),
                slots=[slot for slot, _ in held],
                member=[member for _, member in held],
            )

    def settle_soon(self, reservation: Reservation) -> None:
        """Gives back (or charges) the difference between the tokens reserved and the tokens the
        node reported, and gives back the request's concurrency slots, in the background; once
        per reservation."""
        if reservation.settled:
            return
        reservation.settled = True
        self._leases.pop(reservation.member, None)
        changes = [
            (b, reservation.used_tokens - b.cost)
            for b in reservation.token_buckets
            if reservation.used_tokens != b.cost
        ]
        if not changes and not reservation.slots:
            return
        self._background(self._settle(changes, reservation.slots, reservation.member))

    def _release_soon(self, slots: Sequence[Slot], member: str) -> None:
        """Gives back the slots a request may hold (it never got to use them)."""
        self._leases.pop(member, None)
        if slots:
            self._background(self._settle([], tuple(slots), member))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(
        self, changes: list[tuple[Bucket, int]], slots: tuple[Slot, ...], member: str
    ) -> None:
        buckets = [b for b, _ in changes]
        amounts = [delta for _, delta in changes]
        # Slots go back even while Redis is left alone after a failure (the pause spares requests
        # a wait, and this runs in the background): a skipped release holds a slot a whole lease.
        await self._run(
            "settle", "settle", buckets, amounts, slots=slots, member=member, pausable=not slots
        )

    async def _run(
        self,
        operation: str,
        mode: str,
        buckets: Sequence[Bucket],
        amounts: Sequence[int] | None = None,
        *,
        slots: Sequence[Slot] = (),
        member: str | Sequence[str] = "",
        pausable: bool = True,
    ) -> Any:
        """The script's reply, or None when Redis failed and the request may go on unlimited.
        ``member`` is the request's lease in every slot, or one per slot; a ``pausable`` call is
        not even tried for a moment after a failure."""
        if pausable and self._clock() < self._paused_until:
            return self._failed(operation, None)
        args: list[int | str] = [mode, len(buckets), int(self._lease_s * 1_000_000)]
        for i, bucket in enumerate(buckets):
            amount = bucket.cost if amounts is None else amounts[i]
            args += [bucket.limit, amount, bucket.window_us]
        for i, slot in enumerate(slots):
            args += [slot.limit, member if isinstance(member, str) else member[i]]
        keys = [b.redis_key for b in buckets] + [slot.redis_key for slot in slots]
        try:
            reply = await self._scripts.call(self._script, keys, args)
        except (RedisError, OSError, TimeoutError) as err:
            self._paused_until = self._clock() + PAUSE_AFTER_FAILURE_S
            return self._failed(operation, err)
        self._outage.recovered()
        return reply

    def _failed(self, operation: str, err: BaseException | None) -> None:
        self._metrics.ratelimit_errors.labels(operation).inc()
        policy = "serving without rate limits" if self._fail_open else "refusing requests"
        self._outage.failed(err, policy)
        if operation == "check" and not self._fail_open:
            raise ApiError(
                503,
                "The service is temporarily unavailable; try again shortly.",
                type=SERVER_ERROR,
                code="service_unavailable",
            )
        return None

    async def wait_settled(self, timeout_s: float = SETTLE_DRAIN_TIMEOUT_S) -> None:
        """Waits (up to ``timeout_s``) for the settlements under way."""
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=timeout_s)

    async def close(self) -> None:
        await cancel_and_wait(self._renewer)
        await self.wait_settled()
        await self._scripts.aclose()
        await self._redis.aclose()


class _OutageLog:
    """Logs Redis trouble once a minute at most, and its end once."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last_logged: float | None = None
        self._unreported = 0
        self._down = False

    def failed(self, err: BaseException | None, policy: str) -> None:
        self._down = True
        self._unreported += 1
        now = self._clock()
        if self._last_logged is not None and now - self._last_logged < LOG_EVERY_S:
            return
        reason = type(err).__name__ if err is not None else "still down"
        log.warning(
            "Redis unavailable for rate limits (%s): %s; %d failed calls since the last report",
            reason,
            policy,
            self._unreported,
        )
        self._last_logged, self._unreported = now, 0

    def recovered(self) -> None:
        if self._down:
            self._down = False
            log.info("Redis answers rate-limit calls again")


def create_rate_limiter_redis(url: str, timeout_s: float) -> Redis:
    """A client of its own for the request path: short timeouts and no retries, so that a Redis
    that is down costs a request ``timeout_s`` at most (and then nothing, for a while).

    The limiter's calls go through its :class:`ScriptRunner`, on connections of the runner's
    own; this client's pool only loads the script again after a NOSCRIPT, within the runner's
    deadline, so its reads need no socket timeout of their own."""
    return Redis.from_url(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=None,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
    )


async def add_rate_limit_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: an admitted request's responses carry its ``x-ratelimit-*``."""
    headers = request.get(RATE_LIMIT_HEADERS)
    if headers:
        response.headers.update(headers)
