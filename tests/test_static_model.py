"""A static-embedding model (sentence-transformers' StaticEmbedding, a token lookup table) on the worker's path:
each text tokenized once, vectors bit-identical to the model's own encode, long text windowed at the tokens the
model reads. The model is bench/static_model.py's: MiniLM's tokenizer (which truncates at 128 tokens) over a
seeded random table."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from test_windows import stored_windows

from conftest import write_csv
from csvembed.embedder import SentenceTransformerEmbedder, share_cpu
from csvembed.submissions import SubmissionRecords

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
from static_model import static_model  # noqa: E402

TITLES = ["How to reset a forgotten password on the admin console", "Printer on floor 3 jams at every job",
          "Ünïcödé names in the CSV export come out garbled", "VPN drops every 20 minutes since the update",
          "Feature request: dark mode for the dashboard", "Q3 invoice #4471 charged twice"]
EMPTY_AFTER_TOKENIZING = "\ufffd\u200b"  # characters the tokenizer drops: no token at all
LONG = " ".join(["the cat sat on the mat"] * 50)  # 300 tokens: past the 128 the model reads


@pytest.fixture(scope="module")
def static(tmp_path_factory) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(str(static_model(tmp_path_factory.mktemp("static-model"))))


def reference(static: SentenceTransformerEmbedder, texts: list[str]) -> np.ndarray:
    return static.model.encode(texts, normalize_embeddings=True)


def test_a_static_model_reads_and_is_windowed_at_its_tokenizers_truncation(static):
    assert static.model.tokenizer.truncation["max_length"] == 128
    assert (static.max_seq_length, static.window_tokens) == (128, 128)  # StaticEmbedding adds no special tokens
    assert static.token_counts([LONG, EMPTY_AFTER_TOKENIZING, "two words"]) == [300, 0, 2]  # none cut off
    assert len(static.token_spans(LONG)) == 300


def test_a_static_models_vectors_are_its_own_encodes_bit_for_bit(static):
    windows = [LONG[:600], LONG[500:]]
    texts = [*TITLES, EMPTY_AFTER_TOKENIZING, *windows]
    static.token_counts([*TITLES, EMPTY_AFTER_TOKENIZING, LONG])  # the worker's fit check: ids kept for the titles
    assert np.array_equal(static.encode(texts), reference(static, texts))
    assert np.array_equal(static.encode(texts), reference(static, texts))  # without a count before: tokenized here
    assert not static.encode([EMPTY_AFTER_TOKENIZING]).any()  # a zero vector, which the worker fails
    assert np.array_equal(static.encode([LONG]), reference(static, [LONG]))  # cut off where the model cuts it off
    assert static.encode([]).shape == (0, static.dimension)


def test_a_static_model_with_a_default_prompt_goes_through_its_own_encode(static, tmp_path):
    static.model.prompts = {"document": "passage: "}
    static.model.default_prompt_name = "document"
    try:
        static.model.save(str(tmp_path / "prompted"))
    finally:
        static.model.prompts, static.model.default_prompt_name = {}, None
    prompted = SentenceTransformerEmbedder(str(tmp_path / "prompted"))
    prompted.token_counts(TITLES)
    assert np.array_equal(prompted.encode(TITLES), reference(prompted, TITLES))
    assert not np.array_equal(prompted.encode(TITLES), reference(static, TITLES))


def test_the_worker_stores_a_static_models_vectors_and_windows_its_long_rows(env, submit, drain, static):
    rows = {f"t{i}": title for i, title in enumerate(TITLES)} | {"long": LONG, "blank": EMPTY_AFTER_TOKENIZING}
    path = write_csv(env.dir / "titles.csv", "id,text\n" + "".join(f"{k},{v}\n" for k, v in rows.items()))
    result = submit(path, model=static.name, id_column="id", text_columns=("text",))
    drain(model=static)
    stored = stored_windows(env, result.id)
    assert sorted(stored) == sorted(set(rows) - {"blank"})
    for row_id, (spans, vectors) in stored.items():
        assert np.array_equal(vectors, reference(static, [rows[row_id][a:b] for a, b in spans])), row_id
    long_spans = stored["long"][0]
    assert len(long_spans) == 3 and long_spans[0][0] == 0 and long_spans[-1][1] == len(LONG)
    assert max(len(static.token_spans(LONG[a:b])) for a, b in long_spans) == 128
    snapshot = SubmissionRecords(env.connection).snapshot(result.id)
    assert (snapshot.done, snapshot.failed, snapshot.rows_windowed, snapshot.windows) == (7, 1, 1, 3)


def test_a_static_model_runs_torch_on_one_thread_and_a_transformer_on_its_share(static, embedder):
    import torch

    try:
        assert share_cpu(1, static) == (os.cpu_count() or 1)
        assert torch.get_num_threads() == 1
        share_cpu(1, embedder)
        assert torch.get_num_threads() == (os.cpu_count() or 1)
    finally:
        share_cpu(1, embedder)


def test_a_static_models_row_of_few_tokens_but_many_characters_is_read_whole(env, submit, drain, static):
    # Two tokens (the model reads 128) across 20k characters: one window, all of it, as the model reads it. The
    # encode's character cap must not cut it (a cap of 128 tokens' worth of characters kept only "alpha").
    padded = "alpha" + " " * 20_000 + "beta"
    path = write_csv(env.dir / "padded.csv", f"id,text\npadded,{padded}\n")
    result = submit(path, model=static.name, id_column="id", text_columns=("text",))
    drain(model=static)
    spans, vectors = stored_windows(env, result.id)["padded"]
    assert spans == [(0, len(padded))]
    assert np.array_equal(vectors, reference(static, [padded]))
    assert not np.array_equal(vectors, reference(static, ["alpha"]))
