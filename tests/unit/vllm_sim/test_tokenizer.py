"""The documented tokenizer rule and the generator's determinism."""

from __future__ import annotations

from cic_vllm_sim.generation import Choice, embedding, seed_for
from cic_vllm_sim.tokenizer import count_tokens, render_chat


def test_words_and_punctuation_are_tokens_and_whitespace_is_not() -> None:
    assert count_tokens("Hello there!") == 3
    assert count_tokens("  it's 42,\n ok ") == 6  # it ' s 42 , ok
    assert count_tokens("") == 0


def test_chat_costs_three_per_message_plus_two_for_the_generation_prompt() -> None:
    messages = [("system", "Be brief."), ("user", "Hello there!")]
    rendered = render_chat(messages)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n"
    )
    assert count_tokens(rendered) == (3 + 3) + (3 + 3) + 2
    assert count_tokens(render_chat(messages, add_generation_prompt=False)) == 12


def test_list_content_counts_its_text_parts() -> None:
    parts = [
        {"type": "text", "text": "one two"},
        {"type": "image_url"},
        {"type": "text", "text": "x"},
    ]
    assert count_tokens(render_chat([("user", parts)])) == 3 + 3 + 2


def test_generated_text_tokenizes_back_to_its_token_count() -> None:
    choice = Choice(0, seed_for("prompt"), max_tokens=40, room=100)
    text = choice.run()
    assert choice.produced == 40
    assert choice.finish_reason == "length"
    assert count_tokens(text) == 40


def test_natural_length_is_between_16_and_64_and_stops() -> None:
    lengths = set()
    for i in range(50):
        choice = Choice(0, seed_for(f"prompt {i}"), max_tokens=None, room=1000)
        choice.run()
        assert choice.finish_reason == "stop"
        lengths.add(choice.produced)
    assert min(lengths) >= 16
    assert max(lengths) <= 64
    assert len(lengths) > 5


def test_room_left_in_the_context_cuts_with_length() -> None:
    choice = Choice(0, seed_for("prompt"), max_tokens=None, room=3)
    choice.run()
    assert (choice.produced, choice.finish_reason) == (3, "length")


def test_same_prompt_and_seed_give_the_same_text_and_others_differ() -> None:
    def text(prompt: str, seed: int | None, index: int = 0) -> str:
        return Choice(index, seed_for(prompt, seed, index), None, 1000).run()

    assert text("a prompt", 7) == text("a prompt", 7)
    assert text("a prompt", 7) != text("a prompt", 8)
    assert text("a prompt", 7) != text("another prompt", 7)
    assert text("a prompt", 7, 0) != text("a prompt", 7, 1)


def test_stop_string_ends_the_text_before_it_and_holds_back_partial_matches() -> None:
    full = Choice(0, seed_for("stops"), max_tokens=30, room=100).run()
    stop = full.split(" ")[5]
    choice = Choice(0, seed_for("stops"), max_tokens=30, room=100, stop=[" " + stop])
    deltas = []
    while not choice.finished:
        deltas.append(choice.step())
    assert choice.finish_reason == "stop"
    assert choice.stop_reason == " " + stop
    assert choice.text == full[: full.index(" " + stop)]
    assert "".join(deltas) == choice.text
    assert choice.produced == 6


def test_embeddings_are_deterministic_unit_vectors() -> None:
    vector = embedding("some text", 32)
    assert len(vector) == 32
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-9
    assert vector == embedding("some text", 32)
    assert vector != embedding("other text", 32)
    short = embedding("some text", 32, dimensions=8)
    assert len(short) == 8
    assert abs(sum(v * v for v in short) - 1.0) < 1e-9
