"""The cost of a request in integer micro-dollars, rounded half up once on the sum."""

import pytest

from cic_billing.pricing import NoPriceError, Price, PriceTable, cost_micro_usd

SIM_SMALL = Price(100_000, 200_000)  # $0.10 / $0.20 per million tokens


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        (0, 0, 0),
        (4, 0, 0),  # 0.4 rounds down
        (5, 0, 1),  # 0.5 rounds half up
        (15, 0, 2),  # 1.5 rounds half up
        (0, 7, 1),  # 1.4 rounds down
        (3, 1, 1),  # 0.3 + 0.2: rounded once on the sum, not per part (which would give 0)
        (1_000_000, 1_000_000, 300_000),  # exactly $0.30
        (123_456_789_012_345, 0, 12_345_678_901_235),  # beyond a float's exact integers
    ],
)
def test_cost_rounds_half_up_in_integers(prompt: int, completion: int, expected: int) -> None:
    assert cost_micro_usd(prompt, completion, SIM_SMALL) == expected


def test_odd_prices_stay_exact() -> None:
    price = Price(333_333, 777_777)
    # 3 * 333_333 + 1 * 777_777 = 1_777_776 -> 1.777776 -> 2
    assert cost_micro_usd(3, 1, price) == 2
    # 10**15 tokens each: (333_333 + 777_777) * 10**9, exactly
    assert cost_micro_usd(10**15, 10**15, price) == 1_111_110 * 10**9


def test_negative_tokens_are_refused() -> None:
    with pytest.raises(ValueError):
        cost_micro_usd(-1, 0, SIM_SMALL)


def test_price_table_falls_back_to_the_default_row() -> None:
    default = Price(1, 2)
    table = PriceTable({"cic-sim-small": SIM_SMALL, "*": default})
    assert table.price_for("cic-sim-small") == SIM_SMALL
    assert table.price_for("some-other-model") == default


def test_price_table_without_default_names_the_model() -> None:
    with pytest.raises(NoPriceError, match="some-other-model"):
        PriceTable({"cic-sim-small": SIM_SMALL}).price_for("some-other-model")
