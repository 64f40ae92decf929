"""The inference routes: /v1/chat/completions, /v1/completions, /v1/embeddings."""

from __future__ import annotations

from aiohttp import web

from cic_vllm_sim import responses
from cic_vllm_sim.config import SimConfig
from cic_vllm_sim.engine import ENGINE, Engine
from cic_vllm_sim.generation import Choice, embedding, seed_for
from cic_vllm_sim.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    GenerationParams,
    StreamOptions,
    VLLMValidationError,
    bad_request,
    check_context,
    check_sampling,
    check_tools,
    internal_error,
    model_not_found,
    parse_request,
)
from cic_vllm_sim.responses import Head
from cic_vllm_sim.serving import Job, pause, respond_stream, respond_whole
from cic_vllm_sim.tokenizer import count_tokens, render_chat

PROMPT_REQUIRED = "Either prompt or prompt_embeds must be provided and non-empty."
STREAM_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}


def check_model(model: str | None, config: SimConfig) -> None:
    if model is not None and model != config.model_name:
        raise model_not_found(model)


def usage_wanted(options: StreamOptions | None, forced: bool) -> tuple[bool, bool]:
    """vLLM's rule: (final usage chunk?, usage on every chunk?)."""
    if forced:
        return True, True
    if options is None:
        return False, False
    include = bool(options.include_usage)
    return include, include and bool(options.continuous_usage_stats)


def base_id(request: web.Request, params: GenerationParams | EmbeddingRequest) -> str:
    """vLLM names a response after the client's X-Request-Id, else its request_id, else random."""
    return request.headers.get("X-Request-Id") or params.request_id or responses.random_id()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    config = engine.config
    params = parse_request(ChatCompletionRequest, request.content_type, await request.read())
    check_model(params.model, config)
    check_tools(params)
    messages = ((m.role, m.content) for m in params.messages)
    prompt = render_chat(messages, params.add_generation_prompt)
    prompt_tokens = count_tokens(prompt)
    limit, limit_field = params.output_limit()
    room = check_context(prompt_tokens, limit, config.max_model_len, limit_field)
    check_sampling(params.n, params.temperature, params.top_p, limit)
    stream = bool(params.stream)
    obj = "chat.completion.chunk" if stream else "chat.completion"
    choices = make_choices(prompt, params, limit, room)
    include, continuous = usage_wanted(params.stream_options, config.enable_force_include_usage)
    job = Job(
        chat=True,
        head=Head(f"chatcmpl-{base_id(request, params)}", obj, config.model_name),
        choices=choices,
        choice_prompt_tokens=[prompt_tokens] * len(choices),
        prompt_tokens=prompt_tokens,
        include_usage=include,
        continuous_usage=continuous,
    )
    return await serve(request, engine, job, stream)


async def completions(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    config = engine.config
    params = parse_request(CompletionRequest, request.content_type, await request.read())
    check_model(params.model, config)
    if params.suffix is not None:
        raise bad_request("suffix is not currently supported")
    prompts = prompt_list(params.prompt, PROMPT_REQUIRED)
    counts = [len(p) if isinstance(p, list) else count_tokens(p) for p in prompts]
    rooms = [check_context(c, params.max_tokens, config.max_model_len) for c in counts]
    check_sampling(params.n, params.temperature, params.top_p, params.max_tokens)
    choices: list[Choice] = []
    for prompt, room in zip(prompts, rooms, strict=True):
        choices += make_choices(prompt_key(prompt), params, params.max_tokens, room, len(choices))
    n = params.n or 1
    echo = [p if isinstance(p, str) else "" for p in prompts for _ in range(n)]
    stream = bool(params.stream)
    include, continuous = usage_wanted(params.stream_options, config.enable_force_include_usage)
    job = Job(
        chat=False,
        head=Head(f"cmpl-{base_id(request, params)}", "text_completion", config.model_name),
        choices=choices,
        choice_prompt_tokens=[count for count in counts for _ in range(n)],
        prompt_tokens=sum(counts),
        include_usage=include,
        continuous_usage=continuous,
        echo=echo if params.echo else None,
    )
    return await serve(request, engine, job, stream)


def make_choices(
    key: str, params: GenerationParams, max_tokens: int | None, room: int, first_index: int = 0
) -> list[Choice]:
    """The request's ``n`` choices for one prompt, numbered from ``first_index``."""
    stops, include_stop = params.stop_strings(), params.include_stop_str_in_output
    return [
        Choice(
            first_index + i, seed_for(key, params.seed, i), max_tokens, room, stops, include_stop
        )
        for i in range(params.n or 1)
    ]


def prompt_key(prompt: str | list[int]) -> str:
    """The text a prompt's output is seeded from (token ids joined by spaces)."""
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


def prompt_list(
    prompt: list[int] | list[list[int]] | str | list[str] | None, error: str
) -> list[str | list[int]]:
    """A request's prompts (or inputs): each a string or a list of token ids."""
    if prompt is None or len(prompt) == 0:
        raise bad_request(error)
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


async def serve(request: web.Request, engine: Engine, job: Job, stream: bool) -> web.StreamResponse:
    """Run a prepared job through fault injection, admission and the chosen answer form."""
    if engine.roll_failure():
        raise internal_error()
    if not stream:
        async with engine.admit(job.prompt_tokens) as run:
            return await respond_whole(request, engine, run, job)
    job.dropped = engine.roll_drop()
    response = web.StreamResponse(headers=STREAM_HEADERS)
    await response.prepare(request)
    async with engine.admit(job.prompt_tokens) as run:
        await respond_stream(request, response, engine, run, job)
    return response


async def embeddings(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    config = engine.config
    params = parse_request(EmbeddingRequest, request.content_type, await request.read())
    check_model(params.model, config)
    inputs = prompt_list(params.input, "input must be non-empty")
    counts = [len(i) if isinstance(i, list) else count_tokens(i) for i in inputs]
    for count in counts:
        if count > config.max_model_len:
            message = (
                f"This model's maximum context length is {config.max_model_len} tokens. "
                f"However, you requested {count} tokens in the input for embedding "
                "generation. Please reduce the length of the input."
            )
            raise bad_request(VLLMValidationError(message, parameter="input_tokens", value=count))
    dims = params.dimensions
    if dims is not None and not 1 <= dims <= config.embedding_dim:
        raise bad_request(f"dimensions must be between 1 and {config.embedding_dim}", "dimensions")
    if engine.roll_failure():
        raise internal_error()
    keys = [prompt_key(i) for i in inputs]
    head = Head(f"embd-{base_id(request, params)}", "list", config.model_name)
    async with engine.admit(sum(counts)) as run:
        await pause(engine.knobs.ttft_ms)
        vectors = [embedding(key, config.embedding_dim, dims) for key in keys]
        body = responses.embedding_response(head, vectors, sum(counts), params.encoding_format)
        run.finish("stop")
        return web.Response(body=body, content_type="application/json")
