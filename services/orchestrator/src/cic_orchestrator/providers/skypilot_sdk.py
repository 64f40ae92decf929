"""SkyPilot's Python SDK as the orchestrator uses it, off the event loop.

Every ``sky.*`` call is a blocking HTTP call to SkyPilot's API server that returns a request id;
:class:`SkyClient` runs them in threads of its own and, instead of holding a thread in
``sky.get`` for the minutes a launch takes, polls ``sky.api_status`` and calls ``sky.get`` only
once the request has finished. ``sky`` is imported lazily (the import takes seconds and writes
under ``~/.sky``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import io
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cic_orchestrator import labels

log = logging.getLogger(__name__)

T = TypeVar("T")

# Request states of SkyPilot's API server that are final.
_FINISHED = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
# The first accelerator name in a status record's ``{'H100': 1}``.
_ACCELERATOR = re.compile(r"['\"]([A-Za-z0-9][A-Za-z0-9_-]*)['\"]")


class SkyConfigError(ValueError):
    """SkyPilot refused the task; the message is one line."""


class SkyError(RuntimeError):
    """A SkyPilot request failed; the message is one line naming SkyPilot's error type."""


class ClusterGone(SkyError):
    """The cluster does not exist (any more)."""


# The SDK's own settings: where its API server is, and no usage reports to SkyPilot's servers.
ENDPOINT_VARIABLE = "SKYPILOT_API_SERVER_ENDPOINT"
_NO_USAGE_REPORTS = {"SKYPILOT_DISABLE_USAGE_COLLECTION": "1"}


def point_sdk_at(endpoint: str) -> None:
    """Points SkyPilot's SDK at ``endpoint``. The SDK reads its configuration from the
    environment (the orchestrator's SKYPILOT_API_SERVER_ENDPOINT setting has the same name),
    so this writes it there and drops the SDK's cached copy."""
    os.environ[ENDPOINT_VARIABLE] = endpoint
    for name, value in _NO_USAGE_REPORTS.items():
        os.environ.setdefault(name, value)
    if "sky" in sys.modules:
        from sky.server import common

        common.get_server_url.cache_clear()
        common.is_api_server_local.cache_clear()
        common.get_api_server_status_response.cache_clear()


@functools.cache
def sky_module() -> Any:
    import sky

    # SkyPilot's SDK logs its progress for a terminal (e.g. "Uploading files to API server" for
    # a task's file_mounts) to stdout, which carries this service's JSON log: warnings only.
    logging.getLogger("sky").setLevel(logging.WARNING)
    return sky


def parse_task(config: Mapping[str, Any]) -> Any:
    """SkyPilot's own parse and check of a task config (offline); returns the ``sky.Task``."""
    sky = sky_module()
    try:
        return sky.Task.from_yaml_config(copy.deepcopy(dict(config)))
    except (sky.exceptions.InvalidSkyPilotConfigError, ValueError) as err:
        raise SkyConfigError(_one_line(f"SkyPilot refused the task: {err}")) from None


@dataclass(frozen=True)
class Cluster:
    name: str
    status: str  # INIT, UP, STOPPED
    # What SkyPilot launched it on: cloud, region, accelerator (those it knows).
    labels: Mapping[str, str] = field(default_factory=dict)


