"""Usage events as they arrive over gRPC: checked, priced and turned into ledger rows.

A batch is checked whole before anything is written, so one bad event rejects the batch. The
check, the pricing and the conversion to rows are one pass with a fast path per event: ingestion
runs at tens of thousands of events a second, and only a refused event takes the slow path that
names its problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from google.protobuf.timestamp_pb2 import Timestamp

from cic.billing.v1 import billing_pb2
from cic_billing.pricing import PPM, REGIONAL_DIVISOR, NoPriceError, Price, PriceTable

MAX_EVENTS_PER_BATCH = 5_000
BIGINT_MAX = 2**63 - 1
_REQUIRED_TEXT = ("request_id", "tenant_id", "model")
_OPTIONAL_TEXT = ("api_key_id", "node_id", "environment_id", "region")
_TIMESTAMPS: tuple[Literal["started_at", "finished_at"], ...] = ("started_at", "finished_at")


class InvalidBatchError(ValueError):
    """The batch cannot be recorded as sent; the message says why."""


class InvalidEventError(InvalidBatchError):
    """One event of a batch is bad; the message names its index and field."""

    def __init__(self, index: int, field: str, problem: str) -> None:
        super().__init__(f"events[{index}].{field} {problem}")
        self.index = index
        self.field = field


# One ``usage_events`` row, priced, as a tuple in the ledger's column order (request_id,
# tenant_id, api_key_id, model, node_id, prompt_tokens, completion_tokens, cost_micro_usd,
# started_at, finished_at, streamed, status_code, environment_id, region), the two times in
# microseconds since the Unix epoch (Postgres makes them timestamps): ingestion makes tens of
# thousands a second.
LedgerRow = tuple[
    str, str, str | None, str, str | None, int, int, int, int | None, int, bool, int,
    str | None, str | None,
]  # fmt: skip

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What google.protobuf.Timestamp may hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
_NANOS_PER_SECOND = 1_000_000_000
_HALF_MICRO_USD = REGIONAL_DIVISOR // 2


def text_problem(value: str) -> str | None:
    """Why Postgres could not store ``value`` as text, or None."""
    return "contains a NUL character" if "\x00" in value else None


def to_datetime(stamp: Timestamp) -> datetime:
    """An aware UTC datetime; ValueError when the timestamp is out of range."""
    seconds, nanos = stamp.seconds, stamp.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < _NANOS_PER_SECOND):
        raise ValueError("timestamp out of range")
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def to_micros(stamp: Timestamp) -> int:
    """Microseconds since the Unix epoch (nanoseconds truncated, as ``ToDatetime`` does);
    ValueError when the timestamp is out of range."""
    seconds, nanos = stamp.seconds, stamp.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < _NANOS_PER_SECOND):
        raise ValueError("timestamp out of range")
    return seconds * 1_000_000 + nanos // 1000


def _event_problem(index: int, event: billing_pb2.UsageEvent) -> InvalidEventError:
    """What is wrong with an event the fast path refused (the first problem, in field order)."""
    for field in _REQUIRED_TEXT:
        if not getattr(event, field):
            return InvalidEventError(index, field, "is empty")
    for field in _REQUIRED_TEXT + _OPTIONAL_TEXT:
        problem = text_problem(getattr(event, field))
        if problem:
            return InvalidEventError(index, field, problem)
    for field in ("prompt_tokens", "completion_tokens"):
        if getattr(event, field) < 0:
            return InvalidEventError(index, field, "is negative")
    if not event.HasField("finished_at"):
        return InvalidEventError(index, "finished_at", "is not set")
    for stamp in _TIMESTAMPS:
        if event.HasField(stamp):
            try:
                to_datetime(getattr(event, stamp))
            except ValueError:
                return InvalidEventError(index, stamp, "is not a valid timestamp")
    return InvalidEventError(
        index, "prompt_tokens", "with completion_tokens costs more than 64 bits hold"
    )


def to_rows(events: Sequence[billing_pb2.UsageEvent], prices: PriceTable) -> list[LedgerRow]:
    """Checks and prices a whole batch in one pass. Raises :class:`InvalidBatchError` for a
    batch too big, :class:`InvalidEventError` for the first bad event, and, only when every
    event is sound, :class:`~cic_billing.pricing.NoPriceError` for the first model without a
    price."""
    if len(events) > MAX_EVENTS_PER_BATCH:
        raise InvalidBatchError(f"{len(events)} events in one call; at most {MAX_EVENTS_PER_BATCH}")
    rows: list[LedgerRow] = []
    price_of: dict[str, Price | None] = {}
    unpriced: str | None = None
    total = 0
    for index, event in enumerate(events):
        request_id, tenant_id, model = event.request_id, event.tenant_id, event.model
        key_id, node_id = event.api_key_id, event.node_id
        environment_id, region = event.environment_id, event.region
        prompt, completion = event.prompt_tokens, event.completion_tokens
        try:
            if (
                not (request_id and tenant_id and model)
                or "\x00" in request_id + tenant_id + model + key_id + node_id
                or "\x00" in environment_id + region
                or prompt < 0
                or completion < 0
                or not event.HasField("finished_at")
            ):
                raise ValueError
            finished = to_micros(event.finished_at)
            started = to_micros(event.started_at) if event.HasField("started_at") else None
        except ValueError:
            raise _event_problem(index, event) from None
        if model not in price_of:
            try:
                price_of[model] = prices.price_for(model)
            except NoPriceError:
                price_of[model] = None
        price = price_of[model]
        cost = 0
        if price is None:
            unpriced = unpriced or model
        else:
            # cost_micro_usd(), inlined: this loop runs for every event billing records.
            multiplier = prices.multiplier_ppm(region) if region else PPM
            cost = (
                (
                    prompt * price.prompt_micro_usd_per_mtok
                    + completion * price.completion_micro_usd_per_mtok
                )
                * multiplier
                + _HALF_MICRO_USD
            ) // REGIONAL_DIVISOR
            if cost > BIGINT_MAX:
                raise _event_problem(index, event)
            total += cost
        rows.append(
            (
                request_id,
                tenant_id,
                key_id or None,
                model,
                node_id or None,
                prompt,
                completion,
                cost,
                started,
                finished,
                event.streamed,
                event.status_code,
                environment_id or None,
                region or None,
            )
        )
    if unpriced is not None:
        raise NoPriceError(unpriced)
    if total > BIGINT_MAX:
        # The batch's sums (spend counters, meter reports) are 64-bit too.
        raise InvalidBatchError(f"the events cost more than {BIGINT_MAX} micro-USD in total")
    return rows
