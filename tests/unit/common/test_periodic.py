"""cic_common.periodic.every: a job whose round fails goes on with the next round."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from cic_common.periodic import every


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
