"""Deterministic text and vectors: what the simulated model "generates".

A choice's words come from a fixed vocabulary, drawn by a PRNG seeded with a hash of
(prompt, request seed, choice index), so the same request always gets the same answer. Every
generated token is one vocabulary word (the first capitalised, the others after a space), so
re-tokenising the output with `tokenizer.count_tokens` gives back its completion token count.

Length: `max_tokens` when the request gives one (finish_reason "length"); otherwise a natural
length in 16..64 drawn from the same PRNG (finish_reason "stop"), cut to the room left in the
context (finish_reason "length"). A stop string ends the choice early with finish_reason "stop"
and `stop_reason` set to that string; like vLLM, text that may be the start of a stop string is
held back until it is known not to be one.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

WORDS: tuple[str, ...] = tuple(
    """
    the model answers with plain words that carry no meaning at all but look like text a
    language system might write when asked about clouds rivers stones lights numbers trains
    gardens cities bridges letters maps songs tables windows engines forests islands signals
    paths voices colors seasons markets harbors towers circuits ledgers tokens queues nodes
    clusters requests streams chunks latency budget tenant gateway scheduler billing cache
    prompt context vector kernel tensor batch shard replica region zone quota limit metric
    simple quick quiet bright steady early late open closed ready busy idle warm cold new
    old small large first last next every some many few more most other such same
    """.split()
)
MIN_NATURAL_LENGTH = 16
MAX_NATURAL_LENGTH = 64


def seed_for(key: str, seed: int | None = None, index: int = 0) -> int:
    """A 64-bit PRNG seed from a hash of ``key``, the request's seed and the choice index."""
    salt = f"{seed}\x00{index}\x00".encode()
    digest = hashlib.blake2b(salt + key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class Choice:
    """One choice being generated token by token."""

    def __init__(
        self,
        index: int,
        rng_seed: int,
        max_tokens: int | None,
        room: int,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
    ) -> None:
        self.index = index
        self._rng = random.Random(rng_seed)
        natural = MIN_NATURAL_LENGTH + int(
            self._rng.random() * (MAX_NATURAL_LENGTH - MIN_NATURAL_LENGTH + 1)
        )
        if max_tokens is not None:
            self.length, self._end_reason = max_tokens, "length"
        elif natural > room:
            self.length, self._end_reason = room, "length"
        else:
            self.length, self._end_reason = natural, "stop"
        self.produced = 0
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self._stops = [s for s in stop if s]
        self._include_stop = include_stop_str_in_output
        longest = max((len(s) for s in self._stops), default=0)
        self._hold = 0 if include_stop_str_in_output or not self._stops else longest - 1
        self._longest_stop = longest
        self._pieces: list[str] = []
        self._text = ""
        self._sent = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        """The text generated so far (final once finished)."""
        return self._text if self._stops else "".join(self._pieces)

    def step(self) -> str:
        """Generate the next token; returns the text to send for it (may be empty)."""
        word = WORDS[int(self._rng.random() * len(WORDS))]
        token = word.capitalize() if self.produced == 0 else " " + word
        self.produced += 1
        if self._stops:
            return self._step_with_stops(token)
        self._pieces.append(token)
        if self.produced >= self.length:
            self.finish_reason = self._end_reason
        return token

    def run(self) -> str:
        """Generate every remaining token; returns the whole text."""
        while not self.finished:
            self.step()
        return self.text

    def _step_with_stops(self, token: str) -> str:
        search_from = max(0, len(self._text) - self._longest_stop + 1)
        self._text += token
        for stop in self._stops:
            position = self._text.find(stop, search_from)
            if position >= 0:
                cut = position + len(stop) if self._include_stop else position
                self._text = self._text[:cut]
                self.finish_reason, self.stop_reason = "stop", stop
                break
        if self.finish_reason is None and self.produced >= self.length:
            self.finish_reason = self._end_reason
        hold = 0 if self.finished else self._hold
        end = max(self._sent, len(self._text) - hold)
        delta = self._text[self._sent : end]
        self._sent = end
        return delta


def embedding(key: str, dim: int, dimensions: int | None = None) -> list[float]:
    """A unit vector determined by ``key``; ``dimensions`` keeps a prefix, renormalised."""
    rng = random.Random(seed_for(key))
    vector = [rng.random() * 2.0 - 1.0 for _ in range(dim)]
    if dimensions is not None:
        vector = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]
