"""POST /v1/completions and POST /v1/embeddings."""

from __future__ import annotations

import base64
import re
from array import array
from typing import Any

from aiohttp.test_utils import TestClient

from cic_vllm_sim.tokenizer import count_tokens
from tests.unit.vllm_sim.helpers import MODEL, read_events


async def complete(sim: TestClient, **fields: Any) -> dict[str, Any]:
    response = await sim.post("/v1/completions", json={"model": MODEL, **fields})
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def test_non_streaming_completion_body(sim: TestClient) -> None:
    body = await complete(sim, prompt="Hello there!", max_tokens=5)
    assert re.fullmatch(r"cmpl-[0-9a-f]{32}", body["id"])
    assert body["object"] == "text_completion"
    assert list(body) == [
        "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint",
        "usage", "kv_transfer_params",
    ]  # fmt: skip
    [choice] = body["choices"]
    assert list(choice) == [
        "index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids",
        "prompt_logprobs", "prompt_token_ids",
    ]  # fmt: skip
    assert choice["finish_reason"] == "length"
    assert count_tokens(choice["text"]) == 5
    assert body["usage"] == {
        "prompt_tokens": 3,
        "total_tokens": 8,
        "completion_tokens": 5,
        "prompt_tokens_details": None,
    }


async def test_max_tokens_defaults_to_16_as_in_vllm(sim: TestClient) -> None:
    body = await complete(sim, prompt="Hello")
    assert body["usage"]["completion_tokens"] == 16
    assert body["choices"][0]["finish_reason"] == "length"
    unbounded = await complete(sim, prompt="Hello", max_tokens=None)
    assert unbounded["choices"][0]["finish_reason"] == "stop"
    assert 16 <= unbounded["usage"]["completion_tokens"] <= 64


async def test_token_id_prompts_and_batches_give_one_choice_each(sim: TestClient) -> None:
    body = await complete(sim, prompt=[[1, 2, 3], [4, 5]], max_tokens=2)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["prompt_tokens"] == 5
    assert body["usage"]["completion_tokens"] == 4


async def test_echo_prepends_the_prompt(sim: TestClient) -> None:
    body = await complete(sim, prompt="Say:", max_tokens=2, echo=True)
    assert body["choices"][0]["text"].startswith("Say:")
    assert body["usage"]["completion_tokens"] == 2


async def test_streaming_completion_chunks(sim: TestClient) -> None:
    response = await sim.post(
        "/v1/completions",
        json={
            "model": MODEL,
            "prompt": "Hello there!",
            "max_tokens": 3,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        },
    )
    *chunks, usage_chunk, done = await read_events(response)
    assert done == "[DONE]"
    assert len(chunks) == 3
    for number, chunk in enumerate(chunks, start=1):
        assert chunk["object"] == "text_completion"
        assert list(chunk["choices"][0]) == [
            "index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids",
            "token_ids",
        ]  # fmt: skip
        assert chunk["usage"] == {
            "prompt_tokens": 3,
            "total_tokens": 3 + number,
            "completion_tokens": number,
            "prompt_tokens_details": None,
        }
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert usage_chunk == {
        "id": chunks[0]["id"],
        "object": "text_completion",
        "created": chunks[0]["created"],
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 3, "total_tokens": 6, "completion_tokens": 3},
    }


async def test_streaming_completion_without_usage_has_null_usage(sim: TestClient) -> None:
    response = await sim.post(
        "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2, "stream": True}
    )
    events = await read_events(response)
    assert len(events) == 3
    assert [e["usage"] for e in events[:-1]] == [None, None]


async def test_embeddings_float_and_base64(sim: TestClient) -> None:
    response = await sim.post(
        "/v1/embeddings", json={"model": MODEL, "input": ["Hello there!", "Bye"]}
    )
    body = await response.json()
    assert re.fullmatch(r"embd-[0-9a-f]{32}", body["id"])
    assert body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    vector = body["data"][0]["embedding"]
    assert len(vector) == 32
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-9
    assert body["usage"] == {
        "prompt_tokens": 4,
        "total_tokens": 4,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
    }
    response = await sim.post(
        "/v1/embeddings",
        json={"model": MODEL, "input": "Hello there!", "encoding_format": "base64"},
    )
    encoded = (await response.json())["data"][0]["embedding"]
    decoded = array("f", base64.b64decode(encoded)).tolist()
    assert decoded == [float(array("f", [v])[0]) for v in vector]


async def test_embedding_dimensions_and_token_inputs(sim: TestClient) -> None:
    response = await sim.post(
        "/v1/embeddings", json={"model": MODEL, "input": [1, 2, 3], "dimensions": 8}
    )
    body = await response.json()
    assert len(body["data"][0]["embedding"]) == 8
    assert body["usage"]["prompt_tokens"] == 3
