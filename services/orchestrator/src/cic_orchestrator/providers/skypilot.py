"""The ``skypilot`` provider: each node is a SkyPilot cluster named ``<prefix>-<node id>``
running vLLM's OpenAI server, launched and torn down through SkyPilot's API server.

A launch only submits the request (the request id goes into the node's handle); waiting for
the cluster and its endpoint is :meth:`SkyPilotProvider.provisioned`, which polls. Clusters
outlive the orchestrator: a restart finds them again by name, and :meth:`orphans` tears down
those no live node owns.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from cic_orchestrator import labels
from cic_orchestrator.nodes import InvalidNodeRequest, NodeSpec
from cic_orchestrator.providers.base import (
    ALIVE,
    LaunchedNode,
    LaunchError,
    NodeProvider,
    NodeStatus,
)
from cic_orchestrator.providers.skypilot_sdk import (
    Cluster,
    SkyClient,
    SkyConfigError,
    SkyError,
    follow_job_output,
    parse_task,
)
from cic_orchestrator.task import (
    VLLM_FLAGS,
    AgentIdentity,
    NodeTask,
    TaskSettings,
    task_config,
)
from cic_orchestrator.validation import check_endpoint, check_flag_args

log = logging.getLogger(__name__)

# How long one listing of SkyPilot's clusters answers status() for every node.
_LISTING_TTL_S = 1.0


class SkyPilotProvider(NodeProvider):
    name = "skypilot"

    def __init__(
        self,
        client: SkyClient,
        task_settings: TaskSettings,
        cluster_prefix: str,
        launch_timeout_s: float,
        orphan_grace_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._orphan_grace_s = orphan_grace_s
        self._clock = clock
        # When each cluster that no live node owns was first seen so (torn down after the grace).
        self._stray_since: dict[str, float] = {}
        self._task_settings = task_settings
        self._prefix = cluster_prefix
        self.launch_timeout_s = launch_timeout_s
        self._listing: tuple[float, dict[str, Cluster]] | None = None
        self._listing_lock = asyncio.Lock()
        self._warm_up: asyncio.Task[None] | None = None
        # The threads that follow each node's runtime output (see _follow), by node id.
        self._followers: dict[str, tuple[threading.Thread, threading.Event]] = {}

    def serves_cloud(self, cloud: str) -> bool:
        return cloud != "local"

    def warm_up(self) -> Awaitable[None]:
        # Importing the SDK takes seconds; a launch checked meanwhile would wait for it.
        self._warm_up = asyncio.create_task(self._client.warm_up(), name="skypilot import")
        return self._warm_up

    def check_vllm_args(self, args: Sequence[str]) -> list[str]:
        return check_flag_args(args, VLLM_FLAGS)

    def cluster_name(self, node_id: str) -> str:
        return f"{self._prefix}-{node_id}"

    def task_config(self, spec: NodeSpec) -> dict[str, Any]:
        task = NodeTask(spec.model, spec.accelerators, spec.cloud, spec.use_spot, spec.vllm_args)
        agent = AgentIdentity(spec.node_id, spec.agent_token) if spec.agent_token else None
        return task_config(
            task, self._task_settings, name=self.cluster_name(spec.node_id), agent=agent
        )

    async def check_spec(self, spec: NodeSpec) -> None:
        if not spec.accelerators:
            raise InvalidNodeRequest("accelerators is required, e.g. H100:1")
        try:
            await asyncio.to_thread(parse_task, self.task_config(spec))
        except SkyConfigError as err:
            raise InvalidNodeRequest(str(err)) from None

    async def launch(self, spec: NodeSpec) -> LaunchedNode:
        cluster = self.cluster_name(spec.node_id)
        try:
            request_id = await self._client.launch(self.task_config(spec), cluster)
        except (SkyError, SkyConfigError) as err:
            raise LaunchError(f"sky launch refused: {err}") from None
        log.info(
            "node %s: sky launch of cluster %s submitted (%s)", spec.node_id, cluster, request_id
        )
        return LaunchedNode(endpoint="", handle={"cluster": cluster, "launch_request": request_id})

    async def provisioned(self, node_id: str, handle: Mapping[str, Any]) -> LaunchedNode:
        cluster = self._cluster(node_id, handle)
        request_id = handle.get("launch_request")
        try:
            if isinstance(request_id, str) and request_id:
                await self._client.wait(request_id)
            elif (await self._clusters()).get(cluster) is None:
                raise LaunchError(f"cluster {cluster} does not exist")
            endpoint = check_endpoint(
                await self._client.endpoint(cluster, self._task_settings.vllm_port)
            )
            self._follow(node_id, cluster)
        except SkyError as err:
            raise LaunchError(f"sky launch failed: {err}") from None
        except InvalidNodeRequest:
            raise LaunchError(f"cluster {cluster} reported a bad endpoint") from None
        placed = await self._placed(node_id, cluster)
        return LaunchedNode(endpoint, {**handle, labels.HANDLE_KEY: placed} if placed else handle)

    async def _placed(self, node_id: str, cluster: str) -> dict[str, str]:
        """Where SkyPilot placed the cluster (cloud, region, accelerator), from its record now
        it is up; nothing when SkyPilot cannot say (the launch's own infra labels it then)."""
        self._listing = None
        try:
            found = (await self._clusters()).get(cluster)
        except SkyError as err:
            log.warning("node %s: cannot ask SkyPilot where %s runs: %s", node_id, cluster, err)
            return {}
        return dict(found.labels) if found is not None else {}

    async def status(self, node_id: str, handle: Mapping[str, Any]) -> NodeStatus:
        cluster = self._cluster(node_id, handle)
        try:
            found = (await self._clusters()).get(cluster)
        except SkyError as err:
            # SkyPilot's API server is down: that says nothing about the cluster.
            log.warning("node %s: cannot ask SkyPilot: %s", node_id, err)
            return ALIVE
        if found is None:
            return NodeStatus(alive=False, reason=f"cluster {cluster} is gone")
        if found.status == "STOPPED":
            return NodeStatus(alive=False, reason=f"cluster {cluster} stopped")
        return ALIVE

    async def terminate(self, node_id: str, handle: Mapping[str, Any]) -> None:
        cluster = self._cluster(node_id, handle)
        self._stop_following(node_id)
        request_id = handle.get("launch_request")
        if isinstance(request_id, str) and request_id:
            try:
                status = await self._client.request_status(request_id)
                if status not in (None, "SUCCEEDED", "FAILED", "CANCELLED"):
                    await self._client.cancel(request_id)
            except SkyError as err:
                log.warning("node %s: cannot cancel launch %s: %s", node_id, request_id, err)
        try:
            await self._client.down(cluster)
        except SkyError as err:
            raise RuntimeError(f"sky down {cluster} failed: {err}") from None
        self._listing = None
        log.info("node %s: cluster %s torn down", node_id, cluster)

    async def reclaim(self, node_id: str, handle: Mapping[str, Any]) -> bool:
        cluster = self._cluster(node_id, handle)
        request_id = handle.get("launch_request")
        try:
            found = (await self._clusters()).get(cluster)
            if found is not None:
                if found.status == "UP":
                    self._follow(node_id, cluster)
                return True
            if isinstance(request_id, str) and request_id:
                status = await self._client.request_status(request_id)
                if status in ("PENDING", "WAITING", "RUNNING", "SUCCEEDED"):
                    return True
        except SkyError as err:
            log.warning("node %s: cannot ask SkyPilot at start-up: %s", node_id, err)
            return True  # asked again by the launch wait or the heartbeat
        return False

    async def orphans(self, live_node_ids: Callable[[], Awaitable[Collection[str]]]) -> list[str]:
        """Tears down clusters named like ours that no live node owns once they have been seen so
        for ORPHAN_GRACE_S (a launch whose record is being written is not one); returns them."""
        self._listing = None
        ours = [n for n in await self._clusters() if n.startswith(f"{self._prefix}-node-")]
        owned = {self.cluster_name(node_id) for node_id in await live_node_ids()}
        now = self._clock()
        unowned = {name for name in ours if name not in owned}
        self._stray_since = {n: self._stray_since.get(n, now) for n in unowned}
        stray = [n for n in sorted(unowned) if now - self._stray_since[n] >= self._orphan_grace_s]
        for name in stray:
            self._stray_since.pop(name, None)
            log.warning("cluster %s: no live node owns it; tearing it down", name)
            await self._client.down(name)
        if stray:
            self._listing = None
        return stray

    async def shutdown(self) -> list[str]:
        for node_id in list(self._followers):
            self._stop_following(node_id)
        if self._warm_up is not None:
            await asyncio.gather(self._warm_up, return_exceptions=True)
        await self._client.close()
        return []

    def _follow(self, node_id: str, cluster: str) -> None:
        """Copies the cluster's job output (vLLM's log) into this log as ``node <id>: ...``
        lines, from a daemon thread (SkyPilot's log stream is a blocking read), until the node
        is terminated or the stream ends."""
        if node_id in self._followers:
            return
        stop = threading.Event()

        def on_line(text: str) -> None:
            log.info("node %s: %s", node_id, text)

        def follow() -> None:
            try:
                follow_job_output(cluster, on_line, stop)
            finally:
                current = self._followers.get(node_id)
                if current is not None and current[1] is stop:
                    self._followers.pop(node_id, None)

        thread = threading.Thread(target=follow, name=f"sky logs {cluster}", daemon=True)
        self._followers[node_id] = (thread, stop)
        thread.start()

    def _stop_following(self, node_id: str) -> None:
        follower = self._followers.pop(node_id, None)
        if follower is not None:
            follower[1].set()

    def _cluster(self, node_id: str, handle: Mapping[str, Any]) -> str:
        cluster = handle.get("cluster")
        return cluster if isinstance(cluster, str) and cluster else self.cluster_name(node_id)

    async def _clusters(self) -> dict[str, Cluster]:
        async with self._listing_lock:
            now = time.monotonic()
            if self._listing is None or now - self._listing[0] > _LISTING_TTL_S:
                self._listing = (now, await self._client.clusters())
            return self._listing[1]
