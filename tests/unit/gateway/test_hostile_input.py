"""Hostile input at the tenant API: malformed, deeply nested, wrongly typed and truncated bodies,
and slow clients. Whatever comes in, the answer is OpenAI's error shape (never a 5xx), and a
client that dawdles never holds up the others."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.gateway.conftest import Gateway
from tests.unit.gateway.sims import SIM_MODEL as MODEL

CHAT = "/v1/chat/completions"
OPENAI_ERROR_TYPES = {"invalid_request_error", "requests", "tokens"}


async def _post(gateway: Gateway, key: str, body: bytes) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    async with gateway.session.post(gateway.url + CHAT, data=body, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, orjson.loads(raw) if resp.content_type == "application/json" else raw


def _is_openai_error(answer: Any) -> bool:
    error = answer.get("error") if isinstance(answer, dict) else None
    return isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error


async def test_malformed_bodies_are_400_in_openais_shape(sim_gateway: Gateway) -> None:
    gateway = sim_gateway
    _, _, key = await gateway.new_key()
    nested = b"[" * 100_000 + b"]" * 100_000
    cases = [
        b"",
        b"\xff\xfe\x00not utf-8",
        b'{"model": "' + MODEL.encode() + b'", "messages": [',  # cut short
        nested,
        b'{"model": ' + nested + b"}",
        b'{"model": "m", "model": "m"' + b', "x": 1' * 10_000 + b"}",
        b"null",
        b'"a string"',
        b"1e999999",
    ]
    for body in cases:
        status, answer = await _post(gateway, key, body)
        assert status == 400, (body[:40], status, answer)
        assert _is_openai_error(answer), answer


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.just(MODEL) | json_values,
        "messages": st.just([{"role": "user", "content": "hi"}]) | json_values,
        "max_tokens": st.integers(-5, 50) | json_values,
        "stream": st.booleans() | json_values,
        "stream_options": st.just({"include_usage": True}) | json_values,
        "n": st.integers(-2, 3) | json_values,
        "temperature": json_values,
        "prompt": json_values,
    },
)


async def test_any_wrongly_typed_body_gets_a_4xx_or_an_answer_never_a_5xx(
    sim_gateway: Gateway,
) -> None:
    """Random bodies (every field any JSON type) through the gateway to a simulated vLLM node:
    answered, never with a 5xx, and a refusal is OpenAI's error shape. Hypothesis makes the
    bodies; they go to the live gateway on this test's loop."""
    gateway = sim_gateway
    _, _, key = await gateway.new_key()
    bodies: list[dict[str, Any]] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(chat_bodies)
    def collect(body: dict[str, Any]) -> None:
        bodies.append(body)

    collect()
    for body in bodies:
        status, answer = await _post(
            gateway, key, orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
        )
        assert status < 500, (body, status, answer)
        if status >= 400:
            assert _is_openai_error(answer), (body, answer)


async def test_a_body_cut_off_mid_way_does_not_hold_the_gateway(sim_gateway: Gateway) -> None:
    gateway = sim_gateway
    _, _, key = await gateway.new_key()
    host, port = gateway.url.removeprefix("http://").split(":")
    for _ in range(20):
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n".encode()
            + b'{"model": "'
        )
        await writer.drain()
        writer.close()  # gone before the body's end
    status, answer = await _post(
        gateway, key, orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
    )
    assert status == 200, answer


async def test_slow_clients_do_not_starve_the_others(sim_gateway: Gateway) -> None:
    """Two hundred connections that send their headers a byte at a time, slowloris-style, while
    ordinary requests go on: each ordinary request is answered."""
    gateway = sim_gateway
    _, _, key = await gateway.new_key()
    host, port = gateway.url.removeprefix("http://").split(":")
    request = (
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n".encode()
        + b"X-Padding: "
        + b"a" * 10_000
    )
    stop = asyncio.Event()

    async def dawdle() -> None:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            return
        try:
            for byte in request:
                if stop.is_set():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    slow = [asyncio.create_task(dawdle()) for _ in range(200)]
    try:
        await asyncio.sleep(0.5)
        body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
        # Each would wait for ever behind the slow ones if the server served them in turn.
        answers = await asyncio.wait_for(
            asyncio.gather(*(_post(gateway, key, body) for _ in range(20))), 30
        )
        assert [status for status, _ in answers] == [200] * 20
    finally:
        stop.set()
        await asyncio.gather(*slow, return_exceptions=True)
