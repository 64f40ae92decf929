"""POST /v1/chat/completions: vLLM's bodies and chunks, usage and determinism."""

from __future__ import annotations

import re
from typing import Any

from aiohttp.test_utils import TestClient

from cic_vllm_sim.tokenizer import count_tokens
from tests.unit.vllm_sim.helpers import MODEL, SimFactory, chat_body, read_events

PROMPT_TOKENS = 8  # "Hello there!" (3) + message overhead (3) + generation prompt (2)


async def chat(sim: TestClient, **fields: Any) -> dict[str, Any]:
    response = await sim.post("/v1/chat/completions", json=chat_body(**fields))
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "application/json"
    return dict(await response.json())


async def stream(sim: TestClient, **fields: Any) -> list[Any]:
    response = await sim.post("/v1/chat/completions", json=chat_body(stream=True, **fields))
    return await read_events(response)


async def test_non_streaming_body_has_every_vllm_field(sim: TestClient) -> None:
    body = await chat(sim)
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", body["id"])
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL
    assert list(body) == [
        "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint",
        "usage", "prompt_logprobs", "prompt_token_ids", "kv_transfer_params",
    ]  # fmt: skip
    assert body["system_fingerprint"] is None
    [choice] = body["choices"]
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["tool_calls"] == []
    assert message["reasoning"] is None
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] is None
    completion_tokens = count_tokens(message["content"])
    assert 16 <= completion_tokens <= 64
    assert body["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
    }


async def test_same_request_gives_the_same_text_and_counts(sim: TestClient) -> None:
    first, second = await chat(sim, seed=3), await chat(sim, seed=3)
    assert first["choices"] == second["choices"]
    assert first["usage"] == second["usage"]
    assert first["id"] != second["id"]
    other = await chat(sim, content="Something else entirely", seed=3)
    assert other["choices"][0]["message"]["content"] != first["choices"][0]["message"]["content"]


async def test_max_tokens_cuts_with_finish_reason_length(sim: TestClient) -> None:
    body = await chat(sim, max_tokens=5)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5
    assert count_tokens(body["choices"][0]["message"]["content"]) == 5
    body = await chat(sim, max_tokens=100, max_completion_tokens=7)
    assert body["usage"]["completion_tokens"] == 7


async def test_stop_string_ends_with_stop_reason(sim: TestClient) -> None:
    text = (await chat(sim, max_tokens=30))["choices"][0]["message"]["content"]
    stop = " " + text.split(" ")[3]
    body = await chat(sim, max_tokens=30, stop=[stop])
    [choice] = body["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["stop_reason"] == stop
    assert choice["message"]["content"] == text[: text.index(stop)]


async def test_n_gives_distinct_choices_billed_together(sim: TestClient) -> None:
    body = await chat(sim, n=2, max_tokens=4)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    contents = {c["message"]["content"] for c in body["choices"]}
    assert len(contents) == 2
    assert body["usage"]["completion_tokens"] == 8
    assert body["usage"]["prompt_tokens"] == PROMPT_TOKENS


async def test_stream_sends_role_chunk_then_one_chunk_per_token(sim: TestClient) -> None:
    events = await stream(sim, max_tokens=3)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len(chunks) == 4
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", ids.pop())
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["model"] == MODEL
        assert "usage" not in chunk
    role, *tokens = chunks
    assert role["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert role["prompt_token_ids"] is None
    assert [list(t["choices"][0]) for t in tokens[:-1]] == [
        ["index", "delta", "logprobs", "finish_reason", "token_ids"]
    ] * 2
    last = tokens[-1]["choices"][0]
    assert (last["finish_reason"], last["stop_reason"]) == ("length", None)
    text = "".join(t["choices"][0]["delta"]["content"] for t in tokens)
    assert text == (await chat(sim, max_tokens=3))["choices"][0]["message"]["content"]


async def test_include_usage_adds_a_final_chunk_with_no_choices(sim: TestClient) -> None:
    events = await stream(sim, max_tokens=4, stream_options={"include_usage": True})
    *chunks, usage_chunk, done = events
    assert done == "[DONE]"
    assert all("usage" not in c for c in chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {
        "prompt_tokens": PROMPT_TOKENS,
        "total_tokens": PROMPT_TOKENS + 4,
        "completion_tokens": 4,
    }
    assert list(usage_chunk) == ["id", "object", "created", "model", "choices", "usage"]


async def test_continuous_usage_stats_puts_running_usage_on_every_chunk(sim: TestClient) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    events = await stream(sim, max_tokens=3, stream_options=options)
    *chunks, usage_chunk, _ = events
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3]
    for chunk in chunks:
        usage = chunk["usage"]
        assert usage["prompt_tokens"] == PROMPT_TOKENS
        assert usage["total_tokens"] == PROMPT_TOKENS + usage["completion_tokens"]
    assert usage_chunk["usage"]["completion_tokens"] == 3


async def test_stream_and_non_stream_agree_on_usage(sim: TestClient) -> None:
    body = await chat(sim, seed=11)
    events = await stream(sim, seed=11, stream_options={"include_usage": True})
    assert events[-2]["usage"] == {
        k: v for k, v in body["usage"].items() if k != "prompt_tokens_details"
    }
    assert events[-3]["choices"][0]["finish_reason"] == "stop"


async def test_force_include_usage_streams_usage_unasked(make_sim: SimFactory) -> None:
    sim = await make_sim(enable_force_include_usage=True)
    events = await stream(sim, max_tokens=2)
    assert events[-2]["choices"] == []
    assert [c["usage"]["completion_tokens"] for c in events[:-2]] == [0, 1, 2]


async def test_x_request_id_names_the_completion(sim: TestClient) -> None:
    response = await sim.post(
        "/v1/chat/completions", json=chat_body(), headers={"X-Request-Id": "abc123"}
    )
    assert (await response.json())["id"] == "chatcmpl-abc123"


async def test_unknown_fields_are_ignored(sim: TestClient) -> None:
    body = await chat(sim, max_tokens=2, some_future_field={"x": 1}, user="u1", top_p=0.5)
    assert body["usage"]["completion_tokens"] == 2


async def test_stream_with_n_interleaves_choices_and_sums_usage(sim: TestClient) -> None:
    events = await stream(sim, n=2, max_tokens=2, stream_options={"include_usage": True})
    *chunks, usage_chunk, _ = events
    indexes = [c["choices"][0]["index"] for c in chunks]
    assert indexes == [0, 1, 0, 1, 0, 1]
    assert [c["choices"][0]["delta"].get("role") for c in chunks[:2]] == ["assistant"] * 2
    assert usage_chunk["usage"]["completion_tokens"] == 4
