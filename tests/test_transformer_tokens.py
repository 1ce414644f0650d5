"""A transformer on the worker's path: each text tokenized once (the fit check's encodings padded with numpy),
vectors bit-identical to the model's own encode, in the CPU's 32-text calls and in a GPU's one call per batch.
The fast tier's model is bench/host_cost.py's tiny BERT: MiniLM's tokenizer (max_seq_length 256) over a 1-layer,
32-wide BERT with seeded random weights; the real MiniLM is the slow tier's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from csvembed import defaults
from csvembed.embedder import SentenceTransformerEmbedder, TransformerTokens

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
from host_cost import tiny_bert  # noqa: E402

TITLES = ["How to reset a forgotten password on the admin console", "Printer on floor 3 jams at every job",
          "Ünïcödé names in the CSV export come out garbled: 東京, ½, 😀", "VPN drops every 20 minutes",
          "  leading and trailing spaces  ", "\ttabs\tand\nnew lines\n", "UPPER lower MiXeD", "a", "",
          "[CLS] special [SEP] tokens [MASK] in the text", "\ufffd\u200b", "Q3 invoice #4471 charged twice"]
LONG = " ".join(["the cat sat on the mat"] * 60)  # 360 tokens: past the 254 a window reads and the model's 256
WINDOWS = [LONG[:700], LONG[600:]]  # pieces of a long row, as the worker encodes them: never counted
CPU, GPU = defaults.ENCODE_BATCH_SIZE, defaults.WHOLE_BATCH_ENCODE


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def tiny(tiny_path) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(str(tiny_path))


def reference(embedder: SentenceTransformerEmbedder, texts: list[str], batch_size: int) -> np.ndarray:
    return embedder.model.encode(texts, normalize_embeddings=True, batch_size=batch_size)


def many(texts: list[str]) -> list[str]:
    """More texts than one CPU call takes, so that batches of the sorted texts differ in width."""
    return [f"{text} {i}" if i % 3 else text for i in range(5) for text in texts]


@pytest.mark.parametrize("batch_size", [CPU, GPU, 7])
def test_a_transformers_vectors_are_its_own_encodes_bit_for_bit(tiny, batch_size):
    tiny.encode_batch_size = batch_size
    try:
        titles = many(TITLES)
        texts = [*titles, *WINDOWS, LONG]
        tiny.token_counts(titles)  # the worker's fit check: encodings kept for the titles
        assert np.array_equal(tiny.encode(texts), reference(tiny, texts, batch_size))
        # Without a count before, every text tokenized here; LONG cut off where the model cuts it off.
        assert np.array_equal(tiny.encode(texts), reference(tiny, texts, batch_size))
        assert np.array_equal(tiny.encode([LONG]), reference(tiny, [LONG], batch_size))
        assert tiny.encode([]).shape == (0, tiny.dimension)
    finally:
        tiny.encode_batch_size = CPU


def test_a_counted_batch_is_not_tokenized_again(tiny, monkeypatch):
    tokenizer_class = type(tiny.model.tokenizer)
    titles = many(TITLES)
    expected = reference(tiny, titles, CPU)
    calls = []
    tokenize = tokenizer_class._encode_plus

    def counted(self, text=None, *args, **kwargs):
        calls.append(len(text))
        return tokenize(self, text, *args, **kwargs)

    monkeypatch.setattr(tokenizer_class, "_encode_plus", counted)
    tiny.token_counts(titles)
    assert np.array_equal(tiny.encode(titles), expected)
    assert calls == []  # neither the count nor the encode went through transformers' tokenizer call
    reference(tiny, titles, CPU)
    assert sum(calls) == len(titles)  # (as the model's own encode does, 32 texts a call)


def test_the_fit_checks_counts_and_offsets_are_the_tokenizers(tiny):
    texts = [*TITLES, LONG]
    plain = tiny.model.tokenizer(texts, add_special_tokens=False, truncation=False, return_offsets_mapping=True)
    assert tiny.token_counts(texts) == [len(ids) for ids in plain["input_ids"]]  # special tokens left out, none cut
    assert tiny.token_counts(["two words", "", LONG]) == [2, 0, 360]
    assert [tiny.token_spans(text) for text in texts] == plain["offset_mapping"]
    assert (tiny.max_seq_length, tiny.window_tokens) == (256, 254)


def test_a_tokenizer_padding_on_the_left_is_padded_there(tiny, tiny_path):
    left = SentenceTransformerEmbedder(str(tiny_path))
    left.model.tokenizer.padding_side = "left"
    left.tokens = TransformerTokens.of(left.model)
    assert isinstance(left.tokens, TransformerTokens) and left.tokens.pad_left
    titles = many(TITLES)
    left.token_counts(titles)
    assert np.array_equal(left.encode(titles), reference(left, titles, CPU))
    assert not np.array_equal(left.encode(titles), reference(tiny, titles, CPU))  # padding on the right


def test_a_transformer_with_a_prompt_or_a_cut_dimension_goes_through_its_own_encode(tiny, tiny_path, tmp_path):
    tiny.model.prompts = {"document": "passage: "}
    tiny.model.default_prompt_name = "document"
    try:
        tiny.model.save(str(tmp_path / "prompted"))
    finally:
        tiny.model.prompts, tiny.model.default_prompt_name = {}, None
    prompted = SentenceTransformerEmbedder(str(tmp_path / "prompted"))
    assert prompted.tokens is None
    prompted.token_counts(TITLES)
    assert np.array_equal(prompted.encode(TITLES), reference(prompted, TITLES, CPU))
    assert not np.array_equal(prompted.encode(TITLES), reference(tiny, TITLES, CPU))
    cut = SentenceTransformerEmbedder(str(tiny_path))
    cut.model.truncate_dim = 16
    assert TransformerTokens.of(cut.model) is None


def test_a_transformer_with_a_dense_layer_goes_through_its_own_encode(tiny_path):
    from sentence_transformers.base.modules import Dense

    dense = SentenceTransformerEmbedder(str(tiny_path))
    dense.model.append(Dense(32, 8))
    assert TransformerTokens.of(dense.model) is None


def test_a_tokenizer_that_cannot_be_copied_goes_through_its_own_encode(tiny_path):
    from tokenizers.pre_tokenizers import PreTokenizer

    class Whole:
        """A custom Python pre-tokenizer (as some Chinese models have): the backend cannot serialize it."""

        def pre_tokenize(self, pretokenized) -> None:
            pretokenized.split(lambda _, piece: [piece])

    custom = SentenceTransformerEmbedder(str(tiny_path))
    custom.model.tokenizer.backend_tokenizer.pre_tokenizer = PreTokenizer.custom(Whole())
    assert TransformerTokens.of(custom.model) is None


@pytest.mark.slow  # the real model
@pytest.mark.parametrize("batch_size", [CPU, GPU])
def test_minilms_vectors_are_its_own_encodes_bit_for_bit(embedder, batch_size):
    assert isinstance(embedder.tokens, TransformerTokens)
    embedder.encode_batch_size = batch_size
    try:
        titles = many(TITLES)
        texts = [*titles, *WINDOWS, LONG]
        plain = embedder.model.tokenizer(titles, add_special_tokens=False, truncation=False)["input_ids"]
        assert embedder.token_counts(titles) == [len(ids) for ids in plain]
        assert np.array_equal(embedder.encode(texts), reference(embedder, texts, batch_size))
        assert np.array_equal(embedder.encode(texts), reference(embedder, texts, batch_size))
    finally:
        embedder.encode_batch_size = CPU
