"""Rate limits and the OpenAI API: the tokens a request body may use, OpenAI's
``x-ratelimit-*`` headers, and its 429."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cic_gateway.errors import ApiError

RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
# Which layer refused a request (key, environment, tenant or global), on its 429.
SCOPE_HEADER = "x-ratelimit-scope"
_SCOPE_WORDS = {"key": "this API key", "tenant": "this tenant", "global": "the platform"}
# kind -> (words in the message, the error's ``type``)
_KIND_WORDS = {
    "requests": ("requests per min (RPM)", "requests"),
    "tokens": ("tokens per min (TPM)", "tokens"),
    "tokens_per_day": ("tokens per day (TPD)", "tokens"),
    "concurrent": ("concurrent requests", "requests"),
}


@dataclass(frozen=True, slots=True)
class BucketState:
    """One bucket as a request left it: what remains, and how long until it is empty."""

    scope: str
    kind: str
    limit: int
    remaining: int
    reset_us: int


def go_duration(microseconds: int) -> str:
    """A duration the way OpenAI's reset headers write it (Go's format): ``120ms``, ``1s``,
    ``8.64s``, ``6m0s``, ``1h0m0s``; whole milliseconds, rounded up."""
    ms = max(0, math.ceil(microseconds / 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


def limit_headers(states: Sequence[BucketState]) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the tightest bucket of each
    kind (the one with the least left); none for a kind without a limit."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        of_kind = [s for s in states if s.kind == kind]
        if not of_kind:
            continue
        tightest = min(of_kind, key=lambda s: (s.remaining, s.limit))
        headers[f"x-ratelimit-limit-{kind}"] = str(tightest.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(tightest.remaining)
        headers[f"x-ratelimit-reset-{kind}"] = go_duration(tightest.reset_us)
    return headers


def rate_limited_error(
    scope: str,
    kind: str,
    limit: int,
    requested: int,
    wait_us: int,
    headers: Mapping[str, str],
    environment: str = "",
) -> ApiError:
    """OpenAI's 429 for the limit that was hit, naming its layer (``environment`` is the
    environment's name), with ``Retry-After`` (whole seconds, at least 1), ``retry-after-ms``
    (which OpenAI's SDKs read first), ``x-ratelimit-scope`` and the ``x-ratelimit-*`` headers."""
    words, error_type = _KIND_WORDS[kind]
    subject = _SCOPE_WORDS.get(scope) or f"{scope} '{environment}'"
    wait_ms = max(1, math.ceil(wait_us / 1000))
    message = (
        f"Rate limit reached for {subject} on {words}: "
        f"Limit {limit}, Requested {requested}. Please try again in {go_duration(wait_us)}."
    )
    return ApiError(
        429,
        message,
        type=error_type,
        code=RATE_LIMIT_EXCEEDED,
        headers={
            **headers,
            "Retry-After": str(max(1, math.ceil(wait_us / 1_000_000))),
            "retry-after-ms": str(wait_ms),
            SCOPE_HEADER: scope,
        },
    )


def estimate_tokens(body: dict[str, Any], *, generates: bool, default_max_tokens: int) -> int:
    """Prompt (UTF-8 bytes of its text / 4, rounded up) plus the completion's cap."""
    prompt = math.ceil(_text_bytes([body.get(f) for f in ("messages", "prompt", "input")]) / 4)
    if not generates:
        return prompt
    cap = _count(body.get("max_completion_tokens", body.get("max_tokens")))
    completion = default_max_tokens if cap is None else cap
    choices = _count(body.get("n"))
    return prompt + completion * (choices or 1)


def _count(value: Any) -> int | None:
    """``value`` when it is a sane count (the node refuses the request otherwise)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10_000_000:
        return value
    return None


def _text_bytes(value: Any) -> int:
    """The UTF-8 bytes of every string in ``value``; a token id counts as 4 bytes."""
    total, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            total += len(item.encode())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, int):
            total += 4
    return total
