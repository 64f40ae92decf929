"""The one exact money parser of the admin API (catalog prices, region multipliers, credit
grants and budgets): numbers and decimal strings to integer millionths, never rounded."""

from __future__ import annotations

import pytest

from cic_gateway.money import millionths, usd


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (3, 3_000_000),
        (0.15, 150_000),
        ("0.15", 150_000),
        (" 12.000001 ", 12_000_001),
        ("0.1000000000", 100_000),  # trailing zeros past the sixth place are still exact
        (1e-6, 1),
    ],
)
def test_numbers_and_decimal_strings_become_exact_millionths(value: object, expected: int) -> None:
    assert millionths(value) == expected


@pytest.mark.parametrize(
    "value",
    [True, None, [1], "1e3", "-1", "0x10", "", "1.0000001", 1e-7, -0.5, float("nan"), float("inf")],
)
def test_anything_else_is_refused_with_a_value_error(value: object) -> None:
    with pytest.raises(ValueError):
        millionths(value)


def test_usd_is_the_micro_amount_in_dollars() -> None:
    assert usd(150_000) == 0.15 and usd(1) == 0.000001 and usd(0) == 0.0
