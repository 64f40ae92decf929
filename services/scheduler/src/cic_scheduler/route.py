"""``Route``: picks and releases over one long-lived stream.

A gateway routes every request through the scheduler, so the cost of a call per pick is most of
what the scheduler adds to a request. On a ``Route`` stream a pick is one message, not a call:
no call set-up, no per-call metadata, deadline or interceptor work on either side. The picks that
arrive while the previous batch is in Redis are taken together, in one pipelined round trip
(each still its own atomic pick script), and answered in one message; so under load the cost per
pick falls as the batches grow, and an idle stream answers each pick at once. Answers are
written while the next batch is in Redis: writing one (and gRPC telling it is done) does not hold
up the picks that came meanwhile; answers ready while a message is being written go together in
the next.

Releases ride the same stream and are not answered. Those that come with picks go to the
registry in the picks' round trip, before them (so the picks see the slots they free); those that
come alone go in batches of their own, beside the picks, so a burst of them never holds a pick
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from cic.scheduler.v1 import scheduler_pb2 as pb
from cic_common.periodic import cancel_and_wait
from cic_scheduler import convert
from cic_scheduler.core import NodeScheduler
from cic_scheduler.nodes import (
    Lease,
    LeaseReturn,
    PickRequest,
    RegistryUnavailable,
    SchedulerError,
)

log = logging.getLogger(__name__)

# Picks taken in one round trip at most; more wait for the next batch.
MAX_PICKS_PER_BATCH = 256
# How long releases read from a stream are tried again while the registry is unavailable.
RELEASE_RETRY_S = 30.0


class RouteSession:
    """One ``Route`` stream: reads requests, takes picks in batches, writes their answers."""

    def __init__(self, scheduler: NodeScheduler) -> None:
        self._scheduler = scheduler
        self._picks: list[tuple[int, PickRequest]] = []
        self._answers: list[pb.RoutePicked] = []  # to be written
        self._releases: list[LeaseReturn] = []
        self._work = asyncio.Event()  # picks to take, or reading ended
        self._ready = asyncio.Event()  # answers to write, or taking ended
        self._reading = True
        self._release_task: asyncio.Task[None] | None = None

    async def run(
        self, requests: AsyncIterator[pb.RouteRequest]
    ) -> AsyncIterator[pb.RouteResponse]:
        """The answers to the picks ``requests`` bring, until the caller closes its side."""
        reader = asyncio.create_task(self._read(requests))
        taker = asyncio.create_task(self._take_batches())
        try:
            while True:
                if self._answers:
                    answers, self._answers = self._answers, []
                    yield pb.RouteResponse(picks=answers)
                    continue
                if taker.done():
                    break
                await self._ready.wait()
                self._ready.clear()
            await taker  # its error (if any) ends the call
            await reader
        finally:
            await cancel_and_wait(reader)
            await cancel_and_wait(taker)
            if self._release_task is not None:
                # Releases already read are given back even when the caller has gone.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._release_task)

    async def _take_batches(self) -> None:
        """Takes the picks waiting, a batch at a time, until reading ends and none is left."""
        try:
            while True:
                await self._work.wait()
                self._work.clear()
                while self._picks:
                    batch = self._picks[:MAX_PICKS_PER_BATCH]
                    del self._picks[: len(batch)]
                    await self._take(batch)
                if not self._reading:
                    return
        finally:
            self._ready.set()

    async def _read(self, requests: AsyncIterator[pb.RouteRequest]) -> None:
        try:
            async for message in requests:
                for pick in message.picks:
                    self._queue_pick(pick)
                for release in message.releases:
                    if release.lease_id:
                        self._releases.append(convert.lease_return(release))
                if self._picks:
                    self._work.set()
                else:  # releases that came with picks go with them
                    self._give_back_soon()
        finally:
            self._reading = False
            self._give_back_soon()  # releases whose picks never came (or were never taken)
            self._work.set()

    def _give_back_soon(self) -> None:
        if self._releases and (self._release_task is None or self._release_task.done()):
            self._release_task = asyncio.create_task(self._give_back())

    def _queue_pick(self, pick: pb.RoutePick) -> None:
        try:
            self._picks.append((pick.id, convert.pick_request(pick.request)))
        except SchedulerError as err:
            self._answers.append(self._refusal(pick.id, err))
            self._ready.set()

    def _refusal(self, pick_id: int, err: SchedulerError) -> pb.RoutePicked:
        code = convert.status_code(err)
        return pb.RoutePicked(id=pick_id, error_code=code.value[0], error_message=str(err))

    async def _take(self, batch: list[tuple[int, PickRequest]]) -> None:
        """Takes the batch and queues its answers, which are written before the scheduler's
        bookkeeping of the round trip is done; the releases waiting (unless a give-back is under
        way) are given back in the same round trip, first."""
        returns: list[LeaseReturn] = []
        if self._release_task is None or self._release_task.done():
            returns, self._releases = self._releases, []

        def answer(results: list[Lease | SchedulerError]) -> None:
            for (pick_id, _), result in zip(batch, results, strict=True):
                if isinstance(result, SchedulerError):
                    self._answers.append(self._refusal(pick_id, result))
                else:
                    self._answers.append(pb.RoutePicked(id=pick_id, picked=convert.picked(result)))
            self._ready.set()

        given_back, _ = await self._scheduler.release_and_pick(
            returns, [request for _, request in batch], answer
        )
        if not given_back:  # the registry is unavailable: tried again on their own
            self._releases = returns + self._releases
        if not given_back or not self._picks:  # else they go with the picks waiting
            self._give_back_soon()

    async def _give_back(self) -> None:
        """Gives the releases back; while the registry is unavailable they wait and are tried
        again, up to ``RELEASE_RETRY_S`` (after that the lease TTL gives them back)."""
        delay, waited = 0.1, 0.0
        while self._releases:
            batch, self._releases = self._releases, []
            try:
                await self._scheduler.release_many(batch)
                delay, waited = 0.1, 0.0
            except RegistryUnavailable as err:
                if waited >= RELEASE_RETRY_S:
                    log.warning("%d releases dropped: %s", len(batch), err)
                    continue
                self._releases = batch + self._releases
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 2.0)
