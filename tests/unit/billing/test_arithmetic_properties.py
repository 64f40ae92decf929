"""Property tests of the billing arithmetic: a request's cost is the exact rational cost rounded
half up, once; and what the ledger adds up (through the real service and Postgres) is exactly
the sum of those costs, however large — sums well past 2**53, where a float would drift."""

from __future__ import annotations

import asyncio
import secrets
from fractions import Fraction

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cic.billing.v1 import billing_pb2
from cic_billing.pricing import Price, cost_micro_usd
from tests.unit.billing.support import record, running_billing, usage_event

tokens = st.integers(0, 10**12)
prices = st.builds(Price, st.integers(0, 10**9), st.integers(0, 10**9))


def _exact(prompt: int, completion: int, price: Price) -> Fraction:
    return Fraction(
        prompt * price.prompt_micro_usd_per_mtok + completion * price.completion_micro_usd_per_mtok,
        1_000_000,
    )


@given(tokens, tokens, prices)
@example(1, 0, Price(500_000, 0))  # exactly half a micro-dollar: rounds up to 1
def test_a_cost_is_the_exact_cost_rounded_half_up(
    prompt: int, completion: int, price: Price
) -> None:
    cost = cost_micro_usd(prompt, completion, price)
    exact = _exact(prompt, completion, price)
    assert isinstance(cost, int)
    # cost = floor(exact + 1/2): a half goes up, so cost - 1/2 <= exact < cost + 1/2.
    assert cost - Fraction(1, 2) <= exact < cost + Fraction(1, 2)
    if exact.denominator == 1:
        assert cost == exact


@given(tokens, tokens, tokens, prices)
def test_more_tokens_never_cost_less(prompt: int, completion: int, more: int, price: Price) -> None:
    base = cost_micro_usd(prompt, completion, price)
    assert cost_micro_usd(prompt + more, completion, price) >= base
    assert cost_micro_usd(prompt, completion + more, price) >= base


@given(st.lists(st.tuples(tokens, tokens), min_size=1, max_size=50), prices)
def test_rounding_once_per_request_stays_within_half_a_micro_dollar_each(
    requests: list[tuple[int, int]], price: Price
) -> None:
    billed = sum(cost_micro_usd(p, c, price) for p, c in requests)
    exact = sum((_exact(p, c, price) for p, c in requests), Fraction(0))
    assert abs(billed - exact) <= Fraction(len(requests), 2)


ledger_examples = st.tuples(
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.lists(st.tuples(st.integers(0, 10**12), st.integers(0, 10**12)), min_size=1, max_size=12),
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(example=ledger_examples)
def test_the_ledger_adds_up_to_the_exact_sum_of_its_costs(
    database_url: str, example: tuple[int, int, list[tuple[int, int]]]
) -> None:
    prompt_price, completion_price, requests = example
    price = Price(prompt_price, completion_price)
    model = f"m-{secrets.token_hex(4)}"
    tenant = f"t-{secrets.token_hex(4)}"

    async def run() -> billing_pb2.GetUsageResponse:
        async with running_billing(database_url) as billing:
            await billing.stub.SetPrice(
                billing_pb2.SetPriceRequest(
                    model=model,
                    prompt_micro_usd_per_mtok=prompt_price,
                    completion_micro_usd_per_mtok=completion_price,
                )
            )
            events = [
                usage_event(
                    f"{tenant}-{i}",
                    tenant_id=tenant,
                    model=model,
                    prompt_tokens=p,
                    completion_tokens=c,
                )
                for i, (p, c) in enumerate(requests)
            ]
            await record(billing, *events)
            return await billing.stub.GetUsage(billing_pb2.GetUsageRequest(tenant_id=tenant))

    usage = asyncio.run(run())
    assert usage.requests == len(requests)
    assert usage.prompt_tokens == sum(p for p, _ in requests)
    assert usage.completion_tokens == sum(c for _, c in requests)
    assert usage.cost_micro_usd == sum(cost_micro_usd(p, c, price) for p, c in requests)
