"""The pieces of rate limiting a client sees: reset durations, the token estimate, the 429."""

import pytest

from cic_gateway.ratelimit_http import (
    BucketState,
    estimate_tokens,
    go_duration,
    limit_headers,
    rate_limited_error,
)


@pytest.mark.parametrize(
    ("microseconds", "expected"),
    [
        (0, "0s"),
        (1, "1ms"),
        (120_000, "120ms"),
        (999_999, "1s"),
        (1_000_000, "1s"),
        (8_640_000, "8.64s"),
        (59_999_500, "1m0s"),
        (360_000_000, "6m0s"),
        (90_500_000, "1m30.5s"),
        (3_600_000_000, "1h0m0s"),
        (3_723_004_000, "1h2m3.004s"),
    ],
)
def test_durations_are_written_like_openais_reset_headers(microseconds: int, expected: str) -> None:
    assert go_duration(microseconds) == expected


def test_the_estimate_is_prompt_bytes_over_four_plus_the_completion_cap() -> None:
    chat = {"messages": [{"role": "user", "content": "x" * 36}], "max_tokens": 50}
    # "user" (4 bytes) + 36 bytes = 40 bytes = 10 tokens, plus 50.
    assert estimate_tokens(chat, generates=True, default_max_tokens=256) == 60
    newer = {**chat, "max_completion_tokens": 20, "n": 3}
    assert estimate_tokens(newer, generates=True, default_max_tokens=256) == 10 + 60
    uncapped = {"prompt": "é" * 4}  # 8 bytes of UTF-8
    assert estimate_tokens(uncapped, generates=True, default_max_tokens=256) == 2 + 256
    token_ids = {"prompt": [1, 2, 3], "max_tokens": 1}
    assert estimate_tokens(token_ids, generates=True, default_max_tokens=256) == 3 + 1
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcd" * 3}]}]}
    assert estimate_tokens(parts, generates=True, default_max_tokens=0) == 5  # 4+4+12 bytes
    bad_cap = {"prompt": "abcd", "max_tokens": "lots", "n": True}
    assert estimate_tokens(bad_cap, generates=True, default_max_tokens=7) == 1 + 7


def test_embeddings_reserve_only_their_input() -> None:
    body = {"input": ["abcd", "efgh"], "max_tokens": 99}
    assert estimate_tokens(body, generates=False, default_max_tokens=256) == 2


def test_headers_are_absent_for_a_kind_without_a_limit() -> None:
    states = [BucketState("tenant", "tokens", 100, 40, 2_000_000)]
    assert limit_headers(states) == {
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "40",
        "x-ratelimit-reset-tokens": "2s",
    }
    assert limit_headers([]) == {}


def test_a_429_never_asks_for_less_than_a_second() -> None:
    error = rate_limited_error(
        "tenant", "requests", 10, 1, 1_500, {"x-ratelimit-limit-requests": "10"}
    )
    assert error.status == 429
    assert error.headers["Retry-After"] == "1"
    assert error.headers["retry-after-ms"] == "2"
    assert error.headers["x-ratelimit-limit-requests"] == "10"
    assert error.message == (
        "Rate limit reached for this tenant on requests per min (RPM): Limit 10, Requested 1. "
        "Please try again in 2ms."
    )
