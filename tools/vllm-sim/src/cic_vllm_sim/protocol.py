"""Request models and error answers, shaped like vLLM's OpenAI server (FastAPI + pydantic).

Requests are validated as vLLM validates them: unknown fields are ignored (with a warning),
schema errors answer 400 with FastAPI's error list as the message, an unknown model 404.
Errors use vLLM's body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

logger = logging.getLogger(__name__)

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_UNSUPPORTED_MEDIA = "Unsupported Media Type: Only 'application/json' is allowed"


class ApiError(Exception):
    """An error answer: HTTP status, message, vLLM error type and the parameter at fault."""

    def __init__(self, status: int, message: str, err_type: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.param = param

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.err_type, "param": self.param}
        return orjson.dumps({"error": {**error, "code": self.status}})


class VLLMValidationError(ValueError):
    """A rejected field, as vLLM raises it (the name shows in validation messages)."""

    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None):
        super().__init__(message)
        self.parameter = parameter
        self.value = value

    def __str__(self) -> str:
        extras = []
        if self.parameter is not None:
            extras.append(f"parameter={self.parameter}")
        if self.value is not None:
            extras.append(f"value={self.value}")
        base = super().__str__()
        return f"{base} ({', '.join(extras)})" if extras else base


def bad_request(message: str | VLLMValidationError, param: str | None = None) -> ApiError:
    if isinstance(message, VLLMValidationError):
        return ApiError(400, str(message), "BadRequestError", message.parameter)
    return ApiError(400, message, "BadRequestError", param)


def model_not_found(model: str | None) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")


def internal_error() -> ApiError:
    return ApiError(500, "Internal server error", "InternalServerError")


def _validation_failed(errors: list[Any]) -> ApiError:
    """FastAPI's RequestValidationError as vLLM's exception handler answers it."""
    param = None
    for error in errors:
        ctx_error = error.get("ctx", {}).get("error") if isinstance(error, dict) else None
        if isinstance(ctx_error, VLLMValidationError):
            param = ctx_error.parameter
            break
    return ApiError(400, str(errors), "Bad Request", param)


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class ChatMessage(OpenAIBaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None


def _reject_stream_options_without_stream(data: Any) -> Any:
    if isinstance(data, dict) and data.get("stream_options") and not data.get("stream"):
        raise VLLMValidationError(
            "Stream options can only be defined when `stream=True`.", parameter="stream_options"
        )
    return data


class GenerationParams(OpenAIBaseModel):
    """Fields chat and text completions share."""

    model: str | None = None
    n: int | None = 1
    seed: int | None = Field(None, ge=_LONG_MIN, le=_LONG_MAX)
    stop: str | list[str] | None = []
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    include_stop_str_in_output: bool = False
    request_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_stream_options(cls, data: Any) -> Any:
        return _reject_stream_options_without_stream(data)

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(GenerationParams):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = 0
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = "none"
    add_generation_prompt: bool = True

    @model_validator(mode="before")
    @classmethod
    def _default_tool_choice(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tool_choice" not in data and data.get("tools"):
            data["tool_choice"] = "auto"
        return data

    def output_limit(self) -> tuple[int | None, str]:
        """The requested output limit and the field it came from."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"


class CompletionRequest(GenerationParams):
    prompt: list[int] | list[list[int]] | str | list[str] | None = None
    max_tokens: int | None = 16
    echo: bool | None = False
    suffix: str | None = None
    logprobs: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _require_prompt(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("prompt") in (None, ""):
            raise ValueError("Either prompt or prompt_embeds must be provided and non-empty.")
        return data


class EmbeddingRequest(OpenAIBaseModel):
    model: str | None = None
    input: list[int] | list[list[int]] | str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    request_id: str | None = None


RequestT = TypeVar("RequestT", bound=OpenAIBaseModel)


def parse_request(model_cls: type[RequestT], content_type: str, body: bytes) -> RequestT:
    """Validate an HTTP request body as FastAPI would for ``model_cls``; raises ApiError."""
    if content_type != "application/json":
        raise ApiError(400, str([_UNSUPPORTED_MEDIA]), "Bad Request")
    if not body:
        raise _validation_failed(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}
        raise _validation_failed([{**error, "input": {}, "ctx": {"error": exc.msg}}]) from None
    try:
        request = model_cls.model_validate(data)
    except ValidationError as exc:
        errors = [
            {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
        ]
        raise _validation_failed(errors) from None
    if request.model_extra:
        logger.warning(
            "The following fields were present in the request but ignored: %s",
            set(request.model_extra),
        )
    return request


def check_sampling(
    n: int | None, temperature: float | None, top_p: float | None, max_tokens: int | None
) -> None:
    """vLLM's SamplingParams checks for the fields the simulator reads; raises ApiError."""
    if n is not None and n < 1:
        raise bad_request(VLLMValidationError(f"n must be at least 1, got {n}.", parameter="n"))
    if temperature is not None and temperature < 0.0:
        message = f"temperature must be non-negative, got {temperature}."
        raise bad_request(VLLMValidationError(message, parameter="temperature", value=temperature))
    if top_p is not None and not 0.0 < top_p <= 1.0:
        message = f"top_p must be in (0, 1], got {top_p}."
        raise bad_request(VLLMValidationError(message, parameter="top_p", value=top_p))
    if max_tokens is not None and max_tokens < 1:
        message = f"max_tokens must be at least 1, got {max_tokens}."
        raise bad_request(VLLMValidationError(message, parameter="max_tokens", value=max_tokens))


def check_context(
    prompt_tokens: int, max_tokens: int | None, max_model_len: int, param: str = "max_tokens"
) -> int:
    """vLLM's context-length checks; returns the room left for output tokens."""
    if prompt_tokens >= max_model_len:
        message = (
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"request has {prompt_tokens} input tokens. Please reduce the length of the input "
            "messages."
        )
        error = VLLMValidationError(message, parameter="input_tokens", value=prompt_tokens)
        raise bad_request(error)
    if max_tokens is not None and prompt_tokens + max_tokens > max_model_len:
        message = (
            f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's "
            f"maximum context length is {max_model_len} tokens and your request has "
            f"{prompt_tokens} input tokens ({max_tokens} > {max_model_len} - {prompt_tokens})."
        )
        raise bad_request(VLLMValidationError(message, parameter=param, value=max_tokens))
    return max_model_len - prompt_tokens


def check_tools(request: ChatCompletionRequest) -> None:
    """A vLLM server started without a tool parser refuses tool choices other than none."""
    choice = request.tool_choice
    if choice in (None, "none"):
        return
    if request.tools is None:
        raise bad_request("When using `tool_choice`, `tools` must be set.")
    if choice == "auto":
        raise bad_request(
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
        )
    raise bad_request(f'tool_choice="{choice}" requires --tool-call-parser to be set')
