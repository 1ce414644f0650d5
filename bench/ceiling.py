"""The queue's own ceiling: what one worker process costs per row when the model is (nearly) free.

    .venv/bin/python bench/ceiling.py [--rows 20000] [--runs 5] [--static-rows 50000] [--skip-static]
                                      [--accelerator-us 100 [--accelerator-batch 1024]]

model-free  A BatchWorker (burst, in this process) over rows already queued, with an embedder that
            returns one constant vector: worker CPU per row (this process, store write included),
            Redis CPU per row (`INFO cpu` used_cpu_user + used_cpu_sys deltas), Redis commands per
            row (INFO commandstats), rows/s of the worker alone.
static      A static-embedding model (bench/static_model.py: a token lookup table over MiniLM's
            tokenizer, 256 dimensions, the kind model2vec/potion models are) on short titles:
            raw encode, the hand-rolled loop (bench/static_model.py: read the CSV, encode 1024 rows,
            upsert them into sqlite-vec, one transaction per batch, no queue), and csvembed from
            `csvembed submit` start until every row is done, one warm worker (this process); ratio
            csvembed / loop, same run.
accelerator (with --accelerator-us) The model-free worker, but each model call waits N µs per text with this
            process idle, as a host waits on a GPU's kernels: rows/s and its ratio to 1e6 / N, the rate of the
            emulated device alone. It shows how much of the queue's work overlaps the device's; no GPU at hand.
Each world has its own embedded Redis (AOF on, as csvembed starts it). Prints medians over --runs.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).parent))
from datasets import scratch_dir, write_titles  # noqa: E402
from static_model import hand_rolled_loop, static_model  # noqa: E402

from csvembed import defaults  # noqa: E402
from csvembed.broker import connect, stop_local_redis  # noqa: E402
from csvembed.ingest import Ingestor  # noqa: E402
from csvembed.producer import Producer, SubmitOptions  # noqa: E402
from csvembed.reader import open_source  # noqa: E402
from csvembed.routing import model_queue  # noqa: E402
from csvembed.settings import Settings  # noqa: E402
from csvembed.store import open_store  # noqa: E402
from csvembed.submissions import SubmissionRecords  # noqa: E402
from csvembed.worker import BatchWorker  # noqa: E402

BIN = Path(sys.executable).parent


class ConstantEmbedder:
    """A model that costs nothing: the same unit vector for every text."""

    name = "constant"
    device = "cpu"
    backend = "none"
    dimension = 256
    max_seq_length = 256
    window_tokens = 254

    def __init__(self) -> None:
        self._vector = np.full(self.dimension, 1 / np.sqrt(self.dimension), dtype=np.float32)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Words as tokens: about what a fast tokenizer costs a short row, without loading one."""
        return [match.span() for match in re.finditer(r"\S+", text)]

    def token_counts(self, texts) -> list[int]:
        return [len(self.token_spans(text)) for text in texts]

    def encode(self, texts) -> np.ndarray:
        return np.broadcast_to(self._vector, (len(texts), self.dimension))


class AcceleratorEmbedder(ConstantEmbedder):
    """The constant model on an emulated accelerator: a model call waits `seconds_per_text` per text while
    this process is idle (time.sleep releases the GIL, as torch does while it waits on CUDA)."""

    device = "accelerator"  # not the CPU: the worker stores a batch while the next is embedded

    def __init__(self, seconds_per_text: float) -> None:
        super().__init__()
        self.seconds_per_text = seconds_per_text

    def encode(self, texts) -> np.ndarray:
        time.sleep(self.seconds_per_text * len(texts))
        return super().encode(texts)


