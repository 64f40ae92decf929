"""Simulated vLLM nodes for the gateway's tests: the project's own simulator (vLLM's wire format,
its usage numbers and its fault knobs), in process on real ports, with its runtime controls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from cic_vllm_sim.app import create_app
from cic_vllm_sim.config import SimConfig

SIM_MODEL = "cic-sim-small"


@dataclass
class Sim:
    server: TestServer
    session: aiohttp.ClientSession

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    async def configure(self, **knobs: Any) -> None:
        """``POST /sim/config``: any of ttft_ms, itl_ms, fail_rate, drop_rate, hang."""
        async with self.session.post(self.endpoint + "/sim/config", json=knobs) as resp:
            assert resp.status == 200, await resp.text()

    async def stats(self) -> dict[str, Any]:
        """``GET /sim/stats``: requests, aborted, failed, prompt and completion tokens, …"""
        async with self.session.get(self.endpoint + "/sim/stats") as resp:
            assert resp.status == 200
            result: dict[str, Any] = await resp.json()
            return result


@dataclass
class SimFarm:
    """Starts simulators on demand; :meth:`close` stops them all."""

    sims: list[Sim] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None

    async def start(self, model: str = SIM_MODEL, **config: Any) -> Sim:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        server = TestServer(create_app(SimConfig(model=model, **config)), host="127.0.0.1")
        await server.start_server()
        sim = Sim(server, self.session)
        self.sims.append(sim)
        return sim

    async def close(self) -> None:
        for sim in self.sims:
            await sim.configure(hang=False)  # lets requests held by a hang end
            await sim.server.close()
        if self.session is not None:
            await self.session.close()
