"""Teardowns that cannot hang silently."""

from __future__ import annotations

import asyncio
import gc
import io
import types
from collections.abc import Coroutine
from typing import Any


async def stop_or_explain(
    stopping: Coroutine[Any, Any, None], what: str, within_s: float = 60.0
) -> None:
    """Awaits ``stopping``; if it takes longer than ``within_s``, fails with every task's stack
    (a hang in a teardown would otherwise be a bare timeout with nothing to go on)."""
    task = asyncio.ensure_future(stopping)
    done, _ = await asyncio.wait([task], timeout=within_s)
    if task in done:
        task.result()
        return
    stacks = io.StringIO()
    for running in asyncio.all_tasks():
        if running is not asyncio.current_task():
            print(running.get_name(), file=stacks)
            for where in _awaiting(running.get_coro()):
                print(f"  {where}", file=stacks)
    for agen in gc.get_objects():
        if isinstance(agen, types.AsyncGeneratorType) and agen.ag_await is not None:
            print(f"async generator {agen.ag_code.co_qualname}", file=stacks)
            for where in _awaiting(agen):
                print(f"  {where}", file=stacks)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise AssertionError(f"{what} took over {within_s} s; tasks:\n{stacks.getvalue()}")


def _awaiting(coro: object) -> list[str]:
    """Where a suspended coroutine waits, down its chain of awaits (Python code only)."""
    found = []
    while coro is not None:
        frame = (
            getattr(coro, "cr_frame", None)
            or getattr(coro, "gi_frame", None)
            or getattr(coro, "ag_frame", None)
        )
        if frame is None:
            found.append(repr(coro))
            break
        found.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = (
            getattr(coro, "cr_await", None)
            or getattr(coro, "gi_yieldfrom", None)
            or getattr(coro, "ag_await", None)
        )
    return found
