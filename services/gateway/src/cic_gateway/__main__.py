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
from cic_common.settings import load_settings
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
    runtime.run_service("gateway", load_settings(GatewaySettings, os.environ), serve)


if __name__ == "__main__":
    main()
