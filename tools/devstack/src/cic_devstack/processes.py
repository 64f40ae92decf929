"""Child processes with their output relayed line by line, stopped by SIGTERM then SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO


class ServiceProcess:
    """One service process. Its output goes to ``log_file`` when given, else to our stdout
    with the service's name in front of each line."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_file: Path | None = None
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_file = log_file
        self.proc: asyncio.subprocess.Process | None = None
        self._relay: asyncio.Task[None] | None = None
        self._sink: TextIO | None = None

    async def start(self) -> None:
        if self.log_file is not None:
            self._sink = self.log_file.open("a", encoding="utf-8")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._relay = asyncio.create_task(self._relay_output())

    async def _relay_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        sink = self._sink or sys.stdout
        prefix = "" if self._sink else f"[{self.name}] "
        async for raw in self.proc.stdout:
            sink.write(prefix + raw.decode("utf-8", "replace"))
            sink.flush()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await self.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if self._relay is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(5):
                    await self._relay
        if self._sink is not None:
            self._sink.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.running and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
