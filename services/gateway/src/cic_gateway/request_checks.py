"""The request fields the gateway itself relies on, checked before a node is picked, with the
400s OpenAI gives (naming the ``param``). Everything else is the node's to judge: vLLM answers
a bad field with its own 400, which the client receives as is."""

from __future__ import annotations

from typing import Any

from cic_gateway.errors import ApiError

CHAT_PATH = "/v1/chat/completions"
_STREAMING_PATHS = {CHAT_PATH, "/v1/completions"}
_TOKEN_LIMITS = ("max_tokens", "max_completion_tokens")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _invalid_type(param: str, expected: str, value: Any) -> ApiError:
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def check_fields(path: str, body: dict[str, Any]) -> None:
    """Raises the 400 for the first field of ``body`` the gateway cannot work with."""
    if path in _STREAMING_PATHS:
        _check_stream(body)
    if path == CHAT_PATH:
        _check_messages(body)
    for name in _TOKEN_LIMITS:
        _check_token_limit(body, name)


def _check_stream(body: dict[str, Any]) -> None:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid_type("stream", "a boolean", stream)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid_type("stream_options", "an object", options)


def _check_messages(body: dict[str, Any]) -> None:
    if "messages" not in body:
        raise ApiError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _invalid_type("messages", "an array", messages)
    if not messages:
        raise ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1,"
            " but got an empty array instead.",
            param="messages",
            code="empty_array",
        )


def _check_token_limit(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(name, "an integer", value)
    if value < 1:
        raise ApiError(
            400,
            f"Invalid '{name}': integer below minimum value. Expected a value >= 1,"
            f" but got {value} instead.",
            param=name,
            code="integer_below_min_value",
        )
