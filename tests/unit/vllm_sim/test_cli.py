"""The `cic-vllm-sim` process: its start line, clean SIGTERM, and the official openai SDK."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import openai
import pytest

from tests.unit.vllm_sim.helpers import MODEL

START_LINE = re.compile(rf"cic-vllm-sim serving {MODEL} on http://127\.0\.0\.1:(\d+)\n")


def start_sim(*flags: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cic_vllm_sim", "--port", "0", "--model", MODEL, *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = START_LINE.fullmatch(line)
    assert match, f"unexpected start line {line!r}"
    return process, int(match.group(1))


@pytest.fixture(scope="module")
def sdk() -> Iterator[openai.OpenAI]:
    process, port = start_sim("--ttft-ms", "1")
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    try:
        yield client
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_sdk_chat_completion(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello there!"}], max_tokens=5
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (8, 5)


def test_sdk_chat_stream_with_usage(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello there!"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(content.split()) == 6
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert set(finishes[:-1]) == {None}


def test_sdk_completion_and_embeddings(sdk: openai.OpenAI) -> None:
    completion = sdk.completions.create(model=MODEL, prompt="Hello", max_tokens=3)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    embeddings = sdk.embeddings.create(model=MODEL, input=["a b", "c"])
    assert [len(d.embedding) for d in embeddings.data] == [32, 32]
    assert embeddings.usage.prompt_tokens == 3


def test_sdk_sees_vllm_errors(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    assert "The model `other` does not exist." in str(caught.value)
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model=MODEL, messages=[], max_tokens=0)
    assert [m.id for m in sdk.models.list()] == [MODEL]


def test_bad_flag_stops_with_one_line_naming_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cic_vllm_sim", "--model", MODEL, "--fail-rate", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith("fail-rate must be between 0 and 1")
