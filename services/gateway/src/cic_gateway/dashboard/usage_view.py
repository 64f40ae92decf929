"""The usage page's figures: per-day totals and per-model totals from billing's ``GetUsage``, and
the bar chart drawn as inline SVG on the server (no script, no chart library)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2, billing_pb2_grpc

RANGES = (7, 30, 90)
METRICS = {"cost": "Cost (USD)", "requests": "Requests", "tokens": "Tokens"}
_CONCURRENT_CALLS = 16


@dataclass(frozen=True, slots=True)
class Day:
    day: datetime
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micro_usd: int
    by_model: tuple[billing_pb2.ModelUsage, ...] = ()

    def value(self, metric: str) -> float:
        if metric == "requests":
            return self.requests
        if metric == "tokens":
            return self.prompt_tokens + self.completion_tokens
        return self.cost_micro_usd / 1_000_000


@dataclass(frozen=True, slots=True)
class Usage:
    days: list[Day]
    total: billing_pb2.GetUsageResponse


def _stamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def fetch(
    billing: billing_pb2_grpc.BillingServiceStub,
    tenant_id: str,
    days: int,
    timeout_s: float,
    now: datetime | None = None,
) -> Usage:
    """The last ``days`` UTC days (today included): one call per day and one for the whole range
    (its per-model totals), at most 16 at a time."""
    today = (now or datetime.now(UTC)).replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [today - timedelta(days=n) for n in range(days - 1, -1, -1)]
    gate = asyncio.Semaphore(_CONCURRENT_CALLS)

    async def usage(start: datetime, end: datetime) -> billing_pb2.GetUsageResponse:
        async with gate:
            query = billing_pb2.GetUsageRequest(
                tenant_id=tenant_id, start=_stamp(start), end=_stamp(end)
            )
            reply: billing_pb2.GetUsageResponse = await billing.GetUsage(query, timeout=timeout_s)
            return reply

    end = today + timedelta(days=1)
    total, *per_day = await asyncio.gather(
        usage(starts[0], end), *(usage(s, s + timedelta(days=1)) for s in starts)
    )
    return Usage(
        days=[
            Day(
                s,
                r.requests,
                r.prompt_tokens,
                r.completion_tokens,
                r.cost_micro_usd,
                tuple(r.by_model),
            )
            for s, r in zip(starts, per_day, strict=True)
        ],
        total=total,
    )


def _label(value: float, metric: str) -> str:
    if metric != "cost":
        return f"{value:,.0f}"
    if value == 0 or value >= 1:
        return f"${value:,.2f}"
    return "$" + f"{value:.6f}".rstrip("0").rstrip(".")


def _nice_top(highest: float, metric: str) -> float:
    """The axis' top: 1, 2 or 5 times a power of ten, at or above ``highest`` (whole numbers of
    at least 2 for counts, so the middle line is a whole number too)."""
    if highest <= 0:
        return 1.0 if metric == "cost" else 2.0
    power = 10 ** math.floor(math.log10(highest))
    top = next(m * power for m in (1, 2, 5, 10) if m * power >= highest)
    return max(top, 2.0) if metric != "cost" else top


@dataclass(frozen=True, slots=True)
class ChartSize:
    width: int
    height: int
    ticks: int  # at most this many day labels


WIDE = ChartSize(720, 220, 8)
NARROW = ChartSize(360, 240, 4)
_PAD_L, _PAD_B, _PAD_T = 78, 24, 12


def chart(days: list[Day], metric: str, size: ChartSize = WIDE) -> dict[str, object]:
    """Bars, gridlines and labels for the template's inline SVG, in its own coordinates."""
    values = [d.value(metric) for d in days]
    top = _nice_top(max(values, default=0.0), metric)
    plot_w = size.width - _PAD_L
    plot_h = size.height - _PAD_B - _PAD_T
    slot = plot_w / max(len(days), 1)
    bars = []
    for i, (day, value) in enumerate(zip(days, values, strict=True)):
        height = plot_h * value / top
        bars.append(
            {
                "x": round(_PAD_L + i * slot + slot * 0.15, 2),
                "y": round(_PAD_T + plot_h - height, 2),
                "w": round(slot * 0.7, 2),
                "h": round(height, 2),
                "title": f"{day.day:%a %d %b}: {_label(value, metric)}",
            }
        )
    step = max(1, math.ceil(len(days) / size.ticks))
    ticks = [
        {"x": round(_PAD_L + i * slot + slot / 2, 2), "text": f"{d.day:%d %b}"}
        for i, d in enumerate(days)
        if (len(days) - 1 - i) % step == 0
    ]
    grid = [
        {"y": round(_PAD_T + plot_h * (1 - f), 2), "text": _label(top * f, metric)}
        for f in (0.0, 0.5, 1.0)
    ]
    return {
        "width": size.width,
        "height": size.height,
        "left": _PAD_L,
        "bars": bars,
        "ticks": ticks,
        "grid": grid,
        "label": METRICS[metric],
    }
