"""cic_common.periodic: ``every`` goes on after a failing round; ``cancel_and_wait`` ends a
task that swallows a cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from cic_common.periodic import cancel_and_wait, every


async def test_a_failing_round_is_logged_and_the_next_rounds_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rounds: list[int] = []
    enough = asyncio.Event()

    async def work() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("one bad round")
        if len(rounds) == 3:
            enough.set()

    job = asyncio.create_task(every(0.01, work, logging.getLogger("test.periodic"), "the work"))
    try:
        await asyncio.wait_for(enough.wait(), 5)
    finally:
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
    assert rounds[:3] == [0, 1, 2]
    [record] = [r for r in caplog.records if r.name == "test.periodic"]
    assert "the work failed" in record.getMessage() and record.exc_info is not None


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again_until_it_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 2:
                    raise
                swallowed += 1  # as a library that loses the cancellation would

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task), 10)
    assert task.cancelled() and swallowed == 2
    await cancel_and_wait(None)  # no task: nothing to do


async def test_a_task_given_a_grace_period_may_finish_on_its_own() -> None:
    finished = asyncio.Event()

    async def finishing() -> None:
        await asyncio.sleep(0.05)
        finished.set()

    task = asyncio.create_task(finishing())
    await cancel_and_wait(task, grace_s=5)
    assert finished.is_set() and not task.cancelled()
    slow = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.wait_for(cancel_and_wait(slow, grace_s=0.05), 5)
    assert slow.cancelled()  # past its grace period it is cancelled
