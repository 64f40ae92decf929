"""`make dev`: the whole platform in the foreground until Ctrl-C or SIGTERM.

Postgres and Redis are the ones DATABASE_URL and REDIS_URL name, or embedded ones kept under
.cic-dev/ so that a second start keeps the data of the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from cic_common.runtime import run, stop_event_on_signals
from cic_devstack.admin import AdminClient
from cic_devstack.stack import Ports, Stack, StackConfig, StackError
from cic_devstack.stores import embedded_postgres, embedded_redis

DATA_DIR = Path(".cic-dev")
DEMO_EMAIL = "demo@cic.local"


class DevConfigError(ValueError):
    pass


def _port_of(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if not raw:
        return default
    text = raw.rsplit(":", 1)[-1]
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise DevConfigError(f"{name} is invalid: expected a port or host:port, got {raw!r}")
    return int(text)


def ports_from(environ: Mapping[str, str]) -> Ports:
    return Ports(
        gateway=_port_of(environ, "GATEWAY_PORT", 8080),
        scheduler=_port_of(environ, "SCHEDULER_ADDR", 50051),
        billing=_port_of(environ, "BILLING_ADDR", 50052),
        orchestrator=_port_of(environ, "ORCHESTRATOR_ADDR", 50053),
    )


def admin_token_from(environ: Mapping[str, str], data_dir: Path) -> str:
    token = environ.get("ADMIN_API_TOKEN")
    if token is not None:
        if len(token) < 32:
            raise DevConfigError("ADMIN_API_TOKEN is invalid: it must be at least 32 characters")
        return token
    path = data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


async def demo_key(stack: Stack, token: str, data_dir: Path) -> str:
    """The demo tenant's key: the one an earlier start saved, while it works, else a new one."""
    saved = data_dir / "demo-key"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        if saved.exists():
            key = saved.read_text().strip()
            headers = {"Authorization": f"Bearer {key}"}
            async with session.get(f"{stack.gateway_url}/v1/models", headers=headers) as resp:
                if resp.status == 200:
                    return key
        admin = AdminClient(session, stack.gateway_url, token)
        tenant = await admin.find_tenant(DEMO_EMAIL) or await admin.create_tenant(
            "Demo", DEMO_EMAIL
        )
        # An admin-role key, so that the demo reaches every tenant route (usage, billing, keys).
        key = str((await admin.create_key(tenant["id"], "demo", role="admin"))["key"])
    saved.write_text(key + "\n")
    saved.chmod(0o600)
    return key


def _banner(stack: Stack, token: str, key: str) -> str:
    url = stack.gateway_url
    body = {"model": stack.config.node_model, "messages": [{"role": "user", "content": "Hello"}]}
    return "\n".join(
        [
            "",
            "CIC is running.",
            f"  gateway      {url}",
            f"  admin token  {token}",
            f"  demo API key {key}",
            f"  nodes        {', '.join(stack.node_ids)} ({stack.config.node_model})",
            "",
            f"  curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' \\",
            "    -H 'Content-Type: application/json' \\",
            f"    -d '{json.dumps(body)}'",
            "",
            "Ctrl-C stops everything.",
            "",
        ]
    )


async def _watch(stack: Stack, stop: asyncio.Event) -> None:
    """Stops on a signal, when a service dies, or when our parent goes away (`make` does not
    pass its SIGTERM on to the command it runs)."""
    parent = os.getppid()
    while not stop.is_set():
        if os.getppid() != parent:
            print("[dev] parent process gone; stopping")
            stop.set()
            return
        for proc in stack.processes.values():
            if not proc.running:
                print(f"[dev] {proc.name} exited with code {proc.returncode}; stopping")
                stop.set()
                return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await stop.wait()


async def run_dev(environ: Mapping[str, str]) -> int:
    stop = stop_event_on_signals()
    with contextlib.ExitStack() as stores:
        database_url = environ.get("DATABASE_URL") or stores.enter_context(
            embedded_postgres(DATA_DIR / "postgres")
        )
        redis_url = environ.get("REDIS_URL") or stores.enter_context(
            embedded_redis(DATA_DIR / "redis")
        )
        token = admin_token_from(environ, DATA_DIR)
        config = StackConfig(
            database_url=database_url,
            redis_url=redis_url,
            admin_token=token,
            bin_dir=Path(sys.executable).parent,
            ports=ports_from(environ),
            base_env=environ,
            log_format=environ.get("LOG_FORMAT", "console"),
            log_level=environ.get("LOG_LEVEL", "INFO"),
        )
        stack = Stack(config)
        try:
            await stack.start()
            print(_banner(stack, token, await demo_key(stack, token, DATA_DIR)), flush=True)
            await _watch(stack, stop)
        except StackError as err:
            print(f"[dev] {err}", file=sys.stderr)
            return 1
        finally:
            codes = await stack.stop()
            print(f"[dev] stopped: {', '.join(f'{k} {v}' for k, v in codes.items())}")
    return 0


def main() -> None:
    try:
        ports_from(os.environ)
        DATA_DIR.mkdir(exist_ok=True)
        admin_token_from(os.environ, DATA_DIR)
    except DevConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    code = 0

    async def _main() -> None:
        nonlocal code
        code = await run_dev(dict(os.environ))

    run(_main)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
