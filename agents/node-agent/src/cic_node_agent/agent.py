"""The agent's work: wait for vLLM's /health, register the node, heart-beat, and report the
cloud's spot-termination notice at once.

The notice is watched from the start (a spot machine can be reclaimed while vLLM still loads
its weights) and reported once; heartbeats go on until the machine goes, so that the control
plane sees the node leave rather than fall silent.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from cic_node_agent.config import AgentSettings
from cic_node_agent.control_plane import ControlPlane, ControlPlaneError
from cic_node_agent.metadata import Notice, NoticeSource, find_source

log = logging.getLogger(__name__)

# Between two tries of a call the control plane did not take (doubling up to this).
MAX_RETRY_DELAY_S = 30.0
# Node states in which the agent has nothing more to do.
GONE = ("terminated", "failed")


class NodeAgent:
    def __init__(self, settings: AgentSettings, session: aiohttp.ClientSession) -> None:
        self._settings = settings
        self._session = session
        self.control_plane = ControlPlane(settings, session)
        self.notice: Notice | None = None
        self.registered = asyncio.Event()
        self._vllm_healthy = False

    async def run(self, stop: asyncio.Event) -> None:
        """Runs until ``stop`` is set (SIGTERM) or the control plane says the node is gone."""
        urls = {
            "aws": self._settings.aws_metadata_url,
            "gcp": self._settings.gcp_metadata_url,
            "azure": self._settings.azure_metadata_url,
        }
        source = await find_source(self._settings.node_cloud, urls, self._session)
        work = [asyncio.create_task(self._serve_node(), name="node")]
        if source is not None:
            work.append(asyncio.create_task(self._watch_notice(source), name="notice"))
        stopping = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait([stopping, work[0]], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping:
                    task.result()
        finally:
            for task in [*work, stopping]:
                task.cancel()
            await asyncio.gather(*work, stopping, return_exceptions=True)

    async def _serve_node(self) -> None:
        await self._wait_for_vllm()
        await self._until_taken(self.control_plane.register, "register")
        self.registered.set()
        log.info("node %s registered with the control plane", self._settings.node_id)
        while True:
            await asyncio.sleep(self._settings.heartbeat_interval_s)
            self._vllm_healthy = await self._vllm_answers()
            try:
                state = await self.control_plane.heartbeat(self._vllm_healthy)
            except ControlPlaneError as err:
                log.warning("heartbeat not taken: %s", err)
                if err.retry:
                    continue
                log.info("the control plane refuses this node's heartbeats; the agent stops")
                return
            if state in GONE:
                log.info("the control plane says the node is %s; the agent stops", state)
                return

    async def _wait_for_vllm(self) -> None:
        while not await self._vllm_answers():  # noqa: ASYNC110 - polling another process
            await asyncio.sleep(self._settings.vllm_health_interval_s)
        self._vllm_healthy = True
        log.info("vLLM's /health answers")

    async def _vllm_answers(self) -> bool:
        try:
            async with self._session.get(
                f"{self._settings.vllm_url}/health", allow_redirects=False
            ) as reply:
                return reply.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _watch_notice(self, source: NoticeSource) -> None:
        warned = False
        while True:
            try:
                notice = await source.poll()
                warned = False
            except (aiohttp.ClientError, TimeoutError, ValueError) as err:
                if not warned:
                    log.warning("%s metadata service failed: %s", source.cloud, err)
                warned = True
                notice = None
            if notice is not None:
                self.notice = notice
                log.warning("%s spot-termination notice: %s", notice.cloud, notice.notice)
                await self._until_taken(
                    functools.partial(self.control_plane.preempted, notice), "preemption"
                )
                log.info("preemption reported: the control plane drains the node")
                return
            await asyncio.sleep(self._settings.notice_poll_interval_s)

    async def _until_taken(self, call: Callable[[], Awaitable[str]], what: str) -> str:
        delay = min(1.0, self._settings.heartbeat_interval_s)
        while True:
            try:
                return str(await call())
            except ControlPlaneError as err:
                if not err.retry:
                    raise
                log.warning("%s not taken yet: %s", what, err)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
