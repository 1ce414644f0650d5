"""`csvembed worker` in a real process with the HashEmbedder double in place of the model, for the
outage tests: everything but the model is real (the CLI, RQ's signal handling, Redis, the store).

Usage: python tests/hash_worker.py [worker options]. CSVEMBED_TEST_ENCODE_SECONDS makes each model
call take that long, and CSVEMBED_TEST_WRITE_SECONDS each write, so that a run lasts long enough to break
something under it. CSVEMBED_TEST_DEVICE names the double's device: on any but "cpu" (the default), the worker
stores a batch while it embeds the next.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import csvembed.embedder  # noqa: E402
import csvembed.store  # noqa: E402
from csvembed.cli import main  # noqa: E402
from doubles import HashEmbedder  # noqa: E402


class SlowHashEmbedder(HashEmbedder):
    """The HashEmbedder, each call taking CSVEMBED_TEST_ENCODE_SECONDS longer, on CSVEMBED_TEST_DEVICE."""

    device = os.environ.get("CSVEMBED_TEST_DEVICE", "cpu")

    def encode(self, texts):
        time.sleep(float(os.environ.get("CSVEMBED_TEST_ENCODE_SECONDS", "0")))
        return super().encode(texts)


class SlowStore:
    """The real store, each write taking CSVEMBED_TEST_WRITE_SECONDS longer (before its transaction)."""

    def __init__(self, store) -> None:
        self.store = store

    def write(self, rows, vectors) -> None:
        time.sleep(float(os.environ.get("CSVEMBED_TEST_WRITE_SECONDS", "0")))
        self.store.write(rows, vectors)

    def __getattr__(self, name):
        return getattr(self.store, name)


open_store = csvembed.store.open_store


csvembed.embedder.resolve_model = lambda model: None
csvembed.embedder.choose_backend = lambda settings, device, backend: ("cpu", backend)
csvembed.embedder.load_embedder = lambda settings, device, backend: SlowHashEmbedder()
csvembed.store.open_store = lambda *args, **kwargs: SlowStore(open_store(*args, **kwargs))
# The double's model name: rows submitted for it are on its own queue (csvembed.routing).
sys.argv = ["csvembed", "--model", HashEmbedder.name, "worker", *sys.argv[1:]]
main()
