"""The pacer that keeps billing under Stripe's rate limit: calls are spaced 1 / rate apart,
across every task that shares it (on a test clock: nothing here waits for real time)."""

from __future__ import annotations

import asyncio

from cic_billing.stripe_api import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 9))


async def test_calls_are_spaced_by_the_rate() -> None:
    clock = Clock()
    pacer = Pacer(20.0, clock=clock, sleep=clock.sleep)
    await asyncio.gather(*(pacer.wait() for _ in range(5)))
    assert clock.sleeps == [0.05, 0.1, 0.15, 0.2]  # the first goes at once


async def test_an_idle_pacer_does_not_save_up_calls() -> None:
    clock = Clock()
    pacer = Pacer(10.0, clock=clock, sleep=clock.sleep)
    await pacer.wait()
    clock.now += 60  # a minute without calls: no burst allowed after it
    await pacer.wait()
    await pacer.wait()
    assert clock.sleeps == [0.1]
