"""Error answers: vLLM's status codes and its {"error": {...}} body."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.unit.vllm_sim.helpers import MODEL, SimFactory, chat_body

CHAT = "/v1/chat/completions"


async def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.headers["Content-Type"] == "application/json"
    body = await response.json()
    assert list(body) == ["error"]
    assert list(body["error"]) == ["message", "type", "param", "code"]
    assert body["error"]["code"] == status
    return dict(body["error"])


async def test_bad_json_is_a_400(sim: TestClient) -> None:
    response = await sim.post(
        CHAT, data=b'{"model": ', headers={"Content-Type": "application/json"}
    )
    error = await error_of(response, 400)
    assert error["type"] == "Bad Request"
    assert "json_invalid" in error["message"]
    assert "JSON decode error" in error["message"]


async def test_non_json_content_type_is_refused(sim: TestClient) -> None:
    response = await sim.post(CHAT, data=b"{}", headers={"Content-Type": "text/plain"})
    error = await error_of(response, 400)
    assert "Only 'application/json' is allowed" in error["message"]


async def test_missing_messages_names_the_field(sim: TestClient) -> None:
    response = await sim.post(CHAT, json={"model": MODEL})
    error = await error_of(response, 400)
    assert error["type"] == "Bad Request"
    assert "'missing'" in error["message"]
    assert "('body', 'messages')" in error["message"]


async def test_missing_prompt_is_a_400(sim: TestClient) -> None:
    response = await sim.post("/v1/completions", json={"model": MODEL})
    error = await error_of(response, 400)
    assert "Either prompt or prompt_embeds must be provided and non-empty." in error["message"]


async def test_missing_embedding_input_is_a_400(sim: TestClient) -> None:
    response = await sim.post("/v1/embeddings", json={"model": MODEL})
    error = await error_of(response, 400)
    assert "('body', 'input')" in error["message"]


async def test_wrong_field_type_is_a_400(sim: TestClient) -> None:
    response = await sim.post(CHAT, json=chat_body(max_tokens="lots"))
    error = await error_of(response, 400)
    assert "max_tokens" in error["message"]


async def test_unknown_model_is_a_404(sim: TestClient) -> None:
    response = await sim.post(CHAT, json=chat_body() | {"model": "gpt-x"})
    error = await error_of(response, 404)
    assert error == {
        "message": "The model `gpt-x` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    response = await sim.post("/v1/completions", json={"model": "gpt-x", "prompt": "hi"})
    await error_of(response, 404)


async def test_model_may_be_left_out(sim: TestClient) -> None:
    response = await sim.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
    assert (await response.json())["model"] == MODEL


async def test_max_tokens_over_the_context_is_a_400(make_sim: SimFactory) -> None:
    sim = await make_sim(max_model_len=100)
    response = await sim.post(CHAT, json=chat_body(max_tokens=95))
    error = await error_of(response, 400)
    assert error["type"] == "BadRequestError"
    assert error["param"] == "max_tokens"
    assert error["message"].startswith("'max_tokens' or 'max_completion_tokens' is too large: 95.")
    response = await sim.post(CHAT, json=chat_body(max_completion_tokens=95))
    assert (await error_of(response, 400))["param"] == "max_completion_tokens"


async def test_prompt_over_the_context_is_a_400(make_sim: SimFactory) -> None:
    sim = await make_sim(max_model_len=10)
    response = await sim.post(CHAT, json=chat_body("one two three four five"))
    error = await error_of(response, 400)
    assert error["param"] == "input_tokens"
    assert "maximum context length is 10 tokens" in error["message"]


async def test_without_max_tokens_output_fills_the_room_left(make_sim: SimFactory) -> None:
    sim = await make_sim(max_model_len=12)
    response = await sim.post(CHAT, json=chat_body())
    body = await response.json()
    assert body["usage"]["completion_tokens"] == 12 - 8
    assert body["choices"][0]["finish_reason"] == "length"


async def test_sampling_values_are_checked(sim: TestClient) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
    ]
    for fields, param in cases:
        error = await error_of(await sim.post(CHAT, json=chat_body(**fields)), 400)
        assert (error["type"], error["param"]) == ("BadRequestError", param)


async def test_stream_options_need_stream(sim: TestClient) -> None:
    response = await sim.post(CHAT, json=chat_body(stream_options={"include_usage": True}))
    error = await error_of(response, 400)
    assert error["param"] == "stream_options"
    assert "Stream options can only be defined when `stream=True`." in error["message"]


async def test_tools_need_a_tool_parser(sim: TestClient) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    error = await error_of(await sim.post(CHAT, json=chat_body(tools=tools)), 400)
    assert "--enable-auto-tool-choice" in error["message"]
    response = await sim.post(CHAT, json=chat_body(tools=tools, tool_choice="none"))
    assert response.status == 200


async def test_unknown_route_and_method_use_the_error_shape(sim: TestClient) -> None:
    assert (await error_of(await sim.get("/v1/nothing"), 404))["message"] == "Not Found"
    error = await error_of(await sim.get(CHAT), 405)
    assert error["type"] == "Method Not Allowed"


async def test_errors_do_not_count_tokens(sim: TestClient) -> None:
    await sim.post(CHAT, json={"model": MODEL})
    stats = await (await sim.get("/sim/stats")).json()
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (0, 0)
    assert stats["requests"] == {"/v1/chat/completions": 1, "/sim/stats": 1}
