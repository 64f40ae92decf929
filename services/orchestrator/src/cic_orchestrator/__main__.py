"""``cic-orchestrator [serve]``: runs the orchestrator's gRPC server until SIGTERM or SIGINT.
``cic-orchestrator render-task --model M --accelerators H100:1 ...`` prints the SkyPilot task
a launch would use, or one line saying what is wrong with the request.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from cic_common import runtime
from cic_common.settings import load_settings
from cic_orchestrator.config import Settings
from cic_orchestrator.nodes import InvalidNodeRequest
from cic_orchestrator.server import create_service
from cic_orchestrator.task import TaskSettings, check_task, render_yaml, task_config

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


def _render_task_command(args: argparse.Namespace) -> int:
    settings = load_settings(TaskSettings, os.environ)
    try:
        task = check_task(
            args.model, args.accelerators, args.cloud, args.vllm_args, use_spot=args.use_spot
        )
    except InvalidNodeRequest as err:
        print(f"render-task: {err}", file=sys.stderr)
        return 2
    config = task_config(task, settings, name=args.name)
    # SkyPilot's own parser has the last word (it knows every cloud and field).
    from cic_orchestrator.providers.skypilot_sdk import SkyConfigError, parse_task

    try:
        parse_task(config)
    except SkyConfigError as err:
        print(f"render-task: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(render_yaml(config))
    return 0


def _add_render_task(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "render-task",
        help="print the SkyPilot task YAML a launch would use",
        description="Prints the SkyPilot task YAML LaunchNode would launch. VLLM_VERSION and "
        "VLLM_PORT come from the environment.",
    )
    parser.add_argument("--model", required=True, help="model to serve, e.g. org/name")
    parser.add_argument("--accelerators", required=True, help="NAME:COUNT, e.g. H100:1")
    parser.add_argument(
        "--cloud", default="", help="SkyPilot infra: aws, aws/us-east-1, k8s, ssh/my-pool ..."
    )
    parser.add_argument("--use-spot", action="store_true", help="ask for spot instances")
    parser.add_argument("--name", default="", help="task name")
    parser.add_argument(
        "--vllm-arg",
        dest="vllm_args",
        action="append",
        default=[],
        metavar="--FLAG=VALUE",
        help="a vLLM server flag from the allowed list (repeatable)",
    )
    parser.set_defaults(run=_render_task_command)


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
    _add_render_task(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
