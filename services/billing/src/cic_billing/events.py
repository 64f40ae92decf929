"""Usage events as they arrive over gRPC: checked, priced and turned into ledger rows.

A batch is checked whole before anything is written, so one bad event rejects the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2
from cic_billing.pricing import PriceTable, cost_micro_usd

MAX_EVENTS_PER_BATCH = 5_000
BIGINT_MAX = 2**63 - 1
_REQUIRED_TEXT = ("request_id", "tenant_id", "model")
_OPTIONAL_TEXT = ("api_key_id", "node_id")
_TIMESTAMPS: tuple[Literal["started_at", "finished_at"], ...] = ("started_at", "finished_at")


class InvalidBatchError(ValueError):
    """The batch cannot be recorded as sent; the message says why."""


class InvalidEventError(InvalidBatchError):
    """One event of a batch is bad; the message names its index and field."""

    def __init__(self, index: int, field: str, problem: str) -> None:
        super().__init__(f"events[{index}].{field} {problem}")
        self.index = index
        self.field = field


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One ``usage_events`` row, priced."""

    request_id: str
    tenant_id: str
    api_key_id: str | None
    model: str
    node_id: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_micro_usd: int
    started_at: datetime | None
    finished_at: datetime
    streamed: bool
    status_code: int


def text_problem(value: str) -> str | None:
    """Why Postgres could not store ``value`` as text, or None."""
    return "contains a NUL character" if "\x00" in value else None


def to_datetime(stamp: Timestamp) -> datetime:
    """An aware UTC datetime; ValueError when the timestamp is out of range."""
    return stamp.ToDatetime(tzinfo=UTC)


def _check_event(index: int, event: billing_pb2.UsageEvent) -> None:
    for field in _REQUIRED_TEXT:
        if not getattr(event, field):
            raise InvalidEventError(index, field, "is empty")
    for field in _REQUIRED_TEXT + _OPTIONAL_TEXT:
        problem = text_problem(getattr(event, field))
        if problem:
            raise InvalidEventError(index, field, problem)
    for field in ("prompt_tokens", "completion_tokens"):
        if getattr(event, field) < 0:
            raise InvalidEventError(index, field, "is negative")
    if not event.HasField("finished_at"):
        raise InvalidEventError(index, "finished_at", "is not set")
    for stamp in _TIMESTAMPS:
        if event.HasField(stamp):
            try:
                to_datetime(getattr(event, stamp))
            except ValueError:
                raise InvalidEventError(index, stamp, "is not a valid timestamp") from None


def check_batch(events: Sequence[billing_pb2.UsageEvent]) -> None:
    """Raises :class:`InvalidEventError` for the first bad event, :class:`InvalidBatchError`
    for a batch too big."""
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise InvalidBatchError(f"{len(events)} events in one call; at most {MAX_EVENTS_PER_BATCH}")
    for index, event in enumerate(events):
        _check_event(index, event)


def to_row(index: int, event: billing_pb2.UsageEvent, prices: PriceTable) -> LedgerRow:
    """Prices a checked event (:class:`~cic_billing.pricing.NoPriceError` when it cannot be)."""
    cost = cost_micro_usd(
        event.prompt_tokens, event.completion_tokens, prices.price_for(event.model)
    )
    if cost > BIGINT_MAX:
        raise InvalidEventError(
            index, "prompt_tokens", "with completion_tokens costs more than 64 bits hold"
        )
    return LedgerRow(
        request_id=event.request_id,
        tenant_id=event.tenant_id,
        api_key_id=event.api_key_id or None,
        model=event.model,
        node_id=event.node_id or None,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        cost_micro_usd=cost,
        started_at=to_datetime(event.started_at) if event.HasField("started_at") else None,
        finished_at=to_datetime(event.finished_at),
        streamed=event.streamed,
        status_code=event.status_code,
    )
