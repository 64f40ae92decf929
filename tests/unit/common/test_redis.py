"""The shared Redis client waits for a free connection instead of failing under load; the
script runner runs scripts in one round trip and survives what Redis does to its connections."""

import asyncio
import contextlib
import gc
import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import hiredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from cic_common.redis import ScriptCall, ScriptRunner, create_redis
from tests.unit.gateway.tcp_relay import TcpRelay


async def test_more_calls_than_connections_all_succeed(redis_url: str, redis_prefix: str) -> None:
    client = create_redis(redis_url, max_connections=4)
    try:
        results = await asyncio.gather(*(client.incr(f"{redis_prefix}n") for _ in range(300)))
        assert sorted(results) == list(range(1, 301))
        assert client.connection_pool.max_connections == 4
    finally:
        await client.aclose()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    client = create_redis(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def runner(client: Redis) -> AsyncIterator[ScriptRunner]:
    runner = ScriptRunner(client, timeout_s=5.0)
    yield runner
    await runner.aclose()


async def test_script_runner_runs_every_script_in_order_in_one_round_trip(
    client: Redis, runner: ScriptRunner, redis_prefix: str
) -> None:
    incr = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    fail = client.register_script("return redis.error_reply('no such thing')")
    key = f"{redis_prefix}n"
    replies = await runner.run([(incr, [key], [2]), (fail, [], []), (incr, [key], [3])])
    assert replies[0] == 2 and replies[2] == 5
    assert isinstance(replies[1], ResponseError) and "no such thing" in str(replies[1])
    # the connection stayed in step after the error reply
    assert await runner.run([(incr, [key], [1])]) == [6]


async def test_script_runner_keeps_to_its_connections_under_many_callers(
    redis_url: str, redis_prefix: str
) -> None:
    name = f"runner-{redis_prefix.strip(':')}"
    client = create_redis(f"{redis_url}{'&' if '?' in redis_url else '?'}client_name={name}")
    incr = client.register_script("return redis.call('INCR', KEYS[1])")
    await client.script_load(incr.script)  # on the client's own (pooled) connection
    runner = ScriptRunner(client, timeout_s=5.0, max_connections=2)
    key = f"{redis_prefix}n"
    try:
        replies = await asyncio.gather(*(runner.run([(incr, [key], [])]) for _ in range(50)))
        assert sorted(r[0] for r in replies) == list(range(1, 51))
        clients = await client.client_list()
        assert len([c for c in clients if c["name"] == name]) == 1 + 2  # the pool's, the runner's
    finally:
        await runner.aclose()
        await client.aclose()


async def test_script_runner_connections_outlive_the_client_objects_that_opened_them(
    redis_url: str, redis_prefix: str
) -> None:
    """redis-py opens each connection and hands its socket over: collecting redis-py's object
    afterwards must not close the socket under the runner."""
    name = f"kept-{redis_prefix.strip(':')}"
    client = create_redis(f"{redis_url}{'&' if '?' in redis_url else '?'}client_name={name}")
    incr = client.register_script("return redis.call('INCR', KEYS[1])")
    runner = ScriptRunner(client, timeout_s=5.0)
    key = f"{redis_prefix}n"

    async def runner_connections() -> set[str]:
        return {c["id"] for c in await client.client_list() if c["name"] == name}

    try:
        await client.ping()  # the pool's own connection, listed with the runner's
        pooled = await runner_connections()
        assert await runner.run([(incr, [key], [])]) == [1]
        opened = await runner_connections() - pooled
        assert len(opened) == 1
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            gc.collect()
        # (other tests' leftovers may be collected here too: only this client's count)
        assert not [str(w.message) for w in seen if name in str(w.message)]
        for expected in (2, 3):
            assert await runner.run([(incr, [key], [])]) == [expected]
        assert await runner_connections() - pooled == opened  # the same connection, still open
    finally:
        await runner.aclose()
        await client.aclose()


class CountingRunner(ScriptRunner):
    """Counts the round trips (their sizes) the runner makes."""

    def __init__(self, redis: Redis, timeout_s: float) -> None:
        super().__init__(redis, timeout_s)
        self.batches: list[int] = []

    async def run(self, calls: Sequence[ScriptCall]) -> list[Any]:
        self.batches.append(len(calls))
        return await super().run(calls)


async def test_calls_made_together_share_a_round_trip_and_each_gets_its_own_reply(
    client: Redis, redis_prefix: str
) -> None:
    incr = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    fail = client.register_script("return redis.error_reply('refused ' .. ARGV[1])")
    runner = CountingRunner(client, timeout_s=5.0)
    key = f"{redis_prefix}n"
    try:
        calls = [runner.call(incr, [key], [1]) for _ in range(40)]
        calls += [runner.call(fail, [], [n]) for n in range(2)]
        replies = await asyncio.gather(*calls, return_exceptions=True)
        assert sorted(replies[:40]) == list(range(1, 41))
        assert [str(e) for e in replies[40:]] == ["refused 0", "refused 1"]
        assert all(isinstance(e, ResponseError) for e in replies[40:])
        assert sum(runner.batches) == 42 and len(runner.batches) <= 2
        assert await runner.call(incr, [key], [1]) == 41  # alone: a round trip of its own
        assert runner.batches[-1] == 1
    finally:
        await runner.aclose()


async def test_a_call_given_up_before_it_was_sent_is_not_sent(
    client: Redis, runner: ScriptRunner, redis_prefix: str
) -> None:
    incr = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    key = f"{redis_prefix}n"
    given_up = asyncio.create_task(runner.call(incr, [key], [1]))
    await asyncio.sleep(0)  # queued; the batch has not left yet
    given_up.cancel()
    assert await runner.call(incr, [key], [1]) == 1  # the same batch, without the first
    assert given_up.cancelled()


async def test_script_runner_loads_scripts_redis_forgot_and_runs_them_once(
    client: Redis, runner: ScriptRunner, redis_prefix: str
) -> None:
    key = f"{redis_prefix}n"
    # A script of this test's own (its own SHA): no other test loads it again after the flush.
    incr = client.register_script(f"return redis.call('INCR', KEYS[1]) -- {redis_prefix}")
    assert await runner.run([(incr, [key], [])]) == [1]
    await client.script_flush()
    assert await runner.run([(incr, [key], []), (incr, [key], [])]) == [2, 3]
    assert int(await client.get(key)) == 3


async def test_script_runner_connects_again_after_redis_drops_its_connections(
    redis_url: str, redis_prefix: str
) -> None:
    relay = await TcpRelay(redis_url).start()
    client = create_redis(relay.url)
    key = f"{redis_prefix}n"
    incr = client.register_script("return redis.call('INCR', KEYS[1])")
    runner = ScriptRunner(client, timeout_s=2.0)
    try:
        assert await runner.run([(incr, [key], [])]) == [1]
        await relay.cut()  # what a Redis restart does to the idle connection
        await relay.restore()
        assert await runner.run([(incr, [key], [])]) == [2]  # sent again on a new connection
        await relay.cut()
        with pytest.raises((OSError, RedisError)):
            await runner.run([(incr, [key], [])])
        await relay.restore()
        assert await runner.run([(incr, [key], [])]) == [3]  # the same runner connects again
        assert int(await client.get(key)) == 3
    finally:
        await runner.aclose()
        await client.aclose()
        await relay.cut()


@contextlib.asynccontextmanager
async def answering_redis(answer: Callable[[list[bytes]], bytes | None]) -> AsyncIterator[str]:
    """A server that speaks just enough RESP: each command gets ``answer(command)``, or nothing
    at all (from then on) when that is None. Yields its URL."""
    held: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        commands = hiredis.Reader()
        while data := await reader.read(65536):
            commands.feed(data)
            while (command := commands.gets()) is not False:
                reply = answer(command)
                if reply is None:
                    return
                writer.write(reply)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


def _no_script_then_silence(command: list[bytes]) -> bytes | None:
    """Every script unknown; loading one never answers."""
    if command[0].upper() == b"EVALSHA":
        return b"-NOSCRIPT No matching script.\r\n"
    if command[0].upper() == b"SCRIPT":
        return None
    return b"+OK\r\n"


@pytest.mark.parametrize(
    "answer",
    [lambda _: None, _no_script_then_silence],
    ids=["nothing-answers", "script-load-never-answers"],
)
async def test_script_runner_gives_up_at_its_deadline(
    answer: Callable[[list[bytes]], bytes | None],
) -> None:
    """The deadline covers the whole batch, the script loads between its round trips too (the
    client's own connections here have no socket timeout, as the rate limiter's do not)."""
    async with answering_redis(answer) as url:
        client = Redis.from_url(url, socket_timeout=None)
        script = client.register_script("return 1")
        runner = ScriptRunner(client, timeout_s=0.2)
        try:
            for attempt in (runner.run([(script, [], [])]), runner.call(script, [], [])):
                task = asyncio.ensure_future(attempt)
                done, _ = await asyncio.wait({task}, timeout=2.0)
                assert task in done, "the batch outlived its deadline"
                assert isinstance(task.exception(), TimeoutError)
        finally:
            await runner.aclose()
            await client.aclose()
