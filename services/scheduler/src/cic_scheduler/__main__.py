"""``cic-scheduler``: the node registry and node choice, over gRPC."""

from __future__ import annotations

import functools
import os

from cic_common import runtime
from cic_common.logging import configure_logging
from cic_common.metrics import start_metrics_server
from cic_common.settings import load_settings
from cic_common.tracing import setup_tracing
from cic_scheduler.config import SchedulerSettings
from cic_scheduler.server import serve


def main() -> None:
    settings = load_settings(SchedulerSettings, os.environ)
    configure_logging(settings.log_level, settings.log_format, "cic-scheduler")
    tracer_provider = setup_tracing("cic-scheduler", os.environ)
    start_metrics_server(settings.metrics_port)
    try:
        runtime.run(functools.partial(serve, settings))
    finally:
        tracer_provider.shutdown()


if __name__ == "__main__":
    main()
