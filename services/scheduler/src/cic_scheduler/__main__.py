"""``cic-scheduler``: the node registry and node choice, over gRPC."""

from __future__ import annotations

import os

from cic_common.runtime import run_service
from cic_common.settings import load_settings
from cic_scheduler.config import SchedulerSettings
from cic_scheduler.server import serve


def main() -> None:
    run_service("scheduler", load_settings(SchedulerSettings, os.environ), serve)


if __name__ == "__main__":
    main()
