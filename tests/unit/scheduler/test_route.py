"""``Route``: picks and releases over one stream, against a real scheduler and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from cic.scheduler.v1 import scheduler_pb2 as pb
from tests.unit.scheduler.support import RunningScheduler, eventually


def _picks(*models: str, start: int = 1) -> list[pb.RoutePick]:
    return [
        pb.RoutePick(id=start + i, request=pb.PickNodeRequest(model=m))
        for i, m in enumerate(models)
    ]


def _open_route(
    scheduler: RunningScheduler,
) -> tuple[asyncio.Queue[pb.RouteRequest | None], grpc.aio.StreamStreamCall]:
    """A Route call that sends what is put on the queue, until None (the caller's side ends)."""
    requests: asyncio.Queue[pb.RouteRequest | None] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[pb.RouteRequest]:
        while (message := await requests.get()) is not None:
            yield message

    return requests, scheduler.stub.Route(outgoing())


async def _one_message(message: pb.RouteRequest) -> AsyncIterator[pb.RouteRequest]:
    yield message


async def test_every_pick_of_a_message_is_answered_by_id_in_one_response(
    scheduler: RunningScheduler,
) -> None:
    await scheduler.register("a")
    await scheduler.register("b")
    call = scheduler.stub.Route(_one_message(pb.RouteRequest(picks=_picks(*["m"] * 50))))
    responses = [r async for r in call]
    assert await call.code() == grpc.StatusCode.OK
    # The 50 picks arrived together, so they were taken in one batch and answered in one message.
    assert len(responses) == 1
    answers = {a.id: a for a in responses[0].picks}
    assert sorted(answers) == list(range(1, 51))
    leases = {a.picked.lease_id for a in answers.values()}
    assert len(leases) == 50 and "" not in leases
    per_node = {n.id: n.in_flight for n in (await scheduler.nodes()).values()}
    assert per_node == {"a": 25, "b": 25}  # least-loaded, slot by slot


async def test_refused_picks_carry_the_status_pick_node_would_end_with(
    scheduler: RunningScheduler,
) -> None:
    await scheduler.register("a", model="m")
    await scheduler.register("d", model="drained")
    await scheduler.stub.DrainNode(pb.DrainNodeRequest(node_id="d"))
    message = pb.RouteRequest(picks=_picks("m", "nobody-serves-this", "", "drained", "bad model"))
    # Refusals found on reading are answered at once, the pick with its batch after.
    answers = {a.id: a async for r in scheduler.stub.Route(_one_message(message)) for a in r.picks}
    assert sorted(answers) == [1, 2, 3, 4, 5]
    assert answers[1].HasField("picked") and answers[1].picked.node.id == "a"
    expected = {
        2: (grpc.StatusCode.NOT_FOUND, "is not served"),
        3: (grpc.StatusCode.INVALID_ARGUMENT, "model"),
        4: (grpc.StatusCode.UNAVAILABLE, "no ready node"),
        5: (grpc.StatusCode.INVALID_ARGUMENT, "model"),
    }
    for pick_id, (code, words) in expected.items():
        answer = answers[pick_id]
        assert not answer.HasField("picked")
        assert answer.error_code == code.value[0], (pick_id, answer)
        assert words in answer.error_message


async def test_releases_on_the_stream_give_the_slots_back(scheduler: RunningScheduler) -> None:
    await scheduler.register("a")
    requests, call = _open_route(scheduler)
    await requests.put(pb.RouteRequest(picks=_picks("m", "m", "m")))
    answers = [a async for r in _take(call, 3) for a in r]
    assert (await scheduler.nodes())["a"].in_flight == 3
    releases = [
        pb.ReleaseNodeRequest(lease_id=a.picked.lease_id, outcome=pb.OUTCOME_SUCCESS)
        for a in answers
    ]
    await requests.put(pb.RouteRequest(releases=releases))
    await requests.put(None)  # the caller closes its side: the stream ends cleanly
    assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK
    node = await eventually(lambda: scheduler.nodes(), lambda n: n["a"].in_flight == 0)
    assert node["a"].in_flight == 0
    assert scheduler.sample("cic_scheduler_releases_total", outcome="success") == 3


async def test_releases_that_come_with_picks_are_given_back_before_them(
    scheduler: RunningScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    await scheduler.register("a")
    await scheduler.register("b")
    registry = scheduler.service.scheduler.registry
    trips: list[tuple[int, int]] = []  # (releases, picks) of each round trip to the registry
    for name, shape in (
        ("release_and_acquire", lambda returns, picks: (len(returns), len(picks))),
        ("release_many", lambda returns: (len(returns), 0)),
    ):
        recorded = getattr(registry, name)

        async def recording(*args, _recorded=recorded, _shape=shape):  # type: ignore[no-untyped-def]
            trips.append(_shape(*args))
            return await _recorded(*args)

        monkeypatch.setattr(registry, name, recording)
    requests, call = _open_route(scheduler)
    await requests.put(pb.RouteRequest(picks=_picks("m", "m", "m")))
    answers = [a async for r in _take(call, 3) for a in r]
    by_node: dict[str, list[str]] = {}
    for answer in answers:
        by_node.setdefault(answer.picked.node.id, []).append(answer.picked.lease_id)
    [busier] = [node for node, leases in by_node.items() if len(leases) == 2]
    # The busier node's two leases come back with a pick: given back first, they leave that
    # node the least loaded (0 against 1), so the pick goes there.
    releases = [
        pb.ReleaseNodeRequest(lease_id=lease, outcome=pb.OUTCOME_SUCCESS)
        for lease in by_node[busier]
    ]
    await requests.put(pb.RouteRequest(picks=_picks("m", start=4), releases=releases))
    [answer] = [a async for r in _take(call, 1) for a in r]
    assert answer.id == 4 and answer.picked.node.id == busier
    assert trips == [(0, 3), (2, 1)]  # the releases went in the pick's own round trip
    assert {n.id: n.in_flight for n in (await scheduler.nodes()).values()} == {"a": 1, "b": 1}
    assert scheduler.sample("cic_scheduler_releases_total", outcome="success") == 2
    await requests.put(None)
    assert await asyncio.wait_for(call.read(), 10) is grpc.aio.EOF


async def test_picks_sent_one_by_one_are_each_answered(scheduler: RunningScheduler) -> None:
    await scheduler.register("a")
    requests, call = _open_route(scheduler)
    seen: list[int] = []
    for pick_id in range(1, 6):
        await requests.put(pb.RouteRequest(picks=_picks("m", start=pick_id)))
        [answer] = [a async for r in _take(call, 1) for a in r]
        seen.append(answer.id)
    await requests.put(None)
    assert seen == [1, 2, 3, 4, 5]
    assert (await scheduler.nodes())["a"].in_flight == 5


async def test_releases_sent_just_before_the_caller_vanishes_still_count(
    scheduler: RunningScheduler,
) -> None:
    await scheduler.register("a")
    lease_ids = [(await scheduler.pick()).lease_id for _ in range(4)]

    async def outgoing() -> AsyncIterator[pb.RouteRequest]:
        yield pb.RouteRequest(
            releases=[
                pb.ReleaseNodeRequest(lease_id=i, outcome=pb.OUTCOME_SUCCESS) for i in lease_ids
            ]
        )
        await asyncio.Event().wait()  # never half-closes

    call = scheduler.stub.Route(outgoing())
    await eventually(lambda: scheduler.nodes(), lambda n: n["a"].in_flight == 0)
    call.cancel()


async def _take(
    call: grpc.aio.StreamStreamCall, answers: int
) -> AsyncIterator[list[pb.RoutePicked]]:
    """Responses from ``call`` until ``answers`` picks have been answered."""
    got = 0
    while got < answers:
        response = await asyncio.wait_for(call.read(), 10)
        assert response is not grpc.aio.EOF
        got += len(response.picks)
        yield list(response.picks)
