"""Long text in windows: which characters of a row each model call reads, and what a row's policy does.

A model reads at most `max_seq_length` tokens (all-MiniLM-L6-v2: 256 word pieces, about 1,200
characters of English); the rest of a longer text never reaches it. Under the `window` policy a long
row is split into overlapping windows of whole words, each embedded on its own; `truncate` keeps
only the first window; `fail` fails the row. Windows are character spans of the row's text, so a
window's vector is exactly the model's vector of `text[start:end]`.

The tokenizer sees the text in pieces of at most `window_tokens * CHARS_PER_TOKEN` characters cut at
whitespace, and only as far as the windows reach: a 50 MB cell costs at most MAX_WINDOWS windows of
tokenizing, not the whole cell at once (which took 3.9 GB of RSS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from csvembed import defaults

POLICIES = ("window", "truncate", "fail")
DEFAULT_POLICY = "window"
DEFAULT_OVERLAP = 32
# Windows kept per row; past it the rest of the row is cut off, counted as truncated. 512 windows
# of MiniLM read about 600 KB of English, and cost about 10 s of model time on 2 cores.
MAX_WINDOWS = 512

# (start, end) character offsets of each token of a text, without the model's special tokens.
Tokenize = Callable[[str], list[tuple[int, int]]]


@dataclass(frozen=True)
class Shape:
    """How a stored row was embedded, for the submission's counts: its windows, and whether text was cut off."""

    windows: int
    truncated: bool


@dataclass(frozen=True)
class Split:
    """A row's windows as (start, end) character spans, and whether text past the last one is left out."""

    spans: list[tuple[int, int]]
    truncated: bool


def piece_chars(window_tokens: int) -> int:
    """Characters the tokenizer is handed at most at once; a text this short or shorter fits one window if its
    tokens do (the worker counts those for a whole batch at once: csvembed.ingest)."""
    return window_tokens * defaults.CHARS_PER_TOKEN


def _tokens(text: str, tokenize: Tokenize, piece: int) -> Iterator[tuple[int, int]]:
    """The tokens of `text`, tokenizing at most `piece` characters at a time.

    A piece ends after whitespace (where the model's pre-tokenizers split anyway), so the tokens are
    those of the whole text; a piece without whitespace (one huge "word") is cut where it ends.
    """
    position = 0
    while position < len(text):
        end = min(position + piece, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", position, end), text.rfind("\n", position, end))
            end = cut + 1 if cut > position else end
        for start, stop in tokenize(text[position:end]):
            yield position + start, position + stop
        position = end


def split(text: str, tokenize: Tokenize, window_tokens: int, overlap: int, max_windows: int, char_cap: int) -> Split:
    """At most `max_windows` windows of at most `window_tokens` tokens, each overlapping the previous one.

    Windows end after a whole word (a token followed by a gap) when one ends in the window's second
    half, and start at a word within `overlap` tokens before the previous window's end, so no word
    is cut in two. A text that fits is one window: all of it. `char_cap`: the characters of a text the
    model call reads (Embedder.text_cap); a window's tokens end within that many characters of its start,
    so that tokens spread over long runs of whitespace are never cut off by the model call unrecorded.
    """
    piece = piece_chars(window_tokens)
    # Most rows fit: one tokenizer call and a count, instead of streaming their tokens one by one.
    if len(text) <= min(piece, char_cap) and len(tokenize(text)) <= window_tokens:
        return Split([(0, len(text))], truncated=False)
    overlap = min(overlap, window_tokens // 2)
    tokens: list[tuple[int, int]] = []  # tokens from index `base` on; those before are dropped
    base, first = 0, 0  # first: the index of the current window's first token
    stream = _tokens(text, tokenize, piece)
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        # Read on until the window's tokens and the one after it are known, or the text ends.
        while len(tokens) + base <= first + window_tokens and (token := next(stream, None)) is not None:
            tokens.append(token)
        rest = len(tokens) + base <= first + window_tokens  # the text ends within this window's tokens
        last = len(tokens) + base - 1 if rest else first + window_tokens - 1
        # Tokens the model call would not read (past char_cap) start the next window instead. A token is
        # shorter than a piece, and a piece than the cap, so the window keeps at least its first token.
        while last > first and tokens[last - base][1] - start > char_cap:
            last, rest = last - 1, False
        if rest:  # the rest fits: the last window
            spans.append((start, len(text)))
            return Split(spans, truncated=False)
        if len(spans) == max_windows - 1:
            spans.append((start, tokens[last - base][1]))
            return Split(spans, truncated=True)
        word_end = next((i for i in range(last, first + (last - first + 1) // 2 - 1, -1)
                         if tokens[i - base][1] < tokens[i + 1 - base][0]), last)
        spans.append((start, tokens[word_end - base][1]))
        after = word_end + 1
        first = next((i for i in range(max(after - overlap, first + 1), after)
                      if tokens[i - base][0] > tokens[i - 1 - base][1]), max(after - overlap, first + 1))
        start = tokens[first - base][0]
        del tokens[: first - base]
        base = first
