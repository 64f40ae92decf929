"""Response bodies and stream chunks, field for field as vLLM's OpenAI server writes them.

Non-streaming bodies are vLLM's pydantic models dumped whole (every field, nulls included).
Chat chunks are dumped with ``exclude_unset`` (only the fields vLLM sets), text-completion
chunks whole; the final usage chunk of either drops nulls. Key order follows vLLM's models.
"""

from __future__ import annotations

import base64
import time
import uuid
from array import array
from typing import Any

import orjson

from cic_vllm_sim.config import SimConfig
from cic_vllm_sim.generation import Choice

DONE = b"data: [DONE]\n\n"


def random_id() -> str:
    return uuid.uuid4().hex


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event: ``data: {json}`` and a blank line."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int, details: bool = True) -> dict[str, Any]:
    """vLLM's UsageInfo; ``details=False`` leaves out the unset prompt_tokens_details."""
    body: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    if details:
        body["prompt_tokens_details"] = None
    return body


class Head:
    """The fields every body and chunk of one response starts with."""

    def __init__(self, response_id: str, obj: str, model: str) -> None:
        created = int(time.time())
        self.fields = {"id": response_id, "object": obj, "created": created, "model": model}

    def body(self, **rest: Any) -> dict[str, Any]:
        return {**self.fields, **rest}


def chat_response(head: Head, choices: list[Choice], prompt_tokens: int) -> bytes:
    completion_tokens = sum(c.produced for c in choices)
    return orjson.dumps(
        head.body(
            choices=[
                {
                    "index": c.index,
                    "message": {
                        "role": "assistant",
                        "content": c.text,
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "tool_calls": [],
                        "reasoning": None,
                    },
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason,
                    "token_ids": None,
                }
                for c in choices
            ],
            service_tier=None,
            system_fingerprint=None,
            usage=usage(prompt_tokens, completion_tokens),
            prompt_logprobs=None,
            prompt_token_ids=None,
            kv_transfer_params=None,
        )
    )


def chat_role_chunk(head: Head, index: int, usage_now: dict[str, Any] | None) -> bytes:
    choice = {
        "index": index,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }
    if usage_now is None:
        return sse(head.body(choices=[choice], prompt_token_ids=None))
    return sse(head.body(choices=[choice], usage=usage_now, prompt_token_ids=None))


def chat_token_chunk(head: Head, choice: Choice, delta: str, usage_now: Any) -> bytes:
    body: dict[str, Any] = {
        "index": choice.index,
        "delta": {"content": delta},
        "logprobs": None,
        "finish_reason": choice.finish_reason,
    }
    if choice.finished:
        body["stop_reason"] = choice.stop_reason
    body["token_ids"] = None
    if usage_now is None:
        return sse(head.body(choices=[body]))
    return sse(head.body(choices=[body], usage=usage_now))


def completion_response(
    head: Head, choices: list[Choice], prompt_tokens: int, echo: list[str] | None
) -> bytes:
    completion_tokens = sum(c.produced for c in choices)
    return orjson.dumps(
        head.body(
            choices=[
                {
                    "index": position,
                    "text": (echo[position] if echo else "") + c.text,
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_reason,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                }
                for position, c in enumerate(choices)
            ],
            service_tier=None,
            system_fingerprint=None,
            usage=usage(prompt_tokens, completion_tokens),
            kv_transfer_params=None,
        )
    )


def completion_chunk(head: Head, choice: Choice, text: str, usage_now: Any) -> bytes:
    body = {
        "index": choice.index,
        "text": text,
        "logprobs": None,
        "finish_reason": choice.finish_reason,
        "stop_reason": choice.stop_reason,
        "prompt_token_ids": None,
        "token_ids": None,
    }
    return sse(head.body(choices=[body], usage=usage_now))


def usage_chunk(head: Head, prompt_tokens: int, completion_tokens: int) -> bytes:
    """The last chunk before [DONE] when the client asked for usage: no choices."""
    return sse(head.body(choices=[], usage=usage(prompt_tokens, completion_tokens, False)))


def embedding_response(
    head: Head, vectors: list[list[float]], prompt_tokens: int, encoding_format: str
) -> bytes:
    data = [
        {
            "index": index,
            "object": "embedding",
            "embedding": vector
            if encoding_format == "float"
            else base64.b64encode(array("f", vector).tobytes()).decode(),
        }
        for index, vector in enumerate(vectors)
    ]
    return orjson.dumps(head.body(data=data, usage=usage(prompt_tokens, 0)))


def models_response(config: SimConfig, created: int) -> bytes:
    permission = {
        "id": f"modelperm-{random_id()}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {
        "id": config.model_name,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": config.model,
        "parent": None,
        "max_model_len": config.max_model_len,
        "permission": [permission],
    }
    return orjson.dumps({"object": "list", "data": [card]})
