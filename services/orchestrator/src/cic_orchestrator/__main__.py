"""``cic-orchestrator [serve]``: runs the orchestrator's gRPC server until SIGTERM or SIGINT.

Subcommands leave room for more (``render-task``, with the SkyPilot provider); with none, the
server runs.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from cic_common import runtime
from cic_common.settings import load_settings
from cic_orchestrator.config import Settings
from cic_orchestrator.server import create_service

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    stop = runtime.stop_event_on_signals()
    service = await create_service(settings)
    try:
        await service.start()
        await stop.wait()
        log.info("stopping")
    finally:
        await service.stop()


def _serve_command(_args: argparse.Namespace) -> int:
    runtime.run_service("orchestrator", load_settings(Settings, os.environ), serve)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cic-orchestrator",
        description="CIC orchestrator: launches, watches and retires vLLM nodes. "
        "Settings come from the environment (DATABASE_URL, SCHEDULER_ADDR, ...).",
    )
    parser.set_defaults(run=_serve_command)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help="run the gRPC server (the default)")
    serve_parser.set_defaults(run=_serve_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
