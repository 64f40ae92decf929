"""The regional cost multiplier: the exact rational cost times the exact multiplier, rounded half
up once, both in the arithmetic and in the ingest path (``to_rows``) the ledger uses."""

from __future__ import annotations

from datetime import UTC, datetime
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from cic_billing.events import to_rows
from cic_billing.pricing import PPM, Price, PriceTable, cost_micro_usd
from tests.unit.billing.support import usage_event

tokens = st.integers(0, 10**12)
prices = st.builds(Price, st.integers(0, 10**9), st.integers(0, 10**9))
multipliers = st.integers(1, 1_000_000_000)  # parts per million: up to 1,000x


@given(tokens, tokens, prices, multipliers)
def test_a_regional_cost_is_the_exact_cost_times_the_multiplier_rounded_half_up_once(
    prompt: int, completion: int, price: Price, ppm: int
) -> None:
    cost = cost_micro_usd(prompt, completion, price, ppm)
    base = Fraction(
        prompt * price.prompt_micro_usd_per_mtok + completion * price.completion_micro_usd_per_mtok,
        1_000_000,
    )
    exact = base * Fraction(ppm, PPM)
    assert cost - Fraction(1, 2) <= exact < cost + Fraction(1, 2)  # half up: x.5 goes up
    assert cost_micro_usd(prompt, completion, price, PPM) == cost_micro_usd(
        prompt, completion, price
    )


@given(tokens, tokens, prices, multipliers)
def test_ingest_prices_each_event_with_its_regions_multiplier(
    prompt: int, completion: int, price: Price, ppm: int
) -> None:
    table = PriceTable({"m": price}, {"eu-west": ppm})
    when = datetime(2025, 1, 1, tzinfo=UTC)
    events = [
        usage_event(f"r-{region or 'none'}", model="m", prompt_tokens=prompt,
                    completion_tokens=completion, finished_at=when, region=region)
        for region in ("eu-west", "", "unknown")
    ]  # fmt: skip
    costs = [row[7] for row in to_rows(events, table)]
    assert costs == [
        cost_micro_usd(prompt, completion, price, ppm),
        cost_micro_usd(prompt, completion, price),
        cost_micro_usd(prompt, completion, price),
    ]
