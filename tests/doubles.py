"""Named test doubles. The real model is used in the end-to-end tests; these serve the fast tier's
queue and store mechanics, where what matters is which rows are stored, not what their vectors mean."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from csvembed.embedder import text_char_cap


class HashEmbedder:
    """A deterministic stand-in for a model: each text's vector comes from its hash, L2-normalised.

    The same text always gives the same vector, different texts give different ones, and no model
    is loaded, so a test runs in milliseconds. `calls` records every batch it was given.
    """

    name = "test-hash-embedder"
    dimension = 16
    device = "cpu"
    backend = "test-double"
    # Its "tokens" are words; its window is wide enough that no test text of the fast tier is windowed.
    max_seq_length = 100_002
    window_tokens = 100_000

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.tokenized: list[int] = []  # the length of every text handed to token_spans
        self.counted: list[list[str]] = []  # every batch handed to token_counts

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
        vector = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
        return vector / np.linalg.norm(vector)

    @property
    def text_cap(self) -> int:
        """Like a real model's encode, it reads only this many characters of each text."""
        return text_char_cap(self.max_seq_length)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        return np.stack([self.vector(text[: self.text_cap]) for text in texts])

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        self.counted.append(list(texts))
        return [len(re.findall(r"\S+", text)) for text in texts]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        self.tokenized.append(len(text))
        return [match.span() for match in re.finditer(r"\S+", text)]


class WordWindowEmbedder(HashEmbedder):
    """The HashEmbedder with a model window of 8 words (10 tokens less its 2 special ones), so that the
    windowing of long text is tested in milliseconds: a window's vector is the hash of its text."""

    name = "test-word-window-embedder"
    max_seq_length = 10
    window_tokens = 8


class OtherModelEmbedder(HashEmbedder):
    """The HashEmbedder as a second model: another name (so another model id and queue) and other vectors for
    the same text, so a stored vector tells which of the two models embedded it."""

    name = "test-other-model"

    def vector(self, text: str) -> np.ndarray:
        return super().vector(f"other model: {text}")


class HookedEmbedder:
    """The HashEmbedder, but before its call number `at` it runs `hook(worker)`: another actor's move while a
    worker holds a batch inside the model (`worker` is set by the test that builds the worker, else None)."""

    def __init__(self, real, at: int, hook) -> None:
        self.real, self.at, self.hook = real, at, hook
        self.name, self.dimension, self.device = real.name, real.dimension, real.device
        # How it splits long text into windows is the real one's.
        self.max_seq_length, self.window_tokens, self.text_cap = real.max_seq_length, real.window_tokens, real.text_cap
        self.token_counts, self.token_spans = real.token_counts, real.token_spans
        self.calls = 0
        self.worker = None

    def encode(self, texts):
        self.calls += 1
        if self.calls == self.at:
            self.hook(self.worker)
        return self.real.encode(texts)
