"""The whole platform as separate processes: scheduler, billing, orchestrator, gateway, and
simulated vLLM nodes launched through the orchestrator's local provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cic.billing.v1 import billing_pb2, billing_pb2_grpc
from cic.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from cic_devstack.processes import ServiceProcess


@dataclass(frozen=True)
class Ports:
    gateway: int = 8080
    scheduler: int = 50051
    billing: int = 50052
    orchestrator: int = 50053
    gateway_metrics: int = 9100
    scheduler_metrics: int = 9101
    billing_metrics: int = 9102
    orchestrator_metrics: int = 9103


@dataclass(frozen=True)
class StackConfig:
    database_url: str
    redis_url: str
    admin_token: str
    bin_dir: Path
    ports: Ports = field(default_factory=Ports)
    host: str = "127.0.0.1"
    base_env: Mapping[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    log_format: str = "console"
    log_level: str = "INFO"
    node_model: str = "cic-sim-small"
    node_count: int = 2
    node_args: tuple[str, ...] = ()
    start_timeout_s: float = 60.0


class StackError(RuntimeError):
    """A process did not start or a node did not become ready."""


class Stack:
    """Starts the services in dependency order and stops them in reverse."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.processes: dict[str, ServiceProcess] = {}
        self.node_ids: list[str] = []

    @property
    def gateway_url(self) -> str:
        return f"http://{self.config.host}:{self.config.ports.gateway}"

    def addr(self, service: str) -> str:
        return f"{self.config.host}:{getattr(self.config.ports, service)}"

    def _env(self, grpc_port: int | None, metrics_port: int, **extra: str) -> dict[str, str]:
        c = self.config
        env = dict(c.base_env)
        env.update(
            DATABASE_URL=c.database_url,
            REDIS_URL=c.redis_url,
            ADMIN_API_TOKEN=c.admin_token,
            SCHEDULER_ADDR=self.addr("scheduler"),
            BILLING_ADDR=self.addr("billing"),
            ORCHESTRATOR_ADDR=self.addr("orchestrator"),
            METRICS_PORT=str(metrics_port),
            LOG_FORMAT=c.log_format,
            LOG_LEVEL=c.log_level,
        )
        if grpc_port is not None:
            env["GRPC_PORT"] = str(grpc_port)
        env.update(extra)
        return env

    def _process(self, name: str, env: dict[str, str], service: str = "") -> ServiceProcess:
        log = self.config.log_dir / f"{name}.log" if self.config.log_dir else None
        program = str(self.config.bin_dir / f"cic-{service or name}")
        proc = ServiceProcess(name, [program], env, log)
        self.processes[name] = proc
        return proc

    async def start_service(self, name: str) -> ServiceProcess:
        """Starts one service (again, after a stop) and waits until it answers."""
        p = self.config.ports
        envs = {
            "scheduler": lambda: self._env(p.scheduler, p.scheduler_metrics),
            "billing": lambda: self._env(p.billing, p.billing_metrics),
            "orchestrator": lambda: self._env(
                p.orchestrator,
                p.orchestrator_metrics,
                NODE_PROVIDERS="local",
                LOCAL_SIM_COMMAND=str(self.config.bin_dir / "cic-vllm-sim"),
                LOCAL_SIM_HOST=self.config.host,
            ),
            "gateway": lambda: self._env(None, p.gateway_metrics, GATEWAY_PORT=str(p.gateway)),
        }
        proc = self._process(name, envs[name]())
        await proc.start()
        if name == "gateway":
            await self._wait_http_ready(proc, f"{self.gateway_url}/readyz")
        else:
            await self._wait_grpc_serving(proc, self.addr(name))
        return proc

    async def start_gateway_replica(
        self, name: str, port: int, metrics_port: int
    ) -> ServiceProcess:
        """Another gateway process (``name``, e.g. ``gateway-b``) on its own ports, sharing
        everything else with the first; stopped with the stack."""
        env = self._env(None, metrics_port, GATEWAY_PORT=str(port))
        proc = self._process(name, env, service="gateway")
        await proc.start()
        await self._wait_http_ready(proc, f"http://{self.config.host}:{port}/readyz")
        return proc

    async def start(self) -> None:
        try:
            await asyncio.gather(self.start_service("scheduler"), self.start_service("billing"))
            await self.ensure_catalog_model(self.config.node_model)
            await self.start_service("orchestrator")
            await self.start_service("gateway")
            await self.launch_nodes(self.config.node_count)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> dict[str, int | None]:
        codes = {}
        replicas = [n for n in self.processes if n.startswith("gateway-")]
        for name in (*replicas, "gateway", "orchestrator", "billing", "scheduler"):
            proc = self.processes.get(name)
            if proc is not None:
                codes[name] = await proc.stop()
        return codes

    async def ensure_catalog_model(self, model: str) -> None:
        """Puts the nodes' model in billing's catalog (a chat model, at the default ``*``
        price) unless it is there already: the gateway serves only catalog models."""
        async with grpc.aio.insecure_channel(self.addr("billing")) as channel:
            stub = billing_pb2_grpc.BillingServiceStub(channel)
            listed = await stub.ListModels(billing_pb2.ListModelsRequest(), timeout=10)
            if any(m.name == model for m in listed.models):
                return
            prices = await stub.ListPrices(billing_pb2.ListPricesRequest(), timeout=10)
            default = next((p for p in prices.prices if p.model == "*"), None)
            new = billing_pb2.CatalogModel(
                name=model,
                type=billing_pb2.MODEL_TYPE_CHAT,
                context_length=4096,  # the simulator's max_model_len
                prompt_micro_usd_per_mtok=default.prompt_micro_usd_per_mtok if default else 0,
                completion_micro_usd_per_mtok=(
                    default.completion_micro_usd_per_mtok if default else 0
                ),
            )
            try:
                await stub.CreateModel(billing_pb2.CreateModelRequest(model=new), timeout=10)
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.ALREADY_EXISTS:  # another stack was quicker
                    raise

    async def launch_nodes(self, count: int) -> list[str]:
        """Launches ``count`` simulated nodes through the orchestrator; waits till they are up."""
        c = self.config
        async with grpc.aio.insecure_channel(self.addr("orchestrator")) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            ids = []
            for _ in range(count):
                reply = await stub.LaunchNode(
                    orchestrator_pb2.LaunchNodeRequest(
                        model=c.node_model,
                        accelerators="SIM:1",
                        cloud="local",
                        vllm_args=list(c.node_args),
                    ),
                    timeout=10,
                )
                ids.append(reply.node.id)
            for node_id in ids:
                await self._wait_node_ready(stub, node_id)
        self.node_ids.extend(ids)
        return ids

    async def _wait_node_ready(
        self, stub: orchestrator_pb2_grpc.OrchestratorServiceStub, node_id: str
    ) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        while time.monotonic() < deadline:
            node = (
                await stub.GetNode(orchestrator_pb2.GetNodeRequest(node_id=node_id), timeout=5)
            ).node
            if node.state == orchestrator_pb2.NODE_STATE_READY:
                return
            if node.state == orchestrator_pb2.NODE_STATE_FAILED:
                raise StackError(f"node {node_id} failed: {node.failure_reason}")
            await asyncio.sleep(0.2)
        raise StackError(f"node {node_id} not ready after {self.config.start_timeout_s}s")

    def _check_alive(self, proc: ServiceProcess) -> None:
        if not proc.running:
            where = f"; see {proc.log_file}" if proc.log_file else ""
            raise StackError(f"{proc.name} exited during start-up{where}")

    async def _wait_grpc_serving(self, proc: ServiceProcess, addr: str) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        async with grpc.aio.insecure_channel(addr) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self._check_alive(proc)
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)
        raise StackError(f"{proc.name} not serving on {addr} after {self.config.start_timeout_s}s")

    async def _wait_http_ready(self, proc: ServiceProcess, url: str) -> None:
        deadline = time.monotonic() + self.config.start_timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                self._check_alive(proc)
                try:
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise StackError(f"{proc.name} not ready at {url} after {self.config.start_timeout_s}s")
