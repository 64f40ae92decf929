"""Typed settings read once from the environment, failing fast with one line naming the variable.

Each service declares a frozen subclass of :class:`ServiceSettings` and calls
:func:`load_settings` from its ``__main__``; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Annotated, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError


class SettingsError(ValueError):
    """A setting is missing or bad; the message is one line that names the variable."""


_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")


def _url_with_scheme(*schemes: str) -> AfterValidator:
    def check(value: str) -> str:
        # The message never repeats the value: a URL may hold a password.
        if urlsplit(value).scheme not in schemes:
            raise ValueError(f"must start with {' or '.join(s + '://' for s in schemes)}")
        return value

    return AfterValidator(check)


def _host_port(value: str) -> str:
    match = _HOST_PORT.match(value)
    if not match or not 0 < int(match.group(1)) < 65536:
        raise ValueError("must be host:port")
    return value


PostgresUrl = Annotated[str, _url_with_scheme("postgresql", "postgres")]
RedisUrl = Annotated[str, _url_with_scheme("redis", "rediss", "unix")]
HostPort = Annotated[str, AfterValidator(_host_port)]


class ServiceSettings(BaseModel):
    """Settings every service has."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    shutdown_grace_s: float = Field(default=25.0, gt=0, le=3600)


class GrpcServiceSettings(ServiceSettings):
    grpc_port: int = Field(default=50051, ge=0, le=65535)


S = TypeVar("S", bound=BaseModel)


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    name = str(first["loc"][0]).upper() if first["loc"] else "?"
    kind = first["type"]
    if kind == "missing":
        return f"{name} is required but not set"
    return f"{name} is invalid: {first['msg']}"


def parse_settings(cls: type[S], environ: Mapping[str, str]) -> S:
    """Builds ``cls`` from ``environ``; raises :class:`SettingsError` with a one-line message."""
    names = {name.upper() for name in cls.model_fields}
    values = {k.lower(): v for k, v in environ.items() if k.upper() in names}
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        raise SettingsError(_describe(err)) from None


def load_settings(cls: type[S], environ: Mapping[str, str]) -> S:
    """Like :func:`parse_settings`, but exits the process with the one-line message."""
    try:
        return parse_settings(cls, environ)
    except SettingsError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
