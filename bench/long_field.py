"""Peak RSS of a worker embedding one huge field, with and without the tokenizer's character cap.

    .venv/bin/python bench/long_field.py [--mb 50]

Submits one row whose text is --mb megabytes of prose, then runs `csvembed worker --burst` under
GNU time, once per backend with the cap (csvembed as shipped) and once with it lifted (the
worker before the cap: CHARS_PER_TOKEN patched to a huge value in the same process).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from datasets import scratch_dir

from bench import World
from csvembed.embedder import load_embedder

WORKER = ("import sys, csvembed.defaults as d; d.CHARS_PER_TOKEN = int(sys.argv.pop(1));"
          "from csvembed.cli import main; main()")


def peak_rss_mb(world: World, path: Path, backend: str, chars_per_token: int) -> float:
    world.submit(path, "--text-column", "body", "--force")
    done = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-c", WORKER, str(chars_per_token),
                           "worker", "--burst", "--backend", backend], env=world.env, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return int(done.stderr.decode().strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=50)
    options = parser.parse_args()
    scratch = scratch_dir("csvembed-long-field-")
    path = scratch / "long.csv"
    sentence = "The replacement you sent last month has exactly the same problem, and I would like a refund. "
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([("id", "body"), ("1", sentence * (options.mb * 1_000_000 // len(sentence)))])
    (scratch / "home").mkdir()
    world = World(scratch / "home")
    load_embedder(world.settings, backend="onnx")  # the export, made once and cached, is not measured
    try:
        for backend in ("onnx", "torch"):
            before = peak_rss_mb(world, path, backend, 10**12)
            after = peak_rss_mb(world, path, backend, 128)
            print(f"{options.mb} MB field, {backend}: worker peak RSS {before:.0f} MB without the cap,"
                  f" {after:.0f} MB with it", flush=True)
    finally:
        world.close()


if __name__ == "__main__":
    main()
