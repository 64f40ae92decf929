"""The gateway's metrics: requests by route, status and a bounded model label; tokens; TTFT."""

import openai

from tests.unit.gateway.conftest import MODEL, Gateway


async def test_requests_tokens_and_time_to_first_token_are_counted(gateway: Gateway) -> None:
    _, _, key = await gateway.new_key()
    messages = [{"role": "user", "content": "a b"}]
    async with openai.AsyncOpenAI(
        api_key=key, base_url=f"{gateway.url}/v1", max_retries=0
    ) as client:
        await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3)
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=4, stream=True
        )
        _ = [c async for c in stream]
        for made_up in ("made-up-1", "made-up-2"):
            try:
                await client.chat.completions.create(model=made_up, messages=messages)
            except openai.NotFoundError:
                pass
    await gateway.services.billing.wait_for_events(2)

    sample = gateway.registry.get_sample_value
    route = "/v1/chat/completions"
    assert (
        sample("cic_gateway_requests_total", {"route": route, "status": "200", "model": MODEL}) == 2
    )
    # Models the scheduler does not know never become label values.
    assert sample("cic_gateway_requests_total", {"route": route, "status": "404", "model": ""}) == 2
    assert sample("cic_gateway_tokens_total", {"model": MODEL, "kind": "prompt"}) == 4
    assert sample("cic_gateway_tokens_total", {"model": MODEL, "kind": "completion"}) == 7
    assert sample("cic_gateway_time_to_first_token_seconds_count", {"model": MODEL}) == 1
    assert sample("cic_gateway_requests_in_flight", {"route": route}) == 0
    assert sample("cic_gateway_request_duration_seconds_count", {"route": route}) == 4
    labels = {
        s.labels.get("model")
        for m in gateway.registry.collect()
        for s in m.samples
        if m.name == "cic_gateway_requests"
    }
    assert "made-up-1" not in labels and "made-up-2" not in labels


async def test_unmatched_paths_share_one_route_label(gateway: Gateway) -> None:
    for path in ("/v1/a", "/v1/b", "/whatever"):
        async with gateway.session.get(gateway.url + path) as resp:
            assert resp.status == 404
    sample = gateway.registry.get_sample_value
    assert (
        sample("cic_gateway_requests_total", {"route": "unmatched", "status": "404", "model": ""})
        == 3
    )
