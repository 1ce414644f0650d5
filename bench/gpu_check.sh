#!/usr/bin/env bash
# MiniLM on a GPU: the model's raw encode against csvembed end to end, on 200,000 short rows.
#
#   bench/gpu_check.sh [rows]             (repository root, a fresh machine with an NVIDIA GPU and PyPI)
#   PACK=DIR bench/gpu_check.sh [rows]    (the same machine without network: DIR from bench/gpu_pack.sh)
#
# Online it installs the project into .venv-gpu (torch from PyPI: its CUDA build, a few GB). With PACK it
# installs DIR's wheels next to the machine's own python3 and its PyTorch, loads DIR's model and runs
# csvembed from this checkout. Then bench/gpu_check.py prints encode and csvembed rows/s, their ratio, and
# how far csvembed's stored vectors are from the raw encode's, for one, two and four workers (WORKERS, as
# gpu_check.py --workers). Budget (an H200, PACK, 100,000 rows): about 2 minutes measured with one worker; each
# further set-up adds under a minute (an estimate: it loads its models, then runs the rows); online, add 2-4
# minutes of install.
set -euo pipefail
ROWS="${1:-200000}"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv,noheader

if [[ -n "${PACK:-}" ]]; then
    site=/tmp/csvembed-gpu-site
    python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --upgrade \
        --target "$site" "$PACK"/wheels/*.whl
    # csvembed itself runs from this checkout: a launcher for the command, no build backend needed.
    mkdir -p "$site/bin"
    printf '#!/bin/sh\nexec python3 -m csvembed "$@"\n' >"$site/bin/csvembed"
    chmod +x "$site/bin/csvembed"
    export PYTHONPATH="$site:$(pwd)" CSVEMBED_BENCH_BIN="$site/bin"
    python=python3
    model=/tmp/csvembed-gpu-model
    rm -rf "$model" && cp -r "$PACK/model" "$model"
    xz -d "$model/model.fp16.safetensors.xz"
    "$python" - "$model" <<'PY'
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

folder = Path(sys.argv[1])
weights = load_file(folder / "model.fp16.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, folder / "model.safetensors")
(folder / "model.fp16.safetensors").unlink()
PY
else
    venv="${VENV:-.venv-gpu}"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -e .
    python="$venv/bin/python"
    model=all-MiniLM-L6-v2
fi
[[ "${DEVICE:-cuda}" != cuda ]] || "$python" -c 'import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print("torch", torch.__version__, torch.cuda.get_device_name())'
HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 "$python" bench/gpu_check.py --rows "$ROWS" --model "$model" --device "${DEVICE:-cuda}" \
    --workers "${WORKERS:-1024,1024x2,1024x4}"
