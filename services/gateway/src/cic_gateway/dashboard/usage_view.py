"""The usage page's figures: per-day totals and per-model totals from billing's ``GetUsage``, and
the bar chart drawn as inline SVG on the server (no script, no chart library)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2, billing_pb2_grpc

RANGES = (7, 30, 90)
METRICS = {"cost": "Cost (USD)", "requests": "Requests", "tokens": "Tokens"}
_CONCURRENT_CALLS = 16
_CHART_W, _CHART_H, _PAD_L, _PAD_B, _PAD_T = 720, 220, 56, 24, 12


@dataclass(frozen=True, slots=True)
class Day:
    day: datetime
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_micro_usd: int

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
            Day(s, r.requests, r.prompt_tokens, r.completion_tokens, r.cost_micro_usd)
            for s, r in zip(starts, per_day, strict=True)
        ],
        total=total,
    )


def _label(value: float, metric: str) -> str:
    if metric == "cost":
        return f"${value:,.2f}" if value >= 1 else f"${value:.4f}".rstrip("0").rstrip(".")
    return f"{value:,.0f}"


def chart(days: list[Day], metric: str) -> dict[str, object]:
    """Bars, gridlines and labels for the template's inline SVG, in its own coordinates."""
    values = [d.value(metric) for d in days]
    top = max(values) if values and max(values) > 0 else 1.0
    plot_w = _CHART_W - _PAD_L
    plot_h = _CHART_H - _PAD_B - _PAD_T
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
    step = max(1, len(days) // 7)
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
        "width": _CHART_W,
        "height": _CHART_H,
        "left": _PAD_L,
        "baseline": _PAD_T + plot_h,
        "bars": bars,
        "ticks": ticks,
        "grid": grid,
        "label": METRICS[metric],
    }
