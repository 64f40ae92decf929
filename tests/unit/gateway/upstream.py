"""A tiny vLLM-like node for the gateway's tests: vLLM's chunk format and usage rules, plus the
failures a test may ask for (a 500, a hang, a connection dropped mid-stream), and a record of
what it received and which streams were aborted by the caller."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer


def prompt_tokens(body: dict[str, Any]) -> int:
    """Deterministic: one token per word of the prompt."""
    if "messages" in body:
        text = " ".join(str(m.get("content", "")) for m in body["messages"])
    else:
        text = str(body.get("prompt", body.get("input", "")))
    return max(1, len(text.split()))


@dataclass
class FakeNode:
    model: str = "test-model"
    mode: str = "ok"  # ok | fail500 | hang | drop_mid_stream | bad_request
    itl_s: float = 0.0
    # Streams pause after this many tokens until ``resume`` is set.
    hold_after: int | None = None
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    aborted: int = 0
    tokens_sent: list[int] = field(default_factory=list)
    server: TestServer | None = None
    abort_seen: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/health", self._health)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def _receive(self, request: web.Request) -> dict[str, Any] | web.Response:
        body = await request.json()
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if self.mode == "fail500":
            return web.json_response({"error": {"message": "engine dead"}}, status=500)
        if self.mode == "bad_request":
            return web.json_response(
                {
                    "object": "error",
                    "message": "max_tokens is too large",
                    "type": "BadRequestError",
                    "param": None,
                    "code": 400,
                },
                status=400,
            )
        if self.mode == "hang":
            await asyncio.sleep(3600)
        return body

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._receive(request)
        if isinstance(body, web.Response):
            return body
        chat = request.path.endswith("/chat/completions")
        completion = int(body.get("max_tokens") or 5)
        prompt = prompt_tokens(body)
        if body.get("stream"):
            return await self._stream(request, body, chat, prompt, completion)
        choice = (
            {
                "index": 0,
                "message": {"role": "assistant", "content": "tok " * completion},
                "finish_reason": "length",
            }
            if chat
            else {"index": 0, "text": "tok " * completion, "finish_reason": "length"}
        )
        return web.json_response(
            {
                "id": "cmpl-1",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [choice],
                "usage": _usage(prompt, completion),
            }
        )

    async def _stream(
        self, request: web.Request, body: dict[str, Any], chat: bool, prompt: int, completion: int
    ) -> web.StreamResponse:
        options = body.get("stream_options") or {}
        include = options.get("include_usage") is True
        continuous = include and options.get("continuous_usage_stats") is True
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent = 0
        try:
            for index in range(completion):
                if index == 3 and self.mode == "drop_mid_stream":
                    assert request.transport is not None
                    request.transport.close()
                    return response
                delta = {"content": f"t{index} "}
                chunk: dict[str, Any] = _chunk(self.model, chat, delta, None)
                if continuous:
                    chunk["usage"] = _usage(prompt, index + 1)
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
                sent = index + 1
                if self.itl_s:
                    await asyncio.sleep(self.itl_s)
                if self.hold_after == sent:
                    await self.resume.wait()
            last = _chunk(self.model, chat, {}, "length")
            if continuous:
                last["usage"] = _usage(prompt, completion)
            await response.write(b"data: " + orjson.dumps(last) + b"\n\n")
            if include:
                final = {
                    "id": "cmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": self.model,
                    "choices": [],
                    "usage": _usage(prompt, completion),
                }
                await response.write(b"data: " + orjson.dumps(final) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            self.aborted += 1
            self.abort_seen.set()
            raise
        finally:
            self.tokens_sent.append(sent)
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._receive(request)
        if isinstance(body, web.Response):
            return body
        prompt = prompt_tokens(body)
        return web.json_response(
            {
                "object": "list",
                "model": self.model,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            }
        )


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chunk(model: str, chat: bool, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    if chat:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": delta.get("content", ""), "finish_reason": finish}
        kind = "text_completion"
    return {"id": "cmpl-1", "object": kind, "created": 1, "model": model, "choices": [choice]}
