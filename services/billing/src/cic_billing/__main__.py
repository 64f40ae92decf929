"""``cic-billing``: the usage ledger service."""

from __future__ import annotations

import functools
import os

from cic_billing.config import Settings
from cic_billing.server import serve
from cic_common import runtime
from cic_common.logging import configure_logging
from cic_common.metrics import start_metrics_server
from cic_common.settings import load_settings
from cic_common.tracing import setup_tracing


def main() -> None:
    settings = load_settings(Settings, os.environ)
    configure_logging(settings.log_level, settings.log_format, "billing")
    tracer_provider = setup_tracing("billing", os.environ)
    start_metrics_server(settings.metrics_port)
    try:
        runtime.run(functools.partial(serve, settings))
    finally:
        tracer_provider.shutdown()


if __name__ == "__main__":
    main()
