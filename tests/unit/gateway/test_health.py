"""/healthz, /readyz (Postgres, Redis, scheduler; 503 naming what failed, and while draining)."""

from cic_gateway.resources import LIFECYCLE
from tests.unit.gateway.conftest import Gateway, StartGateway


async def test_healthz_and_readyz(gateway: Gateway) -> None:
    async with gateway.session.get(gateway.url + "/healthz") as resp:
        assert resp.status == 200
        assert resp.headers["x-request-id"].startswith("req_")
    async with gateway.session.get(gateway.url + "/readyz") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["checks"] == {"postgres": "ok", "redis": "ok", "scheduler": "ok"}


async def test_readyz_names_the_scheduler_when_it_is_down(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(SCHEDULER_ADDR="127.0.0.1:9")
    async with gateway.session.get(gateway.url + "/readyz") as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["failed"] == ["scheduler"]
    async with gateway.session.get(gateway.url + "/healthz") as resp:
        assert resp.status == 200


async def test_readyz_is_503_while_draining(gateway: Gateway) -> None:
    gateway.app[LIFECYCLE].draining = True
    async with gateway.session.get(gateway.url + "/readyz") as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "draining"
