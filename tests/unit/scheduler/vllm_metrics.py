"""A node's ``/metrics`` as an older vLLM serves it, for the load scraper's tests."""

from __future__ import annotations

from aiohttp import web

from tests.support.net import free_port
from tests.unit.scheduler.support import eventually


class OldVllmMetrics:
    """A real HTTP server with the ``/metrics`` of an older vLLM: ``gpu_cache_usage_perc`` and
    no ``kv_cache_usage_perc``; its status can be switched to fail the scrapes."""

    def __init__(self, running: float, waiting: float, gpu_cache: float) -> None:
        self.page = (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="m"}} {running}\n'
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{model_name="m"}} {waiting}\n'
            "# TYPE vllm:gpu_cache_usage_perc gauge\n"
            f'vllm:gpu_cache_usage_perc{{model_name="m"}} {gpu_cache}\n'
        )
        self.status = 200
        self.scrapes = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        return web.Response(status=self.status, text=self.page)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def scrapes_pass(node: OldVllmMetrics, count: int) -> None:
    """Waits until ``node`` has been scraped ``count`` more times."""
    target = node.scrapes + count

    async def scrapes() -> int:
        return node.scrapes

    await eventually(scrapes, lambda done: done >= target)
