"""Process entry helpers: run a service's main coroutine on uvloop until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvloop

from cic_common.logging import configure_logging
from cic_common.metrics import start_metrics_server
from cic_common.settings import ServiceSettings
from cic_common.tracing import setup_tracing

log = logging.getLogger(__name__)
S = TypeVar("S", bound=ServiceSettings)


def stop_event_on_signals() -> asyncio.Event:
    """An event set on the first SIGTERM or SIGINT (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run(main: Callable[[], Awaitable[None]]) -> None:
    """Runs ``main()`` on uvloop; ``main`` returns when its stop event is set."""
    uvloop.run(main())  # type: ignore[arg-type]


def run_service(name: str, settings: S, serve: Callable[[S], Awaitable[None]]) -> None:
    """A service's whole life after its settings are loaded: logging, tracing and the metrics
    server set up once, then ``serve(settings)`` on uvloop. A failure to start (a database that
    does not answer, a port already taken) is one log line and exit code 1, not a traceback."""
    configure_logging(settings.log_level, settings.log_format, name)
    tracer_provider = setup_tracing(name, os.environ)
    try:
        start_metrics_server(settings.metrics_port)
        run(lambda: serve(settings))
    except Exception as err:
        log.error("%s failed: %s: %s", name, type(err).__name__, err)
        raise SystemExit(1) from None
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()
