"""Redis (the registry) going away and coming back: callers get UNAVAILABLE, never an unknown
error or a broken stream, and the scheduler serves again once Redis is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from cic.scheduler.v1 import scheduler_pb2 as pb
from tests.support.restartable import RestartableRedis
from tests.unit.scheduler.conftest import StartScheduler
from tests.unit.scheduler.support import rpc_error


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_an_unreachable_registry_is_unavailable_on_every_path(
    start_scheduler: StartScheduler, own_redis: RestartableRedis
) -> None:
    scheduler = await start_scheduler(REDIS_URL=own_redis.url)
    await scheduler.register("a")
    lease = await scheduler.pick()
    requests: asyncio.Queue[pb.RouteRequest | None] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[pb.RouteRequest]:
        while (message := await requests.get()) is not None:
            yield message

    route = scheduler.stub.Route(outgoing())
    own_redis.stop()

    for call in (
        scheduler.stub.PickNode(pb.PickNodeRequest(model="m")),
        scheduler.stub.ListNodes(pb.ListNodesRequest()),
        scheduler.stub.ReleaseNodes(
            pb.ReleaseNodesRequest(releases=[pb.ReleaseNodeRequest(lease_id=lease.lease_id)])
        ),
    ):
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err
        assert "registry is unavailable" in (err.details() or "")

    # On the stream the pick is answered, with the same status, and the release that came with
    # it waits to be tried again; the stream stays open.
    await requests.put(
        pb.RouteRequest(
            picks=[pb.RoutePick(id=7, request=pb.PickNodeRequest(model="m"))],
            releases=[pb.ReleaseNodeRequest(lease_id=lease.lease_id)],
        )
    )
    response = await asyncio.wait_for(route.read(), 10)
    [answer] = response.picks
    assert (answer.id, answer.error_code) == (7, grpc.StatusCode.UNAVAILABLE.value[0])

    own_redis.start()  # empty, as a restarted cache is: the node must register again
    await scheduler.register("a")
    await requests.put(
        pb.RouteRequest(picks=[pb.RoutePick(id=8, request=pb.PickNodeRequest(model="m"))])
    )
    response = await asyncio.wait_for(route.read(), 10)
    assert response.picks[0].id == 8 and response.picks[0].picked.node.id == "a"
    await requests.put(None)
    assert await asyncio.wait_for(route.read(), 10) is grpc.aio.EOF


async def test_batched_picks_and_releases_survive_a_redis_that_lost_its_scripts(
    start_scheduler: StartScheduler, own_redis: RestartableRedis
) -> None:
    """Batches go as EVALSHA in one pipeline; a Redis that restarted answers NOSCRIPT, and the
    batch is sent again once the script is loaded — nothing is lost or taken twice."""
    scheduler = await start_scheduler(REDIS_URL=own_redis.url)
    await scheduler.register("a")
    own_redis.stop()
    own_redis.start()  # empty: no node, no scripts
    await scheduler.register("a")
    picks = [pb.RoutePick(id=i, request=pb.PickNodeRequest(model="m")) for i in range(1, 6)]

    async def one(message: pb.RouteRequest) -> AsyncIterator[pb.RouteRequest]:
        yield message

    [response] = [r async for r in scheduler.stub.Route(one(pb.RouteRequest(picks=picks)))]
    leases = [answer.picked.lease_id for answer in response.picks]
    assert len(set(leases)) == 5 and "" not in leases
    assert (await scheduler.nodes())["a"].in_flight == 5
    own_redis.stop()
    own_redis.start()
    await scheduler.register("a")  # the registry is empty again; re-registered, no leases
    fresh = [(await scheduler.pick()).lease_id for _ in range(2)]  # after the second restart
    await scheduler.stub.ReleaseNodes(
        pb.ReleaseNodesRequest(
            releases=[pb.ReleaseNodeRequest(lease_id=lease) for lease in leases]  # unknown now
        )
    )
    assert (await scheduler.nodes())["a"].in_flight == 2  # the old leases were unknown: ignored
    await scheduler.stub.ReleaseNodes(
        pb.ReleaseNodesRequest(releases=[pb.ReleaseNodeRequest(lease_id=lease) for lease in fresh])
    )
    assert (await scheduler.nodes())["a"].in_flight == 0
