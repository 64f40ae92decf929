"""Property tests of the rate limiter against a real Redis: for any limits and any sequence of
requests (two keys of one tenant, any token estimates, settled with any real usage), every
decision and every ``remaining`` header matches a plain reference model of the buckets.

The window is an hour and the limits small, so that what the buckets leak while an example runs
stays far below one unit: with whole-unit costs the real limiter and the leak-free model then
decide alike at every boundary (admit iff level + cost <= limit)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from cic_gateway.errors import ApiError
from cic_gateway.metrics import GatewayMetrics
from cic_gateway.ratelimit import Limits, RateLimiter, create_rate_limiter_redis
from tests.unit.gateway.test_ratelimit import HOUR_S, key_auth, tokens

limit = st.none() | st.integers(1, 40)


@dataclass(frozen=True)
class Step:
    key: int  # which of the tenant's two keys
    estimate: int  # the request's token estimate
    used: int | None  # tokens the node reported (None: the request is not settled)


steps = st.lists(
    st.builds(
        Step,
        key=st.integers(0, 1),
        estimate=st.integers(0, 50),
        used=st.none() | st.integers(0, 60),
    ),
    min_size=1,
    max_size=25,
)
examples = st.tuples(
    st.fixed_dictionaries(
        {"key_rpm": limit, "key_tpm": limit, "tenant_rpm": limit, "tenant_tpm": limit}
    ),
    steps,
)


class Model:
    """The buckets as the limiter documents them, without leaking."""

    def __init__(self, limits: dict[str, int | None]) -> None:
        self.limits = limits
        self.levels: dict[tuple[str, int | None], int] = {}

    def buckets(self, key: int, estimate: int) -> list[tuple[tuple[str, int | None], int, int]]:
        """(bucket id, limit, cost) of each bucket that applies."""
        found = []
        for name, scope_key in (
            ("key_rpm", key),
            ("key_tpm", key),
            ("tenant_rpm", None),
            ("tenant_tpm", None),
        ):
            cap = self.limits[name]
            if cap is None:
                continue
            cost = 1 if name.endswith("rpm") else min(estimate, cap)
            found.append(((name, scope_key), cap, cost))
        return found

    def take(self, key: int, estimate: int) -> bool:
        buckets = self.buckets(key, estimate)
        if any(self.levels.get(b, 0) + cost > cap for b, cap, cost in buckets):
            return False
        for b, _, cost in buckets:
            self.levels[b] = self.levels.get(b, 0) + cost
        return True

    def settle(self, key: int, estimate: int, used: int) -> None:
        for b, _, cost in self.buckets(key, estimate):
            if b[0].endswith("tpm"):
                self.levels[b] = max(0, self.levels.get(b, 0) + used - cost)

    def remaining(self, key: int, kind: str) -> int | None:
        """What ``x-ratelimit-remaining-{kind}`` should say: the tightest bucket of the kind."""
        suffix = "rpm" if kind == "requests" else "tpm"
        left = [
            (cap - self.levels.get(b, 0), cap)
            for b, cap, _ in self.buckets(key, 0)
            if b[0].endswith(suffix)
        ]
        return min(left)[0] if left else None


async def _run(limiter: RateLimiter, limits: dict[str, Any], sequence: list[Step]) -> None:
    model = Model(limits)
    tenant = f"ten_{secrets.token_hex(4)}"
    auths = [key_auth(**limits, key_id=f"key_{i}", tenant_id=tenant) for i in range(2)]
    for step in sequence:
        expected = model.take(step.key, step.estimate)
        try:
            reservation = await limiter.acquire(auths[step.key], tokens(step.estimate))
        except ApiError as refusal:
            assert not expected, (step, model.levels)
            assert refusal.status == 429
            continue
        assert expected, (step, model.levels)
        for kind in ("requests", "tokens"):
            shown = reservation.headers.get(f"x-ratelimit-remaining-{kind}")
            want = model.remaining(step.key, kind)
            assert shown == (None if want is None else str(max(want, 0))), (kind, step)
        if step.used is not None:
            reservation.add_usage(step.used, 0)
            limiter.settle_soon(reservation)
            await limiter.wait_settled()
            model.settle(step.key, step.estimate, step.used)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(example=examples)
def test_the_limiter_decides_as_the_reference_model(
    redis_url: str, redis_prefix: str, example: tuple[dict[str, Any], list[Step]]
) -> None:
    """Each example on a loop of its own, so that Hypothesis can shrink a failing one."""
    limits, sequence = example

    async def run() -> None:
        limiter = RateLimiter(
            create_rate_limiter_redis(redis_url, 2.0),
            GatewayMetrics(CollectorRegistry()),
            prefix=redis_prefix,
            defaults=Limits(),
            fail_open=False,
            timeout_s=2.0,
            window_s=HOUR_S,
        )
        try:
            await asyncio.wait_for(_run(limiter, limits, sequence), 30)
        finally:
            await limiter.close()

    asyncio.run(run())
