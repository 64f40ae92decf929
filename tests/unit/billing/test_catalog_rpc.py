"""The model catalog and region RPCs through the real gRPC server and Postgres: the catalog is
the price table (ListPrices shows the same prices), and a region's multiplier prices the events
served there from then on."""

from __future__ import annotations

import grpc
import pytest

from cic.billing.v1 import billing_pb2
from tests.unit.billing.support import RunningBilling, record, usage_event

EMBED = billing_pb2.CatalogModel(
    name="org/embed-1",
    type=billing_pb2.MODEL_TYPE_EMBEDDING,
    context_length=8192,
    prompt_micro_usd_per_mtok=20_000,
    completion_micro_usd_per_mtok=0,
)


def _names(reply: billing_pb2.ListModelsResponse) -> list[tuple[str, int, int]]:
    return [(m.name, m.type, m.context_length) for m in reply.models]


async def _costs(billing: RunningBilling) -> dict[str, int]:
    return {r["request_id"]: r["cost_micro_usd"] for r in await billing.ledger_rows()}


async def test_the_seeded_model_is_in_the_catalog_and_the_default_price_is_not(
    billing: RunningBilling,
) -> None:
    listed = await billing.stub.ListModels(billing_pb2.ListModelsRequest())
    assert _names(listed) == [("cic-sim-small", billing_pb2.MODEL_TYPE_CHAT, 4096)]
    [model] = listed.models
    assert (model.prompt_micro_usd_per_mtok, model.completion_micro_usd_per_mtok) == (
        100_000,
        200_000,
    )
    assert model.HasField("created_at") and model.HasField("updated_at")


async def test_create_update_delete_and_the_prices_view(billing: RunningBilling) -> None:
    made = await billing.stub.CreateModel(billing_pb2.CreateModelRequest(model=EMBED))
    assert (made.name, made.type, made.context_length) == (
        "org/embed-1",
        billing_pb2.MODEL_TYPE_EMBEDDING,
        8192,
    )
    prices = await billing.stub.ListPrices(billing_pb2.ListPricesRequest())
    assert ("org/embed-1", 20_000, 0) in [
        (p.model, p.prompt_micro_usd_per_mtok, p.completion_micro_usd_per_mtok)
        for p in prices.prices
    ]

    changed = await billing.stub.UpdateModel(
        billing_pb2.UpdateModelRequest(name="org/embed-1", prompt_micro_usd_per_mtok=1_000_000)
    )
    assert (changed.type, changed.context_length, changed.prompt_micro_usd_per_mtok) == (
        billing_pb2.MODEL_TYPE_EMBEDDING,
        8192,
        1_000_000,
    )
    # The new price prices the events recorded from now on.
    await record(
        billing, usage_event("e1", model="org/embed-1", prompt_tokens=3, completion_tokens=0)
    )
    assert await _costs(billing) == {"e1": 3}

    # A price set through SetPrice is the same row: the catalog shows it.
    await billing.stub.SetPrice(
        billing_pb2.SetPriceRequest(
            model="org/embed-1", prompt_micro_usd_per_mtok=5, completion_micro_usd_per_mtok=6
        )
    )
    [embed] = [
        m
        for m in (await billing.stub.ListModels(billing_pb2.ListModelsRequest())).models
        if m.name == "org/embed-1"
    ]
    assert (embed.prompt_micro_usd_per_mtok, embed.completion_micro_usd_per_mtok) == (5, 6)
    assert embed.type == billing_pb2.MODEL_TYPE_EMBEDDING

    await billing.stub.DeleteModel(billing_pb2.DeleteModelRequest(name="org/embed-1"))
    listed = await billing.stub.ListModels(billing_pb2.ListModelsRequest())
    assert [m.name for m in listed.models] == ["cic-sim-small"]


async def test_a_model_priced_through_set_price_joins_the_catalog_as_a_chat_model(
    billing: RunningBilling,
) -> None:
    await billing.stub.SetPrice(
        billing_pb2.SetPriceRequest(
            model="llama", prompt_micro_usd_per_mtok=1, completion_micro_usd_per_mtok=2
        )
    )
    listed = await billing.stub.ListModels(billing_pb2.ListModelsRequest())
    assert ("llama", billing_pb2.MODEL_TYPE_CHAT, 4096) in _names(listed)


