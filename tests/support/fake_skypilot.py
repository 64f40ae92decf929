"""A stand-in for SkyPilot's API server, for tests: the real ``sky`` SDK talks HTTP to it.

No cloud can be reached here, so "clusters" are ``cic-vllm-sim`` processes on this machine: a
launch parses the task with SkyPilot's own loader, pulls the model out of the task's
``vllm serve`` run command and starts a simulator serving it on a free port, which
``sky.endpoints`` then reports. Answers are built with SkyPilot's own server-side classes
(``sky.server.requests.requests.Request``), so the SDK decodes exactly what the real server
would send. Only the routes the orchestrator uses are served: ``/api/health``, ``/validate``,
``/launch``, ``/status``, ``/endpoints``, ``/down``, ``/api/cancel``, ``/api/status``,
``/api/get``, ``/upload_v2/blob`` and ``/upload_v2`` (the SDK uploads a task's local
``file_mounts`` there: a launch puts each file in its cluster's ``files`` at the destination
the task names, and fails if one was not uploaded), and ``/logs`` (``sky.tail_logs``): a
cluster's job output is its simulator's
stdout and stderr, plus what a test adds with :meth:`FakeCluster.say`, streamed as SkyPilot's
server streams it (plain text, with its keep-alive payload on a quiet stream) until the
cluster is torn down or its process ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.net import free_port

SIM = str(Path(sys.executable).parent / "cic-vllm-sim")


@dataclass
class FakeCluster:
    name: str
    task_yaml: str
    model: str
    status: str = "INIT"  # INIT while provisioning, then UP
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    launched_at: float = field(default_factory=time.time)
    log_path: Path | None = None  # the job's output (the simulator's stdout and stderr)
    files: dict[str, bytes] = field(default_factory=dict)  # file_mounts, by path on the node
    # Where it was launched, as SkyPilot's status records have it: cloud "AWS", region, and
    # accelerators "{'H100': 1}" (None: not known).
    cloud: str | None = None
    region: str | None = None
    accelerators: str | None = None

    def say(self, text: str) -> None:
        """Appends a line to the job's output, as vLLM logging something would."""
        assert self.log_path is not None, "the cluster has not started its job"
        with self.log_path.open("a") as out:
            out.write(text + "\n")


@dataclass
class FakeRequest:
    request_id: str
    name: str  # e.g. "sky.launch"
    body: Any  # the payloads.*Body the SDK sent
    cluster_name: str | None
    status: str = "RUNNING"
    return_value: Any = None
    error: BaseException | None = None
    created_at: float = field(default_factory=time.time)


