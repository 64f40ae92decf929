"""`cic-vllm-sim --port P --model M [...]`: run a simulated vLLM node until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import uvloop
from aiohttp import web

from cic_vllm_sim.app import create_app
from cic_vllm_sim.config import SimConfig

SHUTDOWN_TIMEOUT_S = 5.0
LOG_FORMAT = "%(levelname)s %(name)s %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cic-vllm-sim", description="A simulated vLLM OpenAI server (no GPU, no model)."
    )
    add = parser.add_argument
    add("--model", required=True, help="model name the node serves (vLLM's --model)")
    add("--served-model-name", default=None, help="name the API answers to (default: --model)")
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=8000, help="port to listen on; 0 picks a free one")
    add("--ttft-ms", type=float, default=0.0, help="time to first token, milliseconds")
    add("--itl-ms", type=float, default=0.0, help="time between tokens, milliseconds")
    add("--fail-rate", type=float, default=0.0, help="share of requests answered with a 500")
    add("--drop-rate", type=float, default=0.0, help="share of streams cut mid-way")
    add("--seed", type=int, default=0, help="seed of the fault-injection random stream")
    add("--max-model-len", type=int, default=4096, help="context length in tokens")
    add("--max-num-seqs", type=int, default=256, help="requests run at once; others wait")
    add("--embedding-dim", type=int, default=32, help="length of embedding vectors")
    add("--kv-cache-tokens", type=int, default=131072, help="simulated KV-cache size, tokens")
    add("--enable-force-include-usage", action="store_true", help="usage on every stream")
    add("--vllm-version", default=SimConfig.vllm_version, help="version GET /version reports")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> tuple[SimConfig, str, int]:
    """Settings from the command line; exits with one line naming a bad flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("host", "port")}
    try:
        config = SimConfig(**options)
    except ValueError as exc:
        parser.error(str(exc).replace("_", "-"))
    if not 0 <= args.port <= 65535:
        parser.error("port must be between 0 and 65535")
    return config, args.host, args.port


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then stop cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(
        create_app(config),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    print(f"cic-vllm-sim serving {config.model_name} on http://{host}:{bound_port}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    config, host, port = parse_config(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=LOG_FORMAT)
    uvloop.run(serve(config, host, port))


if __name__ == "__main__":
    main()
