"""Serving a prepared generation job: pacing, chunking, client aborts and injected drops.

Streams send one chunk per generated token the moment it exists (each `write` goes straight
to the socket; nothing is buffered): the first after the time-to-first-token, the next ones
one inter-token latency apart. A client that goes away aborts the request at once: no more
tokens are generated.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cic_vllm_sim import responses
from cic_vllm_sim.engine import Engine, Run
from cic_vllm_sim.generation import Choice
from cic_vllm_sim.responses import Head

DROP_AFTER_TOKENS = 3


@dataclass
class Job:
    """One chat or text completion request, validated and ready to generate."""

    chat: bool
    head: Head
    choices: list[Choice]
    choice_prompt_tokens: list[int]
    prompt_tokens: int
    include_usage: bool = False
    continuous_usage: bool = False
    echo: list[str] | None = None
    dropped: bool = False


async def pause(milliseconds: float) -> None:
    """Wait ``milliseconds``; with none, still let the event loop run other work."""
    await asyncio.sleep(milliseconds / 1000.0 if milliseconds > 0 else 0)


async def send(request: web.Request, response: web.StreamResponse, data: bytes) -> bool:
    """Write one chunk; False when the client has gone away."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return False
    try:
        await response.write(data)
    except ConnectionError:
        return False
    return True


async def respond_whole(request: web.Request, engine: Engine, run: Run, job: Job) -> web.Response:
    """A non-streaming answer: generate everything, wait as long as streaming would, send."""
    await pause(engine.knobs.ttft_ms)
    for choice in job.choices:
        choice.run()
    longest = max(c.produced for c in job.choices)
    if longest > 1 and engine.knobs.itl_ms > 0:
        await pause(engine.knobs.itl_ms * (longest - 1))
    if job.chat:
        body = responses.chat_response(job.head, job.choices, job.prompt_tokens)
    else:
        body = responses.completion_response(job.head, job.choices, job.prompt_tokens, job.echo)
    response = web.Response(body=body, content_type="application/json")
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        return response
    run.delivered(sum(c.produced for c in job.choices))
    for choice in job.choices:
        run.finish(choice.finish_reason or "stop")
    return response


async def respond_stream(
    request: web.Request, response: web.StreamResponse, engine: Engine, run: Run, job: Job
) -> None:
    """Stream ``job`` chunk by chunk; drops the connection part way when told to."""
    drop_after = None
    if job.dropped:
        drop_after = min(DROP_AFTER_TOKENS, min(c.length for c in job.choices) - 1)
    await pause(engine.knobs.ttft_ms)
    if job.chat and not await _send_role_chunks(request, response, job):
        run.finish("abort")
        return
    steps = 0
    while any(not c.finished for c in job.choices):
        if drop_after is not None and steps >= drop_after:
            _drop_connection(request, engine, run)
            return
        if steps:
            await pause(engine.knobs.itl_ms)
        for choice in job.choices:
            if not choice.finished and not await _send_token(request, response, run, job, choice):
                run.finish("abort")
                return
        steps += 1
    if job.include_usage:
        completion_tokens = sum(c.produced for c in job.choices)
        chunk = responses.usage_chunk(job.head, job.prompt_tokens, completion_tokens)
        if not await send(request, response, chunk):
            return
    await send(request, response, responses.DONE)


async def _send_role_chunks(request: web.Request, response: web.StreamResponse, job: Job) -> bool:
    for choice in job.choices:
        usage_now = None
        if job.continuous_usage:
            usage_now = responses.usage(job.prompt_tokens, 0, details=False)
        chunk = responses.chat_role_chunk(job.head, choice.index, usage_now)
        if not await send(request, response, chunk):
            return False
    return True


async def _send_token(
    request: web.Request, response: web.StreamResponse, run: Run, job: Job, choice: Choice
) -> bool:
    """Generate ``choice``'s next token and send its chunk; False when the client is gone."""
    first = choice.produced == 0
    delta = choice.step()
    usage_now: Any = None
    if job.continuous_usage:
        prompt_tokens = job.choice_prompt_tokens[choice.index]
        usage_now = responses.usage(prompt_tokens, choice.produced, details=not job.chat)
    if job.chat:
        chunk = responses.chat_token_chunk(job.head, choice, delta, usage_now)
    else:
        if first and job.echo:
            delta = job.echo[choice.index] + delta
        chunk = responses.completion_chunk(job.head, choice, delta, usage_now)
    if not await send(request, response, chunk):
        return False
    run.delivered(1)
    if choice.finish_reason is not None:
        run.finish(choice.finish_reason)
    return True


def _drop_connection(request: web.Request, engine: Engine, run: Run) -> None:
    """Injected fault: close the TCP connection mid-stream, with no final chunk or [DONE]."""
    engine.stats.dropped += 1
    run.finish("abort")
    if request.transport is not None:
        request.transport.close()