class SkyClient:
    """The few SkyPilot calls the provider makes, each awaitable and bounded in time."""

    def __init__(self, call_timeout_s: float = 30.0, poll_interval_s: float = 2.0) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._call_timeout_s = call_timeout_s
        self._poll_interval_s = poll_interval_s

    async def close(self) -> None:
        """Lets go of the worker threads (a later call starts new ones)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def warm_up(self) -> None:
        """Imports ``sky`` in a worker thread, so the first launch does not wait for it."""
        await self._call(sky_module)

    async def launch(self, config: Mapping[str, Any], cluster_name: str) -> str:
        """Submits the launch; returns its request id at once."""

        def submit() -> str:
            sky = sky_module()
            task = parse_task(config)
            # The SDK prints "Running on cluster: ..." for a terminal; stdout carries our logs.
            with contextlib.redirect_stdout(io.StringIO()):
                return str(sky.launch(task, cluster_name=cluster_name, retry_until_up=False))

        return await self._call(submit)

    async def wait(self, request_id: str) -> Any:
        """Waits for a request to finish (polling) and returns its result, or raises SkyError
        (ClusterGone when SkyPilot says the cluster does not exist)."""
        sky = await self._call(sky_module)
        while True:
            status = await self.request_status(request_id)
            if status is None:
                raise SkyError(f"SkyPilot does not know request {request_id}")
            if status in _FINISHED:
                break
            await asyncio.sleep(self._poll_interval_s)
        return await self._call(sky.get, request_id)

    async def request_status(self, request_id: str) -> str | None:
        sky = await self._call(sky_module)
        payloads = await self._call(sky.api_status, [request_id])
        for payload in payloads:
            if payload.request_id == request_id:
                return str(payload.status)
        return None

    async def cancel(self, request_id: str) -> None:
        sky = await self._call(sky_module)
        await self.wait(await self._call(sky.api_cancel, request_id, silent=True))

    async def clusters(self) -> dict[str, Cluster]:
        """Every cluster SkyPilot has for this user, by name."""
        sky = await self._call(sky_module)
        records = await self.wait(await self._call(sky.status, None))
        return {r["name"]: _cluster(r) for r in records}

    async def endpoint(self, cluster_name: str, port: int) -> str:
        """``http://host:port`` of the cluster's exposed port."""
        sky = await self._call(sky_module)
        urls = await self.wait(await self._call(sky.endpoints, cluster_name, port))
        url = str(urls.get(port) or urls.get(str(port)) or "")
        if not url:
            raise SkyError(f"port {port} of cluster {cluster_name} is not exposed yet")
        return (url if "://" in url else f"http://{url}").rstrip("/")

    async def down(self, cluster_name: str) -> None:
        """Tears the cluster down; a cluster that does not exist is fine."""
        sky = await self._call(sky_module)
        try:
            await self.wait(await self._call(sky.down, cluster_name))
        except ClusterGone:
            log.info("cluster %s: already gone", cluster_name)

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        started = time.monotonic()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="skypilot")
        loop = asyncio.get_running_loop()
        call = functools.partial(function, *args, **kwargs)
        try:
            async with asyncio.timeout(self._call_timeout_s):
                return await loop.run_in_executor(self._executor, call)
        except TimeoutError:
            raise SkyError(
                f"SkyPilot API server did not answer within {time.monotonic() - started:.0f}s"
            ) from None
        except (SkyError, SkyConfigError):
            raise
        except Exception as err:
            if function is sky_module:
                raise
            raise _translate(err) from None


def follow_job_output(
    cluster_name: str, on_line: Callable[[str], None], stop: threading.Event
) -> None:
    """Blocks while it follows the output of the cluster's latest job (the task's setup and run
    command: vLLM's own log) with SkyPilot's ``tail_logs``, handing each line to ``on_line``.
    Returns when the stream ends (the job ended, the cluster went) or at the first line or
    keep-alive after ``stop`` is set (SkyPilot's API server sends one every 30 s on a quiet
    stream). Errors are logged, not raised: a log is no reason to fail a node."""
    try:
        sky = sky_module()
        lines = sky.tail_logs(cluster_name, None, follow=True, preload_content=False)
        try:
            for line in lines:
                if stop.is_set():
                    return
                if line is not None:  # None: a keep-alive or a status update
                    on_line(line.rstrip("\r\n"))
        finally:
            lines.close()
    except Exception as err:
        if not stop.is_set():
            log.warning(
                "cluster %s: cannot follow its output: %s", cluster_name, _one_line(str(err))
            )


def _cluster(record: Any) -> Cluster:
    """A ``sky.status`` record: its cloud is e.g. ``AWS``, its accelerators ``{'H100': 1}``."""
    accelerators = _ACCELERATOR.search(str(record.get("accelerators") or ""))
    found = {
        "cloud": str(record.get("cloud") or "").lower(),
        "region": str(record.get("region") or ""),
        "accelerator": accelerators.group(1) if accelerators else "",
    }
    return Cluster(record["name"], record["status"].value, labels.learnt(found))


def _translate(err: Exception) -> SkyError:
    exceptions = sky_module().exceptions
    if isinstance(err, exceptions.ClusterDoesNotExist):
        return ClusterGone(_one_line(str(err)))
    if isinstance(err, exceptions.RequestCancelled):
        return SkyError("the SkyPilot request was cancelled")
    return SkyError(_one_line(f"{type(err).__name__}: {err}"))


def _one_line(text: str) -> str:
    first = " ".join(text.split())
    return first if len(first) <= 300 else first[:300] + "…"
