"""Checks on what callers send: model names, accelerators, endpoints and server flags.

Anything that may end up on a command line or in a provider's task is checked here against a
narrow pattern, so that no value can break out of the command it is put in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from cic_orchestrator.nodes import InvalidNodeRequest

_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}$")
_ACCELERATORS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}:[1-9][0-9]?$")
# SkyPilot's infra form: ``cloud[/region[/zone]]``, ``kubernetes/<context>``, ``ssh/<pool>``.
MAX_CLOUDS = 8
_CLOUD = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}(?:/(?:\*|[A-Za-z0-9][A-Za-z0-9._-]{0,62})){0,2}$")
_HOST = re.compile(r"^(?:[0-9a-f:.]+|[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?)$")
_FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]{0,63}$")
_NUMBER = re.compile(r"^-?(?:\d{1,12}(?:\.\d{1,12})?|\.\d{1,12})$")
_INTEGER = re.compile(r"^\d{1,12}$")
MAX_ARGS = 64

# Checks one flag's value; returns a message when it is wrong. ``SWITCH`` marks a flag that
# takes no value (``--enforce-eager``).
ValueCheck = Callable[[str], str | None]


def _no_value(value: str) -> str | None:
    return "takes no value"


SWITCH: ValueCheck = _no_value


def check_model(model: str) -> str:
    if not _MODEL.fullmatch(model):
        raise InvalidNodeRequest(
            "model must be 1-128 characters of letters, digits and . _ / : - "
            "starting with a letter or digit"
        )
    return model


def check_accelerators(accelerators: str) -> str:
    """``NAME:COUNT`` (e.g. ``H100:1``), or empty when the provider needs none."""
    if accelerators and not _ACCELERATORS.fullmatch(accelerators):
        raise InvalidNodeRequest("accelerators must look like NAME:COUNT, e.g. H100:1")
    return accelerators


def check_cloud(cloud: str) -> str:
    """A cloud, optionally with region and zone or a Kubernetes context or SSH node pool, as
    SkyPilot's ``infra`` takes it (``aws/us-east-1``, ``k8s``, ``ssh/my-pool``), or ``local``;
    or several SkyPilot infras separated by commas (SkyPilot picks one that has capacity)."""
    if not cloud:
        return cloud
    infras = cloud.split(",")
    if len(infras) > MAX_CLOUDS or not all(_CLOUD.fullmatch(i) for i in infras):
        raise InvalidNodeRequest(
            "cloud must be a cloud name with an optional /region[/zone], e.g. local, aws, "
            f"aws/us-east-1, kubernetes/my-context, ssh/my-pool (or up to {MAX_CLOUDS} of "
            "them separated by commas)"
        )
    if len(infras) > 1 and ("local" in infras or len(set(infras)) < len(infras)):
        raise InvalidNodeRequest("cloud lists each infra once, and `local` only alone")
    return cloud


def cloud_list(cloud: str) -> list[str]:
    return [c for c in cloud.split(",") if c]


def check_endpoint(endpoint: str) -> str:
    """An ``http(s)://host[:port]`` base URL without path, query or credentials; returned
    without a trailing slash."""
    message = "endpoint must be a base URL like http://10.0.0.5:8000"
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise InvalidNodeRequest(message) from None
    if (
        parts.scheme not in ("http", "https")
        or not _HOST.fullmatch(parts.hostname or "")
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        raise InvalidNodeRequest(message)
    return f"{parts.scheme}://{parts.netloc}"


def number(minimum: float | None = None, maximum: float | None = None) -> ValueCheck:
    def check(value: str) -> str | None:
        if not _NUMBER.fullmatch(value):
            return "needs a number"
        if (minimum is not None and float(value) < minimum) or (
            maximum is not None and float(value) > maximum
        ):
            return f"must be between {minimum:g} and {maximum:g}"
        return None

    return check


def whole_number(minimum: int = 0, maximum: int | None = None) -> ValueCheck:
    def check(value: str) -> str | None:
        if not _INTEGER.fullmatch(value):
            return "needs a whole number"
        if int(value) < minimum:
            return f"must be at least {minimum}"
        if maximum is not None and int(value) > maximum:
            return f"must be at most {maximum}"
        return None

    return check


def one_of(*choices: str) -> ValueCheck:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def matching(pattern: str, description: str) -> ValueCheck:
    """A value matching ``pattern`` in full (which must keep out quotes, spaces and $)."""
    compiled = re.compile(pattern)

    def check(value: str) -> str | None:
        return None if compiled.fullmatch(value) else f"must be {description}"

    return check


def check_flag_args(args: Sequence[str], allowed: Mapping[str, ValueCheck]) -> list[str]:
    """Checks server flags given as ``--flag=value`` or ``--flag value`` against ``allowed``
    (flag → value check); returns them as ``--flag=value`` items (a switch as ``--flag``)."""
    if len(args) > MAX_ARGS:
        raise InvalidNodeRequest(f"at most {MAX_ARGS} vllm args")
    checked: list[str] = []
    position = 0
    while position < len(args):
        item = args[position]
        flag, has_value, value = item.partition("=")
        if not _FLAG.fullmatch(flag):
            raise InvalidNodeRequest(f"vllm arg {_quote(item)} is not a --flag")
        if flag not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise InvalidNodeRequest(f"vllm arg {flag} is not allowed (allowed: {names})")
        if allowed[flag] is SWITCH:
            if has_value:
                raise InvalidNodeRequest(f"vllm arg {flag} takes no value")
            checked.append(flag)
            position += 1
            continue
        if not has_value:
            if position + 1 >= len(args):
                raise InvalidNodeRequest(f"vllm arg {flag} needs a value")
            position += 1
            value = args[position]
        problem = allowed[flag](value)
        if problem:
            raise InvalidNodeRequest(f"vllm arg {flag} {problem}, got {_quote(value)}")
        checked.append(f"{flag}={value}")
        position += 1
    return checked


def _quote(value: str) -> str:
    shown = value if len(value) <= 40 else value[:40] + "…"
    return repr(shown)
