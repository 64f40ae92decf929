"""``GET /v1/usage``: a tenant's own usage and cost, for its ``admin`` and ``read-only`` keys.

The figures are billing's ``GetUsage``, the same call (and the same SQL statement) the
dashboard's usage page and the admin usage route read, with a breakdown computed in SQL.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2
from cic_gateway.errors import bad_request, from_grpc_error
from cic_gateway.jsonio import json_response
from cic_gateway.keys import ADMIN, READ_ONLY, require_role
from cic_gateway.money import usd
from cic_gateway.resources import KEYS, SERVICES

GROUP_BY = {
    "model": billing_pb2.USAGE_GROUP_BY_MODEL,
    "key": billing_pb2.USAGE_GROUP_BY_KEY,
    "environment": billing_pb2.USAGE_GROUP_BY_ENVIRONMENT,
    "hour": billing_pb2.USAGE_GROUP_BY_HOUR,
    "day": billing_pb2.USAGE_GROUP_BY_DAY,
    "month": billing_pb2.USAGE_GROUP_BY_MONTH,
}
_TIME_GROUPS = {"hour", "day", "month"}
# A '+' of a UTC offset arrives as a space when the client did not percent-encode it.
_SPACED_OFFSET = re.compile(r" (\d{2}(:?\d{2})?)$")
_MAX_TIME_CHARS = 64


def _time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    text = _SPACED_OFFSET.sub(r"+\1", raw.strip().upper()) if len(raw) <= _MAX_TIME_CHARS else ""
    try:
        value = datetime.fromisoformat(text)
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        raise bad_request(
            f"Invalid '{name}': expected an ISO-8601 time such as 2025-01-31T00:00:00Z.",
            param=name,
        ) from None


def _stamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _sums(row: billing_pb2.GetUsageResponse | billing_pb2.UsageRow) -> dict[str, Any]:
    return {
        "requests": row.requests,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "cost_usd": usd(row.cost_micro_usd),
        "cost_micro_usd": row.cost_micro_usd,
    }


def _group(row: billing_pb2.UsageRow, group_by: str | None) -> str:
    if group_by in _TIME_GROUPS:
        return row.period_start.ToDatetime(UTC).isoformat().replace("+00:00", "Z")
    return row.key


async def tenant_usage(request: web.Request) -> web.Response:
    auth = await request.app[KEYS].authenticate(request)
    require_role(auth, ADMIN, READ_ONLY)
    start, end = _time(request, "start"), _time(request, "end")
    if start is not None and end is not None and start >= end:
        raise bad_request("Invalid 'start': it must be before 'end'.", param="start")
    group_by = request.query.get("group_by") or None
    if group_by is not None and group_by not in GROUP_BY:
        raise bad_request(
            f"Invalid 'group_by': expected one of {', '.join(GROUP_BY)}.", param="group_by"
        )
    query = billing_pb2.GetUsageRequest(
        tenant_id=auth.tenant_id,
        start=None if start is None else _stamp(start),
        end=None if end is None else _stamp(end),
        group_by=GROUP_BY[group_by] if group_by else billing_pb2.USAGE_GROUP_BY_UNSPECIFIED,
    )
    try:
        reply = await request.app[SERVICES].billing.GetUsage(query)
    except grpc.aio.AioRpcError as err:
        raise from_grpc_error(err, "billing") from None
    return json_response(
        {
            "object": "usage",
            "start": None if start is None else start.isoformat(),
            "end": None if end is None else end.isoformat(),
            "group_by": group_by,
            **_sums(reply),
            "data": [
                {"group": _group(row, group_by), **_sums(row)}
                for row in (reply.breakdown if group_by is not None else ())
            ],
        }
    )
