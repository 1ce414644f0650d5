#!/usr/bin/env bash
# MiniLM on a GPU: the model's raw encode against csvembed end to end, on 200,000 short rows.
#
#   bench/gpu_check.sh [rows]        (from the repository root, on a fresh machine with an NVIDIA GPU)
#
# Installs the project into .venv-gpu (torch from PyPI: its CUDA build, a few GB), then prints
#   encode    rows/s of MiniLM's encode on the GPU over every text, 1024 per call (after a warm-up)
#   csvembed  rows/s from `csvembed submit` start until every row is done: embedded Redis, one warm
#             `csvembed worker --device cuda --batch-size 1024`
#   ratio     csvembed / encode
# Budget: install 2-4 min, model load and warm-up under a minute, the two runs about a minute.
set -euo pipefail
ROWS="${1:-200000}"
VENV="${VENV:-.venv-gpu}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e .
"$VENV/bin/python" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print("torch", torch.__version__, torch.cuda.get_device_name())'

HF_HUB_OFFLINE=1 "$VENV/bin/python" - "$ROWS" <<'EOF'
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, "bench")
import torch
from bench import BIN, World, stop, timed_run, warm
from datasets import write_titles

from csvembed.embedder import SentenceTransformerEmbedder

rows = int(sys.argv[1])
scratch = Path(tempfile.mkdtemp(prefix="csvembed-gpu-"))
path = scratch / "titles.csv"
texts = write_titles(path, rows)
warmup = scratch / "warmup.csv"
warmup.write_text("sku,body,price\n1,warm up,1.99\n", encoding="utf-8")
args = ("--text-column", "body")

model = SentenceTransformerEmbedder("all-MiniLM-L6-v2", device="cuda").model
model.encode(texts[:4096], batch_size=1024, normalize_embeddings=True, show_progress_bar=False)
torch.cuda.synchronize()
start = time.perf_counter()
model.encode(texts, batch_size=1024, normalize_embeddings=True, show_progress_bar=False)
torch.cuda.synchronize()
encode = rows / (time.perf_counter() - start)
print(f"encode    {encode:12,.0f} rows/s  (MiniLM, {rows:,} short rows, 1024 per call)", flush=True)
del model
torch.cuda.empty_cache()

home = scratch / "home"
home.mkdir()
world = World(home)
worker = warm(world, [str(BIN / "csvembed"), "worker", "--device", "cuda", "--batch-size", "1024"], args, warmup)
ours = timed_run(world, path, args, rows)
stop(worker)
world.close()
print(f"csvembed  {ours:12,.0f} rows/s  (submit until all done, one warm worker, batch 1024)")
print(f"ratio     {ours / encode:12.2f}")
EOF
