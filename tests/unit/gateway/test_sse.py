"""The event relay on its own: split events, usage kept or dropped as the client asked."""

import orjson
import pytest

from cic_gateway.sse import BadStream, SseParser, StreamRelay, UsageWish, usage_of


def _event(chunk: object) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


TOKEN = {
    "choices": [{"index": 0, "delta": {"content": "x"}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1},
}
USAGE = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
STREAM = _event(TOKEN) + _event(USAGE) + b"data: [DONE]\n\n"


def test_parser_handles_events_split_anywhere() -> None:
    for cut in range(1, len(STREAM)):
        parser = SseParser()
        events = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])
        assert events == [orjson.dumps(TOKEN), orjson.dumps(USAGE), b"[DONE]"], cut


def test_parser_accepts_crlf_comments_and_multiline_data() -> None:
    parser = SseParser()
    assert parser.feed(b": keep-alive\r\n\r\ndata: a\r\ndata: b\r\n\r\n") == [b"a\nb"]


@pytest.mark.parametrize(
    ("wish", "expected"),
    [
        (UsageWish(False, False), [{"choices": TOKEN["choices"]}, "[DONE]"]),
        (UsageWish(True, False), [{"choices": TOKEN["choices"]}, USAGE, "[DONE]"]),
        (UsageWish(True, True), [TOKEN, USAGE, "[DONE]"]),
    ],
)
def test_client_gets_exactly_the_usage_it_asked_for(wish: UsageWish, expected: list) -> None:
    relay = StreamRelay(wish)
    out = relay.feed(STREAM)
    decoded = [p[len(b"data: ") : -2] for p in out]
    assert [d.decode() if d == b"[DONE]" else orjson.loads(d) for d in decoded] == expected
    assert (relay.prompt_tokens, relay.completion_tokens, relay.done) == (5, 2, True)


def test_wish_follows_vllm_rules() -> None:
    assert UsageWish.from_request(None) == UsageWish(False, False)
    assert UsageWish.from_request({"continuous_usage_stats": True}) == UsageWish(False, False)
    assert UsageWish.from_request({"include_usage": True}) == UsageWish(True, False)


def test_garbage_from_the_node_is_a_bad_stream() -> None:
    with pytest.raises(BadStream):
        StreamRelay(UsageWish(False, False)).feed(b"data: {not json\n\n")


def test_usage_of_a_whole_answer() -> None:
    assert usage_of(orjson.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 4}})) == (3, 4)
    assert usage_of(orjson.dumps({"usage": {"prompt_tokens": 3, "total_tokens": 3}})) == (3, 0)
    assert usage_of(b"not json") == (0, 0)
