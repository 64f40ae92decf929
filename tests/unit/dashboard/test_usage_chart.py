"""The usage chart's geometry: bars in proportion under a round axis top, readable labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cic_gateway.dashboard.usage_view import NARROW, WIDE, Day, chart

START = datetime(2026, 1, 1, tzinfo=UTC)


def _days(requests: list[int]) -> list[Day]:
    return [
        Day(START + timedelta(days=i), n, n * 10, n * 5, n * 1_500) for i, n in enumerate(requests)
    ]


def test_bars_are_in_proportion_under_a_round_top() -> None:
    drawn = chart(_days([0, 3, 6]), "requests")
    heights = [bar["h"] for bar in drawn["bars"]]  # type: ignore[index]
    assert heights[0] == 0 and abs(heights[2] - 2 * heights[1]) < 0.02
    assert [g["text"] for g in drawn["grid"]] == ["0", "5", "10"]  # type: ignore[index]
    bottoms = {round(b["y"] + b["h"], 2) for b in drawn["bars"]}  # type: ignore[index]
    assert len(bottoms) == 1  # every bar stands on the baseline


def test_small_counts_and_costs_get_labels_that_say_something() -> None:
    one = chart(_days([0, 1]), "requests")
    assert [g["text"] for g in one["grid"]] == ["0", "1", "2"]  # type: ignore[index]
    cost = chart(_days([0, 2]), "cost")  # $0.003 on the second day
    assert [g["text"] for g in cost["grid"]] == ["$0.00", "$0.0025", "$0.005"]  # type: ignore[index]
    assert cost["bars"][1]["title"] == "Fri 02 Jan: $0.003"  # type: ignore[index]
    empty = chart(_days([0, 0]), "tokens")
    assert all(b["h"] == 0 for b in empty["bars"])  # type: ignore[index]


def test_day_labels_are_thinned_to_fit_each_width() -> None:
    days = _days(list(range(90)))
    assert len(chart(days, "requests", WIDE)["ticks"]) <= WIDE.ticks  # type: ignore[arg-type]
    narrow = chart(days, "requests", NARROW)
    assert len(narrow["ticks"]) <= NARROW.ticks  # type: ignore[arg-type]
    assert narrow["ticks"][-1]["text"] == "31 Mar"  # type: ignore[index]
