"""The price RPCs: operators list, set and delete model prices; a change prices the events
recorded after it, never those recorded before."""

from __future__ import annotations

import grpc
import pytest

from cic.billing.v1 import billing_pb2
from tests.unit.billing.support import RunningBilling, record, usage_event


def _prices(reply: billing_pb2.ListPricesResponse) -> list[tuple[str, int, int]]:
    return [
        (p.model, p.prompt_micro_usd_per_mtok, p.completion_micro_usd_per_mtok)
        for p in reply.prices
    ]


async def test_list_set_and_delete(billing: RunningBilling) -> None:
    listed = await billing.stub.ListPrices(billing_pb2.ListPricesRequest())
    assert _prices(listed) == [("*", 500_000, 1_500_000), ("cic-sim-small", 100_000, 200_000)]

    made = await billing.stub.SetPrice(
        billing_pb2.SetPriceRequest(
            model="llama-70b", prompt_micro_usd_per_mtok=700_000, completion_micro_usd_per_mtok=0
        )
    )
    assert (made.model, made.prompt_micro_usd_per_mtok, made.completion_micro_usd_per_mtok) == (
        "llama-70b",
        700_000,
        0,
    )
    assert made.HasField("updated_at")
    await billing.stub.DeletePrice(billing_pb2.DeletePriceRequest(model="cic-sim-small"))
    listed = await billing.stub.ListPrices(billing_pb2.ListPricesRequest())
    assert _prices(listed) == [("*", 500_000, 1_500_000), ("llama-70b", 700_000, 0)]


async def test_a_new_price_applies_to_events_recorded_after_it(billing: RunningBilling) -> None:
    await record(billing, usage_event("before", prompt_tokens=1_000_000, completion_tokens=0))
    await billing.stub.SetPrice(
        billing_pb2.SetPriceRequest(
            model="cic-sim-small",
            prompt_micro_usd_per_mtok=1_000_000,
            completion_micro_usd_per_mtok=3_000_000,
        )
    )
    await record(billing, usage_event("after", prompt_tokens=1_000_000, completion_tokens=1))
    costs = {r["request_id"]: r["cost_micro_usd"] for r in await billing.ledger_rows()}
    assert costs == {"before": 100_000, "after": 1_000_003}


async def test_deleting_the_last_price_of_a_model_leaves_it_unpriceable(
    billing: RunningBilling,
) -> None:
    await billing.stub.DeletePrice(billing_pb2.DeletePriceRequest(model="*"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await record(billing, usage_event("r1", model="unknown-model"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        (billing_pb2.SetPriceRequest(model=""), "model is empty"),
        (billing_pb2.SetPriceRequest(model="m\x00"), "model contains a NUL character"),
        (billing_pb2.SetPriceRequest(model="m" * 201), "model is longer than 200 characters"),
        (
            billing_pb2.SetPriceRequest(model="m", prompt_micro_usd_per_mtok=-1),
            "prompt_micro_usd_per_mtok is negative",
        ),
        (
            billing_pb2.SetPriceRequest(model="m", completion_micro_usd_per_mtok=-5),
            "completion_micro_usd_per_mtok is negative",
        ),
    ],
)
async def test_bad_prices_are_refused(
    billing: RunningBilling, request_: billing_pb2.SetPriceRequest, problem: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.SetPrice(request_)
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, problem)


async def test_deleting_a_model_without_a_price_is_not_found(billing: RunningBilling) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.DeletePrice(billing_pb2.DeletePriceRequest(model="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_usage_of_one_model(billing: RunningBilling) -> None:
    await record(
        billing,
        usage_event("r1", prompt_tokens=1_000_000, completion_tokens=0),
        usage_event("r2", model="other", prompt_tokens=2, completion_tokens=0),
    )
    usage = await billing.stub.GetUsage(
        billing_pb2.GetUsageRequest(tenant_id="tenant-a", model="other")
    )
    assert (usage.requests, usage.prompt_tokens, usage.cost_micro_usd) == (1, 2, 1)
    assert [m.model for m in usage.by_model] == ["other"]
