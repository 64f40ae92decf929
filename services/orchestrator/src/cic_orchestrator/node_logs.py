"""Each node's log, kept in memory for streaming to an operator: every line this service logs
about the node (``node <id>: ...`` — its launch, lifecycle and, for local simulators, the
process's own output), the last ``NODE_LOG_LINES`` per node, for the most recent nodes."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

MAX_NODES = 500


@dataclass(frozen=True)
class LogLine:
    at: datetime
    text: str


class _NodeLog:
    def __init__(self, max_lines: int) -> None:
        self.lines: deque[LogLine] = deque(maxlen=max_lines)
        self.followers: set[asyncio.Queue[LogLine]] = set()


class NodeLogs(logging.Handler):
    """A logging handler that files ``node %s: ...`` records by node id."""

    def __init__(self, max_lines: int = 1000) -> None:
        super().__init__(logging.INFO)
        self._max_lines = max_lines
        self._nodes: OrderedDict[str, _NodeLog] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, logger: logging.Logger) -> None:
        self._loop = asyncio.get_running_loop()
        logger.addHandler(self)

    def detach(self, logger: logging.Logger) -> None:
        logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if not (isinstance(record.msg, str) and record.msg.startswith("node %s")):
            return
        if not isinstance(record.args, tuple) or not record.args:
            return
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            return
        line = LogLine(datetime.fromtimestamp(record.created, UTC), text)
        node_id = str(record.args[0])
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._add(node_id, line)
        else:  # a worker thread (a SkyPilot SDK call) logged it
            loop.call_soon_threadsafe(self._add, node_id, line)

    def _add(self, node_id: str, line: LogLine) -> None:
        log = self._nodes.get(node_id)
        if log is None:
            log = self._nodes[node_id] = _NodeLog(self._max_lines)
            while len(self._nodes) > MAX_NODES:
                self._nodes.popitem(last=False)
        self._nodes.move_to_end(node_id)
        log.lines.append(line)
        for queue in log.followers:
            if queue.full():  # a follower that does not keep up loses its oldest lines
                queue.get_nowait()
            queue.put_nowait(line)

    async def stream(
        self, node_id: str, follow: bool, still_live: AsyncIterator[bool] | None = None
    ) -> AsyncIterator[LogLine]:
        """The kept lines, then (``follow``) each new one while ``still_live`` yields True."""
        log = self._nodes.get(node_id)
        if log is None:
            log = self._nodes[node_id] = _NodeLog(self._max_lines)
        # Bounded like the kept lines: a slow reader (a stalled client) holds no more.
        queue: asyncio.Queue[LogLine] = asyncio.Queue(maxsize=self._max_lines)
        log.followers.add(queue)
        try:
            for line in list(log.lines):
                yield line
            if not follow or still_live is None:
                return
            async for live in still_live:
                while not queue.empty():
                    yield queue.get_nowait()
                if not live:
                    return
                try:
                    async with asyncio.timeout(1.0):
                        line = await queue.get()
                except TimeoutError:
                    continue
                yield line
        finally:
            log.followers.discard(queue)
