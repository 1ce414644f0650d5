"""`csvembed worker` in a real process with the HashEmbedder double in place of the model, for the
outage tests: everything but the model is real (the CLI, RQ's signal handling, Redis, the store).

Usage: python tests/hash_worker.py [worker options]. CSVEMBED_TEST_ENCODE_SECONDS makes each model
call take that long, so that a run lasts long enough to break something under it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import csvembed.embedder  # noqa: E402
from csvembed.cli import main  # noqa: E402
from doubles import HashEmbedder  # noqa: E402


class SlowHashEmbedder(HashEmbedder):
    """The HashEmbedder, each call taking CSVEMBED_TEST_ENCODE_SECONDS longer."""

    def encode(self, texts):
        time.sleep(float(os.environ.get("CSVEMBED_TEST_ENCODE_SECONDS", "0")))
        return super().encode(texts)


csvembed.embedder.resolve_model = lambda model: None
csvembed.embedder.choose_backend = lambda settings, device, backend: ("cpu", backend)
csvembed.embedder.load_embedder = lambda settings, device, backend: SlowHashEmbedder()
# The double's model name: rows submitted for it are on its own queue (csvembed.routing).
sys.argv = ["csvembed", "--model", HashEmbedder.name, "worker", *sys.argv[1:]]
main()
