"""``cic-gateway``: the HTTP edge on uvloop until SIGTERM or SIGINT.

On a signal: ``/readyz`` answers 503, the listening socket closes, requests and streams in flight
get ``SHUTDOWN_GRACE_S`` to finish, buffered usage is flushed to billing, everything closes, and
the process exits 0.
"""

from __future__ import annotations

import logging
import os

from aiohttp import web

from cic_common import runtime
from cic_common.logging import configure_logging
from cic_common.metrics import start_metrics_server
from cic_common.settings import load_settings
from cic_common.tracing import setup_tracing
from cic_gateway.app import create_app, create_runner
from cic_gateway.config import GatewaySettings
from cic_gateway.resources import LIFECYCLE

log = logging.getLogger(__name__)


async def serve(settings: GatewaySettings) -> None:
    stop = runtime.stop_event_on_signals()
    app = create_app(settings)
    runner = create_runner(app, settings)
    await runner.setup()
    try:
        site = web.TCPSite(runner, port=settings.gateway_port)
        await site.start()
        log.info("gateway listening on port %d", settings.gateway_port)
        await stop.wait()
        log.info("stopping: finishing requests in flight (up to %ss)", settings.shutdown_grace_s)
        app[LIFECYCLE].draining = True
    finally:
        await runner.cleanup()
    log.info("gateway stopped")


def main() -> None:
    settings = load_settings(GatewaySettings, os.environ)
    configure_logging(settings.log_level, settings.log_format, "gateway")
    tracer = setup_tracing("gateway", os.environ)
    start_metrics_server(settings.metrics_port)
    try:
        runtime.run(lambda: serve(settings))
    except Exception as err:  # e.g. Postgres unreachable at start, or the port already taken
        log.error("gateway failed: %s: %s", type(err).__name__, err)
        raise SystemExit(1) from None
    finally:
        tracer.shutdown()


if __name__ == "__main__":
    main()