class World:
    """A private csvembed home: embedded Redis and a SQLite store."""

    def __init__(self, scratch: Path, model: str) -> None:
        self.home = Path(tempfile.mkdtemp(dir=scratch))
        self.settings = Settings(home=self.home, db=self.home / "store.db", model=model)
        self.connection: redis.Redis = connect(self.settings)
        self.records = SubmissionRecords(self.connection)
        self.env = {**os.environ, "CSVEMBED_HOME": str(self.home), "CSVEMBED_DB": str(self.home / "store.db"),
                    "CSVEMBED_MODEL": model}
        self.env.pop("CSVEMBED_REDIS_URL", None)

    def submit(self, path: Path) -> str:
        producer = Producer(self.connection, str(self.settings.db), self.settings.model_id)
        return producer.submit(open_source(str(path)), SubmitOptions(text_columns=("body",))).id

    def redis_cpu(self) -> float:
        info = self.connection.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def redis_calls(self) -> int:
        return sum(int(stats["calls"]) for stats in self.connection.info("commandstats").values())

    def worker(self, embedder, batch_size: int) -> BatchWorker:
        ingestor = Ingestor(embedder, open_store(str(self.settings.db)), self.records)
        return BatchWorker([self.queue], ingestor=ingestor, batch_size=batch_size)

    @property
    def queue(self) -> str:
        """The queue of this world's model (csvembed.routing)."""
        return model_queue(defaults.QUEUE_NAME, self.settings.model_id)

    def close(self) -> None:
        stop_local_redis(self.settings)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def model_free(path: Path, rows: int, batch_size: int, scratch: Path, embedder: ConstantEmbedder | None = None) -> dict:
    """One run: submit (not measured), then one burst worker over every row."""
    world = World(scratch, "constant")
    submission_id = world.submit(path)
    worker = world.worker(embedder or ConstantEmbedder(), batch_size)
    cpu, redis_cpu, calls, start = cpu_seconds(), world.redis_cpu(), world.redis_calls(), time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    wall = time.perf_counter() - start
    figures = {"rows/s": rows / wall, "worker µs/row": (cpu_seconds() - cpu) / rows * 1e6,
               "redis µs/row": (world.redis_cpu() - redis_cpu) / rows * 1e6,
               "commands/row": (world.redis_calls() - calls - 2) / rows}
    snapshot = world.records.snapshot(submission_id)
    assert (snapshot.done, snapshot.failed) == (rows, 0), snapshot
    world.close()
    return figures


def static_csvembed(path: Path, rows: int, model_path: Path, batch_size: int, scratch: Path, embedder=None) -> float:
    """Rows/s from `csvembed submit` start until every row is done, with this process as the warm worker (the
    model at `model_path`, or `embedder` loaded from it)."""
    from csvembed.embedder import SentenceTransformerEmbedder

    world = World(scratch, str(model_path))
    worker = world.worker(embedder or SentenceTransformerEmbedder(str(model_path)), batch_size)
    start = time.time()
    submit = subprocess.Popen([BIN / "csvembed", "submit", str(path), "--text-column", "body"], env=world.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not world.connection.llen(f"rq:queue:{world.queue}"):  # the CLI's start-up (a warm worker waits)
        time.sleep(0.01)
    worker.work(burst=False, max_idle_time=5, logging_level="WARNING")
    submission_id = submit.communicate(timeout=60)[0].decode().strip()
    snapshot = world.records.snapshot(submission_id)
    assert (snapshot.done, snapshot.failed) == (rows, 0), snapshot
    world.close()
    return rows / (snapshot.updated_at - start)


def show(title: str, runs: list[dict]) -> None:
    print(title)
    for key in runs[0]:
        values = [run[key] for run in runs]
        print(f"  {key:<16} median {statistics.median(values):>10,.2f}   runs " + " ".join(f"{v:,.2f}" for v in values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--static-rows", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE)
    parser.add_argument("--skip-static", action="store_true")
    parser.add_argument("--accelerator-us", type=float, help="also run an emulated accelerator: µs per text")
    parser.add_argument("--accelerator-batch", type=int, default=1024)
    args = parser.parse_args()
    scratch = scratch_dir("csvembed-ceiling-")

    titles = scratch / "titles.csv"
    write_titles(titles, args.rows)
    if args.accelerator_us:
        device_rate = 1e6 / args.accelerator_us
        runs = [model_free(titles, args.rows, args.accelerator_batch, scratch,
                           AcceleratorEmbedder(args.accelerator_us / 1e6)) for _ in range(args.runs)]
        for run in runs:
            run["÷ device alone"] = run["rows/s"] / device_rate
        show(f"accelerator, {args.accelerator_us:g} µs a text ({device_rate:,.0f} rows/s alone), {args.rows:,} short"
             f" rows, batch {args.accelerator_batch}:", runs)
    show(f"model-free, {args.rows:,} short rows, batch {args.batch_size}:",
         [model_free(titles, args.rows, args.batch_size, scratch) for _ in range(args.runs)])
    if args.skip_static:
        return

    titles = scratch / "static-titles.csv"
    texts = write_titles(titles, args.static_rows)
    model_path = static_model(scratch / "static-model")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu")
    runs = []
    for _ in range(args.runs):
        start = time.perf_counter()
        model.encode(texts, batch_size=1024, normalize_embeddings=True, show_progress_bar=False)
        raw = args.static_rows / (time.perf_counter() - start)
        loop = hand_rolled_loop(titles, model, Path(tempfile.mkdtemp(dir=scratch)) / "loop.db")
        ours = static_csvembed(titles, args.static_rows, model_path, args.batch_size, scratch)
        runs.append({"encode rows/s": raw, "loop rows/s": loop, "csvembed rows/s": ours, "ratio": ours / loop})
    show(f"static model, {args.static_rows:,} short rows, batch {args.batch_size}:", runs)


if __name__ == "__main__":
    main()