async def test_catalog_refusals(billing: RunningBilling) -> None:
    await billing.stub.CreateModel(billing_pb2.CreateModelRequest(model=EMBED))
    cases = [
        (
            billing.stub.CreateModel(billing_pb2.CreateModelRequest(model=EMBED)),
            grpc.StatusCode.ALREADY_EXISTS,
            "is in the catalog",
        ),
        (
            billing.stub.UpdateModel(billing_pb2.UpdateModelRequest(name="nope", context_length=9)),
            grpc.StatusCode.NOT_FOUND,
            "no model 'nope'",
        ),
        (
            billing.stub.DeleteModel(billing_pb2.DeleteModelRequest(name="*")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "is the default price",
        ),
        (
            billing.stub.UpdateModel(
                billing_pb2.UpdateModelRequest(name="org/embed-1", context_length=0)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "context_length must be between 1 and 10000000",
        ),
        (
            billing.stub.CreateModel(
                billing_pb2.CreateModelRequest(
                    model=billing_pb2.CatalogModel(name="x", context_length=10)
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "type must be chat, completion or embedding",
        ),
        (
            billing.stub.CreateModel(
                billing_pb2.CreateModelRequest(
                    model=billing_pb2.CatalogModel(
                        name="x\n", type=billing_pb2.MODEL_TYPE_CHAT, context_length=10
                    )
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "name contains a control character",
        ),
        (
            billing.stub.CreateModel(
                billing_pb2.CreateModelRequest(
                    model=billing_pb2.CatalogModel(
                        name="x",
                        type=billing_pb2.MODEL_TYPE_CHAT,
                        context_length=10,
                        prompt_micro_usd_per_mtok=-1,
                    )
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "prompt_micro_usd_per_mtok is negative",
        ),
    ]
    for call, code, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code
        assert message in (err.value.details() or "")


async def test_a_region_multiplier_prices_events_served_there(billing: RunningBilling) -> None:
    region = await billing.stub.CreateRegion(
        billing_pb2.CreateRegionRequest(
            region=billing_pb2.Region(
                code="eu-west", name="Europe West", cost_multiplier_ppm=1_500_000
            )
        )
    )
    assert (region.code, region.name, region.cost_multiplier_ppm) == (
        "eu-west",
        "Europe West",
        1_500_000,
    )
    # cic-sim-small: $0.10 prompt, $0.20 completion per million tokens.
    tokens = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}
    await record(
        billing,
        usage_event("home", **tokens),
        usage_event("eu", region="eu-west", **tokens),
        usage_event("unknown", region="mars-1", **tokens),
        # 7 prompt tokens cost 0.7 micro-dollars; 1.5x is 1.05, rounded half up once: 1.
        usage_event("eu-small", region="eu-west", prompt_tokens=7, completion_tokens=0),
        # 5 prompt tokens: 0.5 x 1.5 = 0.75 -> 1 (rounded once, not 0.5 -> 1 then x1.5).
        usage_event("eu-tiny", region="eu-west", prompt_tokens=5, completion_tokens=0),
    )
    costs = await _costs(billing)
    assert costs["home"] == 300_000
    assert costs["eu"] == 450_000  # exactly 1.5x
    assert costs["unknown"] == 300_000  # an unknown region costs 1.0x
    assert (costs["eu-small"], costs["eu-tiny"]) == (1, 1)

    changed = await billing.stub.UpdateRegion(
        billing_pb2.UpdateRegionRequest(code="eu-west", cost_multiplier_ppm=2_000_000)
    )
    assert (changed.name, changed.cost_multiplier_ppm) == ("Europe West", 2_000_000)
    await record(billing, usage_event("eu-later", region="eu-west", **tokens))
    costs = await _costs(billing)
    assert (costs["eu"], costs["eu-later"]) == (450_000, 600_000)  # recorded costs stay
    listed = await billing.stub.ListRegions(billing_pb2.ListRegionsRequest())
    assert [(r.code, r.cost_multiplier_ppm) for r in listed.regions] == [("eu-west", 2_000_000)]


async def test_region_refusals(billing: RunningBilling) -> None:
    good = billing_pb2.Region(code="us-east", name="US East", cost_multiplier_ppm=1_000_000)
    await billing.stub.CreateRegion(billing_pb2.CreateRegionRequest(region=good))
    cases = [
        (billing_pb2.CreateRegionRequest(region=good), grpc.StatusCode.ALREADY_EXISTS, "already"),
        (
            billing_pb2.CreateRegionRequest(
                region=billing_pb2.Region(code="bad code", name="n", cost_multiplier_ppm=1)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "code must be",
        ),
        (
            billing_pb2.CreateRegionRequest(
                region=billing_pb2.Region(code="zero", name="n", cost_multiplier_ppm=0)
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "cost_multiplier_ppm must be between 1 and",
        ),
    ]
    for request, code, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await billing.stub.CreateRegion(request)
        assert err.value.code() == code and message in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.UpdateRegion(billing_pb2.UpdateRegionRequest(code="nowhere", name="x"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
