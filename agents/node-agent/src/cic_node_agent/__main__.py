"""``cic-node-agent``: runs beside vLLM until SIGTERM; settings from ``CIC_*`` variables."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import aiohttp

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


def main() -> int:
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
