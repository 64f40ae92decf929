"""``cic-node-agent``: runs beside vLLM until SIGTERM; settings from ``CIC_*`` variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import aiohttp

from cic_node_agent import __version__
from cic_node_agent.agent import NodeAgent
from cic_node_agent.config import AgentSettings, SettingsError, load_settings

log = logging.getLogger("cic_node_agent")


async def run(settings: AgentSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    timeout = aiohttp.ClientTimeout(total=settings.http_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await NodeAgent(settings, session).run(stop)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cic-node-agent",
        description="CIC node agent: runs beside vLLM on a GPU node until SIGTERM. It registers "
        "the node with the control plane once vLLM's /health answers, heart-beats, and reports "
        "the cloud's spot-termination notice at once.",
        epilog="Settings come from the environment: CIC_NODE_ID, CIC_NODE_TOKEN and "
        "CIC_CONTROL_PLANE_URL are required; CIC_VLLM_URL, CIC_NODE_CLOUD (auto, aws, gcp, "
        "azure, none), CIC_HEARTBEAT_INTERVAL_S, CIC_NOTICE_POLL_INTERVAL_S, "
        "CIC_VLLM_HEALTH_INTERVAL_S, CIC_HTTP_TIMEOUT_S, CIC_LOG_LEVEL and the metadata "
        "services' CIC_*_METADATA_URL are optional.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    try:
        settings = load_settings(os.environ)
    except SettingsError as err:
        print(f"cic-node-agent: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format='{"time": "%(asctime)s", "level": "%(levelname)s", "logger": "%(name)s",'
        ' "message": "%(message)s"}',
    )
    try:
        asyncio.run(run(settings))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