class FakeSkyPilot:
    """``await start()``; ``endpoint`` is what SKYPILOT_API_SERVER_ENDPOINT must name.

    ``provision_s`` is how long a launch stays INIT before its simulator starts;
    ``fail_launches`` makes every launch fail as a cloud without capacity would.
    """

    def __init__(self, provision_s: float = 0.2, keep_alive_s: float = 0.5) -> None:
        self.provision_s = provision_s
        # A quiet /logs stream gets SkyPilot's keep-alive payload this often (its server: 30 s).
        self.keep_alive_s = keep_alive_s
        self._logs_dir = Path(tempfile.mkdtemp(prefix="fake-skypilot-"))
        self.fail_launches = False
        # While set and not yet released, /launch holds its answer (the SDK's call blocks).
        self.launch_gate: asyncio.Event | None = None
        self.clusters: dict[str, FakeCluster] = {}
        self.requests: dict[str, FakeRequest] = {}
        self.calls: list[str] = []
        # Uploaded file mounts: blob id -> {absolute path on the client: content}.
        self.blobs: dict[str, dict[str, bytes]] = {}
        self._chunks: dict[str, dict[int, bytes]] = {}
        self.endpoint = ""
        self.default_region = "us-west-2"  # where a launch naming no region is placed
        self._runner: web.AppRunner | None = None
        self._work: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/health", self._health)
        app.router.add_post("/validate", self._validate)
        app.router.add_post("/launch", self._launch)
        app.router.add_post("/status", self._status)
        app.router.add_post("/endpoints", self._endpoints)
        app.router.add_post("/down", self._down)
        app.router.add_post("/api/cancel", self._cancel)
        app.router.add_get("/api/status", self._api_status)
        app.router.add_get("/api/get", self._api_get)
        app.router.add_post("/logs", self._logs)
        app.router.add_get("/upload_v2/blob", self._blob_exists)
        app.router.add_post("/upload_v2", self._upload)
        # A handler still streaming when the fake stops is cut after a second, not aiohttp's 60.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.endpoint = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.endpoint

    async def stop(self) -> None:
        for task in self._work:
            task.cancel()
        await asyncio.gather(*self._work, return_exceptions=True)
        # Nothing is left under way: a client still waiting on /api/get for a request whose
        # work was just cancelled is answered, so the server's shutdown does not wait for it.
        for fake in self.requests.values():
            if fake.status in ("PENDING", "RUNNING"):
                fake.status = "CANCELLED"
        for cluster in list(self.clusters.values()):
            _end(cluster)
        if self._runner is not None:
            await self._runner.cleanup()
        shutil.rmtree(self._logs_dir, ignore_errors=True)

    def add_cluster(self, name: str, model: str = "cic-sim-small") -> FakeCluster:
        """A cluster that exists on SkyPilot's side without this run having launched it."""
        cluster = FakeCluster(name, "", model, status="UP")
        self.clusters[name] = cluster
        return cluster

    def running(self, name: str) -> bool:
        cluster = self.clusters.get(name)
        return bool(cluster and cluster.process and cluster.process.poll() is None)

    # --- routes ---------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        import sky
        from sky.server import constants

        version = sky.__version__
        body = {
            "status": "healthy",
            "api_version": str(constants.API_VERSION),
            "version": version,
            "version_on_disk": version,
            "commit": sky.__commit__,
            "basic_auth_enabled": False,
        }
        headers = {
            constants.API_VERSION_HEADER: str(constants.API_VERSION),
            constants.VERSION_HEADER: version,
        }
        return web.json_response(body, headers=headers)

    async def _validate(self, request: web.Request) -> web.Response:
        from sky.server.requests import payloads
        from sky.utils import dag_utils

        self.calls.append("validate")
        body = payloads.ValidateBody(**await request.json())
        try:
            dag_utils.load_chain_dag_from_yaml_str(body.dag)
        except Exception as err:  # answered as the real server does: 400 with the error
            return web.json_response({"detail": _serialized(err)}, status=400)
        return web.json_response(None)

    async def _launch(self, request: web.Request) -> web.Response:
        from sky.server.requests import payloads
        from sky.utils import dag_utils

        body = payloads.LaunchBody(**await request.json())
        self.calls.append(f"launch {body.cluster_name}")
        if self.launch_gate is not None:
            await self.launch_gate.wait()
        dag = dag_utils.load_chain_dag_from_yaml_str(body.task)
        task = dag.tasks[0]
        model = _served_model(task.run)
        uploaded = self.blobs.get(body.file_mounts_blob_id or "", {})
        missing = [src for src in (task.file_mounts or {}).values() if src not in uploaded]
        if missing:
            error = ValueError(f"file mount source {missing[0]} was not uploaded")
            fake = self._finished("sky.launch", body, body.cluster_name, error=error)
            return _request_id(fake)
        cluster = self.clusters.get(body.cluster_name)
        if cluster is None:
            cluster = FakeCluster(body.cluster_name, body.task, model)
            self.clusters[body.cluster_name] = cluster
        for on_node, src in (task.file_mounts or {}).items():
            cluster.files[on_node] = uploaded[src]
        resources = next(iter(task.resources))
        if resources.cloud is not None:
            # SkyPilot places a task that names no region in one it chooses.
            cluster.cloud = str(resources.cloud)
            cluster.region = resources.region or self.default_region
        if resources.accelerators:
            cluster.accelerators = str(resources.accelerators)
        fake = self._new_request("sky.launch", body, body.cluster_name)
        self._spawn(self._provision(fake, cluster))
        return _request_id(fake)

    async def _status(self, request: web.Request) -> web.Response:
        from sky.server.requests import payloads

        body = payloads.StatusBody(**await request.json())
        self.calls.append("status")
        names = body.cluster_names or list(self.clusters)
        records = [_status_record(self.clusters[n]) for n in names if n in self.clusters]
        return _request_id(self._finished("sky.status", body, None, records))

    async def _endpoints(self, request: web.Request) -> web.Response:
        from sky import exceptions
        from sky.server.requests import payloads

        body = payloads.EndpointsBody(**await request.json())
        self.calls.append(f"endpoints {body.cluster}")
        cluster = self.clusters.get(body.cluster)
        if cluster is None or cluster.status != "UP":
            error = exceptions.ClusterNotUpError(
                f"Cluster {body.cluster!r} is not UP.", cluster_status=None
            )
            return _request_id(self._finished("sky.endpoints", body, body.cluster, error=error))
        result = {int(body.port or 8000): f"127.0.0.1:{cluster.port}"}
        return _request_id(self._finished("sky.endpoints", body, body.cluster, result))

    async def _down(self, request: web.Request) -> web.Response:
        from sky import exceptions
        from sky.server.requests import payloads

        body = payloads.StopOrDownBody(**await request.json())
        self.calls.append(f"down {body.cluster_name}")
        cluster = self.clusters.pop(body.cluster_name, None)
        if cluster is None:
            error = exceptions.ClusterDoesNotExist(f"Cluster {body.cluster_name!r} does not exist.")
            return _request_id(self._finished("sky.down", body, body.cluster_name, error=error))
        _end(cluster)
        return _request_id(self._finished("sky.down", body, body.cluster_name, None))

    async def _cancel(self, request: web.Request) -> web.Response:
        from sky.server.requests import payloads

        body = payloads.RequestCancelBody(**await request.json())
        self.calls.append(f"cancel {','.join(body.request_ids or [])}")
        cancelled = []
        for request_id in body.request_ids or []:
            fake = self.requests.get(request_id)
            if fake is not None and fake.status in ("PENDING", "RUNNING"):
                fake.status = "CANCELLED"
                cancelled.append(request_id)
        return _request_id(self._finished("sky.api_cancel", body, None, cancelled))

    async def _api_status(self, request: web.Request) -> web.Response:
        ids = request.query.getall("request_ids", [])
        found = [self.requests[i] for i in ids if i in self.requests]
        return web.json_response([_payload(f).model_dump() for f in found])

    async def _api_get(self, request: web.Request) -> web.Response:
        fake = self.requests.get(request.query.get("request_id", ""))
        if fake is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        while fake.status in ("PENDING", "RUNNING"):
            await asyncio.sleep(0.01)
        payload = _payload(fake).model_dump()
        if fake.error is not None:
            return web.json_response({"detail": payload}, status=500)
        return web.json_response(payload)

    async def _blob_exists(self, request: web.Request) -> web.Response:
        self.calls.append("upload_v2/blob")
        return web.json_response({"exists": request.query["blob_id"] in self.blobs})

    async def _upload(self, request: web.Request) -> web.Response:
        """One chunk of a zip of the task's local files; the last one unpacks it."""
        from sky.schemas.api import responses
        from sky.server.requests import payloads

        blob_id = request.query["upload_id"]
        index, total = int(request.query["chunk_index"]), int(request.query["total_chunks"])
        self.calls.append(f"upload_v2 {index + 1}/{total}")
        chunks = self._chunks.setdefault(blob_id, {})
        chunks[index] = await request.read()
        missing = [str(i) for i in range(total) if i not in chunks]
        if missing:
            status = responses.UploadStatus.UPLOADING.value
            answer = payloads.UploadZipFileResponse(status=status, missing_chunks=missing)
            return web.json_response(answer.model_dump())
        data = b"".join(chunks[i] for i in range(total))
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            self.blobs[blob_id] = {
                "/" + info.filename: archive.read(info)
                for info in archive.infolist()
                if not info.is_dir()
            }
        del self._chunks[blob_id]
        answer = payloads.UploadZipFileResponse(status=responses.UploadStatus.COMPLETED.value)
        return web.json_response(answer.model_dump())

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        from sky import exceptions
        from sky.server.requests import payloads

        body = payloads.ClusterJobBody(**await request.json())
        self.calls.append(f"logs {body.cluster_name}")
        cluster = self.clusters.get(body.cluster_name)
        if cluster is None or cluster.log_path is None:
            error = exceptions.ClusterNotUpError(
                f"Cluster {body.cluster_name!r} is not UP.", cluster_status=None
            )
            fake = self._finished("sky.tail_logs", body, body.cluster_name, error=error)
            return web.Response(text="", headers={"X-Skypilot-Request-ID": fake.request_id})
        fake = self._new_request("sky.tail_logs", body, body.cluster_name)
        reply = web.StreamResponse(
            headers={"X-Skypilot-Request-ID": fake.request_id, "Cache-Control": "no-cache"}
        )
        reply.content_type = "text/plain"
        await reply.prepare(request)
        try:
            await self._stream_job_output(reply, cluster, body.follow, body.tail)
            fake.return_value, fake.status = 0, "SUCCEEDED"
            await reply.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            fake.status = "CANCELLED"  # the client went
            raise
        return reply

    async def _stream_job_output(
        self, reply: web.StreamResponse, cluster: FakeCluster, follow: bool, tail: int
    ) -> None:
        from sky.utils import message_utils, rich_utils

        assert cluster.log_path is not None
        keep_alive = message_utils.encode_payload(rich_utils.Control.HEARTBEAT.encode(""))
        with cluster.log_path.open("rb") as job_output:
            backlog = job_output.read()
            if tail > 0:
                backlog = b"".join(backlog.splitlines(keepends=True)[-tail:])
            await reply.write(backlog)
            quiet_since = time.monotonic()
            while follow and self.clusters.get(cluster.name) is cluster:
                chunk = job_output.read()
                if chunk:
                    await reply.write(chunk)
                    quiet_since = time.monotonic()
                elif cluster.process is not None and cluster.process.poll() is not None:
                    return  # the job ended
                elif time.monotonic() - quiet_since >= self.keep_alive_s:
                    await reply.write(keep_alive.encode())
                    quiet_since = time.monotonic()
                await asyncio.sleep(0.02)

    # --- the work behind the requests ------------------------------------------------------

    async def _provision(self, fake: FakeRequest, cluster: FakeCluster) -> None:
        await asyncio.sleep(self.provision_s)
        if fake.status == "CANCELLED":
            return
        if self.fail_launches:
            from sky import exceptions

            self.clusters.pop(cluster.name, None)
            fake.error = exceptions.ResourcesUnavailableError(
                "Failed to provision all possible launchable resources."
            )
            fake.status = "FAILED"
            return
        if cluster.process is None:
            cluster.port = free_port()
            cluster.log_path = self._logs_dir / f"{cluster.name}.log"
            argv = [SIM, "--host", "127.0.0.1", "--port", str(cluster.port)]
            with cluster.log_path.open("ab") as job_output:
                cluster.process = subprocess.Popen(
                    [*argv, "--model", cluster.model],
                    stdout=job_output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        cluster.status = "UP"
        fake.return_value = (1, None)
        fake.status = "SUCCEEDED"

    def _new_request(self, name: str, body: Any, cluster_name: str | None) -> FakeRequest:
        fake = FakeRequest(uuid.uuid4().hex, name, body, cluster_name)
        self.requests[fake.request_id] = fake
        return fake

    def _finished(
        self,
        name: str,
        body: Any,
        cluster_name: str | None,
        result: Any = None,
        error: BaseException | None = None,
    ) -> FakeRequest:
        fake = self._new_request(name, body, cluster_name)
        fake.return_value, fake.error = result, error
        fake.status = "FAILED" if error is not None else "SUCCEEDED"
        return fake

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._work.add(task)
        task.add_done_callback(self._work.discard)


def _served_model(run: str | None) -> str:
    """The model of the task's ``[exec] vllm serve MODEL ...`` run command (its last line: the
    node agent may be started in the background before it)."""
    lines = (run or "").strip().splitlines()
    words = shlex.split(lines[-1] if lines else "")
    if words[:1] == ["exec"]:
        words = words[1:]
    if words[:2] != ["vllm", "serve"] or len(words) < 3:
        raise ValueError(f"run is not a vllm serve command: {run!r}")
    return words[2]


def _status_record(cluster: FakeCluster) -> Any:
    from sky.schemas.api import responses
    from sky.utils import status_lib

    return responses.StatusResponse(
        name=cluster.name,
        launched_at=int(cluster.launched_at),
        status=status_lib.ClusterStatus(cluster.status),
        autostop=-1,
        to_down=False,
        cluster_hash=cluster.name,
        cluster_ever_up=cluster.status == "UP",
        user_hash="cic-tests",
        cloud=cluster.cloud,
        region=cluster.region,
        accelerators=cluster.accelerators,
        user_name="cic",
        workspace="default",
        is_managed=False,
        nodes=1,
    )


def _payload(fake: FakeRequest) -> Any:
    """The request as SkyPilot's server encodes it on the wire."""
    from sky import core, execution
    from sky.server.requests import requests as requests_lib

    entrypoints = {
        "sky.launch": execution.launch,
        "sky.down": core.down,
        "sky.tail_logs": core.tail_logs,
    }
    request = requests_lib.Request(
        request_id=fake.request_id,
        name=fake.name,
        entrypoint=entrypoints.get(fake.name, core.status),
        request_body=fake.body,
        status=requests_lib.RequestStatus(fake.status),
        created_at=fake.created_at,
        user_id="cic-tests",
        cluster_name=fake.cluster_name,
    )
    if fake.status == "SUCCEEDED":
        request.set_return_value(fake.return_value)
    if fake.error is not None:
        request.set_error(fake.error)
    return request.encode()


def _serialized(err: BaseException) -> Any:
    from sky import exceptions

    return exceptions.serialize_exception(err)


def _request_id(fake: FakeRequest) -> web.Response:
    return web.json_response(None, headers={"X-Skypilot-Request-ID": fake.request_id})


def _end(cluster: FakeCluster) -> None:
    if cluster.process is not None and cluster.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            cluster.process.terminate()
        try:
            cluster.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            cluster.process.kill()
            cluster.process.wait()
