"""The ``local`` provider: each node is a ``cic-vllm-sim`` process on this machine, a child of
the orchestrator in a process group of its own, ended when the orchestrator stops.

Processes are started with :class:`subprocess.Popen` (vfork and exec) rather than the event
loop's own spawner: uvloop forks, which runs gRPC's fork handlers in a process with gRPC
threads busy, and the child can crash before it execs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from cic_orchestrator import labels
from cic_orchestrator.nodes import NodeSpec
from cic_orchestrator.providers.base import (
    ALIVE,
    LaunchedNode,
    LaunchError,
    NodeProvider,
    NodeStatus,
)
from cic_orchestrator.validation import ValueCheck, check_flag_args, number, whole_number

log = logging.getLogger(__name__)

# The simulator's own flags that LaunchNode may pass on; nothing else reaches its command line.
SIM_FLAGS: dict[str, ValueCheck] = {
    "--ttft-ms": number(0, 600_000),
    "--itl-ms": number(0, 600_000),
    "--fail-rate": number(0, 1),
    "--max-model-len": whole_number(minimum=1),
    "--seed": whole_number(),
}


@dataclass
class _SimProcess:
    process: subprocess.Popen[bytes]
    output: asyncio.Task[None]


class LocalProvider(NodeProvider):
    name = "local"

    def __init__(
        self,
        command: Sequence[str],
        host: str,
        stop_timeout_s: float = 5.0,
        spot_available: bool = True,
        region: str = "",
    ) -> None:
        self._command = list(command)
        self._region = region  # the nodes' `region` label (LOCAL_SIM_REGION)
        self._spot_available = spot_available
        self._host = host
        self._stop_timeout_s = stop_timeout_s
        self._processes: dict[str, _SimProcess] = {}

    def serves_cloud(self, cloud: str) -> bool:
        return cloud == "local"

    def check_vllm_args(self, args: Sequence[str]) -> list[str]:
        return check_flag_args(args, SIM_FLAGS)

    async def launch(self, spec: NodeSpec) -> LaunchedNode:
        if spec.use_spot and not self._spot_available:
            raise LaunchError("spot capacity unavailable (LOCAL_SPOT_AVAILABLE=false)")
        port = _free_port(self._host)
        argv = [*_resolve(self._command), "--host", self._host, "--port", str(port)]
        argv += ["--model", spec.model, *spec.vllm_args]
        process = self._spawn(spec.node_id, argv, _node_env(spec))
        log.info("node %s: started %s (pid %d)", spec.node_id, argv[0], process.pid)
        host = f"[{self._host}]" if ":" in self._host else self._host
        handle: dict[str, Any] = {
            "pid": process.pid,
            "port": port,
            "started_at": _started_at(process.pid),
        }
        if self._region:
            handle[labels.HANDLE_KEY] = {"region": self._region}
        return LaunchedNode(endpoint=f"http://{host}:{port}", handle=handle)

    async def status(self, node_id: str, handle: Mapping[str, Any]) -> NodeStatus:
        sim = self._processes.get(node_id)
        if sim is None:
            return NodeStatus(alive=False, reason="process not started by this orchestrator")
        code = sim.process.poll()
        return ALIVE if code is None else NodeStatus(alive=False, reason=_exit_reason(code))

    async def terminate(self, node_id: str, handle: Mapping[str, Any]) -> None:
        sim = self._processes.get(node_id)
        if sim is None:
            await self._end_leftover(node_id, handle)
            return
        # Forgotten only once ended: a terminate cut short is finished by shutdown().
        await _stop_group(sim.process, self._stop_timeout_s)
        self._processes.pop(node_id, None)
        _, pending = await asyncio.wait([sim.output], timeout=1.0)
        for task in pending:
            task.cancel()
        log.info("node %s: process ended (%s)", node_id, _exit_reason(sim.process.returncode))

    async def reclaim(self, node_id: str, handle: Mapping[str, Any]) -> bool:
        # This process's own simulator (its lead was paused while Postgres was away) is taken
        # up again. A previous run's is no child of this one: it cannot be supervised, so it
        # is ended if it still runs, and the node is lost.
        sim = self._processes.get(node_id)
        if sim is not None and sim.process.poll() is None:
            return True
        await self._end_leftover(node_id, handle)
        return False

    async def shutdown(self) -> list[str]:
        node_ids = list(self._processes)
        await asyncio.gather(*(self.terminate(node_id, {}) for node_id in node_ids))
        return node_ids

    def _spawn(
        self, node_id: str, argv: list[str], env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """Starts the process and records it at once (no await in between, so a cancelled
        launch cannot lose it)."""
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **env},
            )
        except OSError as err:
            raise LaunchError(f"cannot start {argv[0]}: {err.strerror or err}") from None
        assert process.stdout is not None
        output = asyncio.create_task(_forward_output(node_id, process.stdout))
        self._processes[node_id] = _SimProcess(process, output)
        return process

    async def _end_leftover(self, node_id: str, handle: Mapping[str, Any]) -> None:
        """Ends the process a previous run started for the node, if it still runs and the pid
        was not reused by another process since (its start time tells)."""
        pid, started_at = handle.get("pid"), handle.get("started_at")
        if not isinstance(pid, int) or not isinstance(started_at, int | float):
            return
        try:
            leftover = psutil.Process(pid)
            if abs(leftover.create_time() - started_at) > 1.0:
                return
            if leftover.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        log.warning("node %s: ending pid %d left by a previous run", node_id, pid)
        _signal_group(pid, signal.SIGTERM)
        if not await _gone(leftover, self._stop_timeout_s):
            _signal_group(pid, signal.SIGKILL)
            await _gone(leftover, self._stop_timeout_s)


def _node_env(spec: NodeSpec) -> dict[str, str]:
    """What a node's agent would read, as the SkyPilot task gives it (envs and secrets)."""
    env = {"CIC_NODE_ID": spec.node_id}
    if spec.agent_token:
        env["CIC_NODE_TOKEN"] = spec.agent_token
    return env


def _resolve(command: list[str]) -> list[str]:
    """Finds the program on PATH, else next to this interpreter (a virtualenv's bin folder)."""
    program = command[0]
    if os.sep in program or shutil.which(program):
        return command
    beside = Path(sys.executable).parent / program
    if os.access(beside, os.X_OK):
        return [str(beside), *command[1:]]
    return command


def _free_port(host: str) -> int:
    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.bind(address)
        return int(probe.getsockname()[1])


def _started_at(pid: int) -> float:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code >= 0:
        return f"process exited with code {code}"
    try:
        return f"process killed by signal {signal.Signals(-code).name}"
    except ValueError:
        return f"process killed by signal {-code}"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _stop_group(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM to the process group, SIGKILL after ``timeout_s``; also ends any process it
    left behind in its group."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)
        if not await _exited(process, timeout_s):
            _signal_group(process.pid, signal.SIGKILL)
            await _exited(process, timeout_s)
    _signal_group(process.pid, signal.SIGKILL)


async def _exited(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _gone(process: psutil.Process, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)


async def _forward_output(node_id: str, pipe: IO[bytes]) -> None:
    """Copies the simulator's output to this log, so the pipe never fills."""
    stream = asyncio.StreamReader()
    try:
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), pipe
        )
    except BaseException:
        pipe.close()
        raise
    try:
        await _copy_lines(node_id, stream)
    finally:
        transport.close()


async def _copy_lines(node_id: str, stream: asyncio.StreamReader) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line over the reader's limit: it is dropped
            continue
        if not line:
            return
        log.info("node %s: %s", node_id, line.decode(errors="replace").rstrip())
