"""The gateway sends each pick the hash of the prompt's start (``prefix_key``), so requests that
share a system prompt and conversation start can land on the node whose prefix cache holds it."""

from __future__ import annotations

from typing import Any

from cic_gateway.scheduler_client import PREFIX_KEY_CHARS, prefix_key
from tests.unit.gateway.conftest import MODEL, Gateway
from tests.unit.gateway.fakes import EMBED_MODEL

SYSTEM = "You are a careful assistant. " * 30  # longer than PREFIX_KEY_CHARS


def _chat(*messages: tuple[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": role, "content": content} for role, content in messages],
        "max_tokens": 2,
        **extra,
    }


async def _post(gateway: Gateway, key: str, path: str, body: dict[str, Any]) -> None:
    async with gateway.session.post(
        f"{gateway.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status == 200, await response.text()
        await response.read()


def test_the_key_is_a_short_stable_hash_of_the_prompt_start_only() -> None:
    first = prefix_key(_chat(("system", SYSTEM), ("user", "What is 2+2?")))
    assert len(first) == 16 and int(first, 16) >= 0
    later_turn = _chat(("system", SYSTEM), ("user", "Tell me about Rome."), ("assistant", "..."))
    assert prefix_key(later_turn) == first, "only the first PREFIX_KEY_CHARS characters count"
    other_system = _chat(("system", "Be terse. " + SYSTEM), ("user", "What is 2+2?"))
    assert prefix_key(other_system) != first
    assert len(SYSTEM) > PREFIX_KEY_CHARS


def test_roles_parts_salts_and_prompts_all_shape_the_key() -> None:
    text = _chat(("user", "hello there"))
    parts = _chat(("user", [{"type": "text", "text": "hello there"}]))
    assert prefix_key(text) == prefix_key(parts)
    assert prefix_key(_chat(("system", "hello there"))) != prefix_key(text)
    assert prefix_key({**text, "cache_salt": "tenant-a"}) != prefix_key(text)
    assert prefix_key({"prompt": "Once upon a time"}) == prefix_key(
        {"prompt": ["Once upon a time"]}
    )
    assert prefix_key({"prompt": [[1, 2, 3]]}) != prefix_key({"prompt": [[1, 2, 4]]})
    assert prefix_key({"prompt": ""}) == "" and prefix_key({"input": "embed me"}) == ""


async def test_each_pick_carries_the_prefix_key_of_its_request(gateway: Gateway) -> None:
    _, _, key = await gateway.new_key()
    conversation = _chat(("system", SYSTEM), ("user", "What is 2+2?"))
    follow_up = _chat(("system", SYSTEM), ("user", "And 3+3?"), ("assistant", "6"))
    short = _chat(("user", "hi"))

    await _post(gateway, key, "/v1/chat/completions", conversation)
    await _post(gateway, key, "/v1/chat/completions", {**follow_up, "stream": True})
    await _post(gateway, key, "/v1/chat/completions", short)
    await _post(gateway, key, "/v1/completions", {"model": MODEL, "prompt": "abc", "max_tokens": 1})
    gateway.services.scheduler.add_node("node-e", EMBED_MODEL, gateway.node.endpoint)
    await _post(gateway, key, "/v1/embeddings", {"model": EMBED_MODEL, "input": "abc"})

    sent = gateway.services.scheduler.prefix_keys
    assert sent == [
        prefix_key(conversation),
        prefix_key(conversation),
        prefix_key(short),
        prefix_key({"prompt": "abc"}),
        "",
    ]
    assert len(set(sent)) == 4
