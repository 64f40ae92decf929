"""``cic-billing``: the usage ledger service, over gRPC."""

from __future__ import annotations

import os

from cic_billing.config import Settings
from cic_billing.server import serve
from cic_common.runtime import run_service
from cic_common.settings import load_settings


def main() -> None:
    run_service("billing", load_settings(Settings, os.environ), serve)


if __name__ == "__main__":
    main()
