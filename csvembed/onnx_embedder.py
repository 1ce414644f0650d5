"""sentence-transformers models on ONNX Runtime: the same vectors as PyTorch, faster on CPU.

Why not sentence-transformers' own `backend="onnx"`: it needs optimum-onnx, whose only release
(0.1.0) requires transformers < 4.58, while sentence-transformers 6.2 requires transformers >= 5;
they cannot be installed together (checked November 2026). What csvembed needs of it is small:
an ONNX export of the Transformer module, the model's own fast tokenizer, the pooling its Pooling
config names, and L2 normalisation. That is this module.

The export is made once per model folder and kept under <home>/onnx/<key>/, with a verdict: on
first use the ONNX vectors are compared with PyTorch's on PROBES, and a model that differs (or is
not Transformer + Pooling (+ Normalize)) is recorded as unsupported, so the worker falls back to
PyTorch. Later starts read the export and verdict and import neither torch nor
sentence-transformers, whose import alone takes 3-11 s here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from csvembed import defaults
from csvembed.embedder import quiet_loading, text_char_cap

log = logging.getLogger(__name__)

# Bump when the files in an export or their meaning change: older exports are then remade.
EXPORT_FORMAT = 2
# ONNX and PyTorch vectors must agree at least this well (cosine) on every probe text.
MIN_COSINE = 0.99999
SUPPORTED_POOLING = ("mean", "cls", "max")
# Padded tokens per model call (and at most ENCODE_BATCH_SIZE texts). In fixed 32-text sub-batches the long
# tail of heavy-tailed tickets is padded to its longest text: calls of 256 unsorted tickets padded 1.31x their
# real tokens (2000 sorted ones 1.09x); this budget padded the 256-row calls 1.03x and ran them 1.34x faster.
# 32 titles (about 14 tokens) fit in it: unchanged for them.
TOKEN_BUDGET = 512
# Short and long (past 256 tokens, so truncation is checked), cased, accented, CJK, emoji,
# digits and punctuation: the tokenizer's and the pooling's corner cases, padded together.
PROBES = (
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "Résumé: naïve café owners in Zürich ☕️ — 東京の天気は晴れです。 😀",
    "ERROR 0x80070005: Access is denied. (C:\\Users\\bob\\AppData\\Local\\Temp\\setup.log, line 42)",
    "My printer won't connect to Wi-Fi after the update. I've restarted it twice; still nothing!",
    " ".join(["Long support tickets ramble on about many different things; the model reads the first part."] * 20),
    "12345 67890 3.14159 -2.71828 1e-9 $19.99 50% #hashtag @mention https://example.com/a?b=c",
)


class Unsupported(Exception):
    """Why this model cannot run on ONNX Runtime exactly; the caller falls back to PyTorch."""


def cache_key(folder: Path) -> str:
    """The model's files (names, sizes, modification times) and the export format.

    File stats, not contents: hashing the 90 MB of weights at every start would cost more than the
    rest of a cached start, and a changed or re-installed model gets new stats anyway.
    """
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{EXPORT_FORMAT}\x00{folder.resolve()}\x00".encode())
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            stat = path.stat()
            digest.update(f"{relative}\x00{stat.st_size}\x00{stat.st_mtime_ns}\x00".encode())
    return digest.hexdigest()


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """One exporter per model at a time; the others wait, then find its finished export.

    The cache is the user's, like redis/ beside it: 0700 and its lock files 0600 even in a home that is not
    (exports of a private --model folder are in it).
    """
    lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock_path.parent.chmod(0o700)
    with open(os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def prepared_export(folder: Path, cache_root: Path, create: bool = True) -> Path | None:
    """The export folder of a model, made (and checked against PyTorch) on first use; with
    create=False, None when no export is cached yet.

    A finished export appears by one atomic rename, so a reader never sees half of one, and a
    process killed mid-export leaves only a temporary folder.
    """
    target = cache_root / cache_key(folder)
    if (target / "meta.json").exists():
        return target
    if not create:
        return None
    with _locked(cache_root / f"{target.name}.lock"):
        if (target / "meta.json").exists():  # another worker made it while this one waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root))
        try:
            _export(folder, staging)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def quantized(export: Path) -> Path:
    """The int8 model, made once next to the fp32 export: dynamic, per-channel weights of the MatMuls and
    of the Attention that ONNX Runtime's transformer optimizer fuses (`_fused`), or of the MatMuls alone
    when the graph cannot be fused exactly.

    Quantizing every op type measured cosine 0.955 to fp32 and a top-10 overlap of 0.72. MatMul and
    fused Attention (its Q, K, V projections) measured the same quality as MatMul alone (cosine mean
    0.993, recall@10 0.93 on the benchmark's texts) and ran 1.1-1.25x faster.
    """
    path = export / "model-int8.onnx"
    if path.exists():
        return path
    with _locked(export.parent / f"{export.name}.lock"):
        if not path.exists():
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            staging = export / f".model-int8.{os.getpid()}.onnx"
            fused = _fused(export, export / f".model-fused.{os.getpid()}.onnx")
            # It advises pre-processing on the root logger; the quality it gives is measured in bench/.
            logging.disable(logging.WARNING)
            try:
                # Shape inference knows no types for the outputs of fused (contrib) ops: they are float.
                quantize_dynamic(fused or export / "model.onnx", staging, weight_type=QuantType.QInt8,
                                 per_channel=True, reduce_range=False,
                                 op_types_to_quantize=["MatMul", "Attention"] if fused else ["MatMul"],
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            finally:
                logging.disable(logging.NOTSET)
                if fused is not None:
                    fused.unlink()
            os.rename(staging, path)
    return path


def _export(folder: Path, staging: Path) -> None:
    """Export the model to `staging` and write meta.json: the verdict, and how to tokenize and pool."""
    quiet_loading(is_local=True)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    meta: dict = {"format": EXPORT_FORMAT}
    try:
        meta.update(_export_checked(model, staging))
        meta["supported"] = True
    except Unsupported as exc:
        meta.update(supported=False, reason=str(exc))
    (staging / "meta.json").write_text(json.dumps(meta, indent=1))


def _describe(model) -> dict:
    """How the model turns text into a vector, or Unsupported if it is not a plain text encoder."""
    kinds = [type(module).__name__ for module in model]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise Unsupported(f"its modules are {' + '.join(kinds)}, not Transformer + Pooling (+ Normalize)")
    transformer, pooling = model[0], model[1]
    mode = pooling.get_config_dict().get("pooling_mode")
    if mode not in SUPPORTED_POOLING:
        raise Unsupported(f"its pooling {mode!r} is not one of {', '.join(SUPPORTED_POOLING)}")
    if model.default_prompt_name and model.prompts.get(model.default_prompt_name):
        raise Unsupported("it adds a default prompt to every text")
    backend = getattr(model.tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise Unsupported("it has no fast tokenizer")
    return {
        "pooling": mode,
        "max_seq_length": int(model.max_seq_length),
        "do_lower_case": bool(getattr(transformer, "do_lower_case", False)),
        "input_names": list(model.tokenizer.model_input_names),
        "pad_id": int(model.tokenizer.pad_token_id or 0),
        "dimension": int(model.get_embedding_dimension()),
    }


def _export_checked(model, staging: Path) -> dict:
    """Export the Transformer module, then compare with PyTorch on PROBES; returns the meta fields."""
    meta = _describe(model)
    # PyTorch's vectors as the model was loaded, before the export switches its attention code.
    reference = model.encode(list(PROBES), normalize_embeddings=True, convert_to_numpy=True,
                             show_progress_bar=False)
    _traced(model, meta["input_names"], staging / "model.onnx")
    (staging / "tokenizer.json").write_text(model.tokenizer.backend_tokenizer.to_str())
    candidate = OnnxEmbedder(staging, meta, name="probe", threads=os.cpu_count() or 1).encode(PROBES)
    worst = float(np.min(np.sum(reference * candidate, axis=1)))
    if worst < MIN_COSINE:
        raise Unsupported(f"its ONNX vectors differ from PyTorch's (cosine {worst:.6f} < {MIN_COSINE})")
    config = model[0].auto_model.config
    # For int8's fused graph (0: ONNX Runtime's optimizer reads them from the graph).
    shape = {"num_heads": int(getattr(config, "num_attention_heads", 0) or 0),
             "hidden_size": int(getattr(config, "hidden_size", 0) or 0)}
    return {**meta, **shape, "min_cosine": worst}


def _traced(model, names: list[str], path: Path) -> None:
    """The Transformer module traced to ONNX with eager attention, whose graph ORT's optimizer can fuse.

    The default attention (SDPA in transformers 5) exports to a graph in which the optimizer finds no
    Attention to fuse (all-MiniLM-L6-v2: 0 of 6 fused, against 6 of 6 from eager attention).
    """
    import torch

    backbone = model[0].auto_model.eval()
    if hasattr(backbone, "set_attn_implementation"):
        backbone.set_attn_implementation("eager")

    class Backbone(torch.nn.Module):
        """The Transformer module with named inputs (positional ones collide with `use_cache` in transformers 5)."""

        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.backbone(**dict(zip(names, inputs))).last_hidden_state

    sample = model.tokenizer(["a probe", "another probe text"], padding=True, return_tensors="pt")
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    # The tracer warns about shapes it treats as constants; PROBES check the result on other shapes.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Backbone(), tuple(sample[name] for name in names), str(path),
                          input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={**axes, "last_hidden_state": {0: "batch", 1: "sequence"}},
                          opset_version=17, dynamo=False)


def _fused(export: Path, path: Path) -> Path | None:
    """The export's graph with ONNX Runtime's transformer fusions (Attention, SkipLayerNormalization,
    BiasGelu, ...) at `path`, or None if the optimizer fails or the fused graph's vectors differ from
    the export's on PROBES (the export's are PyTorch's).

    Only int8 uses it: in fp32 the fused graph ran 1.04-1.10x the plain one on 2 threads but 0.91-0.95x
    on 1 (two workers on 2 cores), and its quantized Attention is what makes int8 faster. opt_level=0
    keeps the file portable: ONNX Runtime's hardware-specific optimizations run at session start.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    meta = read_meta(export)
    logging.disable(logging.WARNING)  # the optimizer logs every pattern it does not find
    try:
        optimize_model(str(export / "model.onnx"), model_type="bert", opt_level=0, use_gpu=False,
                       num_heads=meta["num_heads"], hidden_size=meta["hidden_size"]).save_model_to_file(str(path))
    except Exception as exc:  # noqa: BLE001 (any failure leaves the plain graph to quantize)
        log.info("int8: ONNX Runtime's optimizer failed (%s: %s); quantizing the plain graph", type(exc).__name__, exc)
        path.unlink(missing_ok=True)
        return None
    finally:
        logging.disable(logging.NOTSET)
    threads = os.cpu_count() or 1
    plain = OnnxEmbedder(export, meta, name="probe", threads=threads).encode(PROBES)
    fused = OnnxEmbedder(export, meta, name="probe", threads=threads, model_file=path.name).encode(PROBES)
    worst = float(np.min(np.sum(plain * fused, axis=1)))
    if worst < MIN_COSINE:
        log.info("int8: the fused graph differs from the plain one (cosine %.6f); quantizing the plain graph", worst)
        path.unlink()
        return None
    return path


def sub_batches(widths: np.ndarray) -> Iterator[slice]:
    """Slices of `widths` (token counts, longest first) to run together: at most ENCODE_BATCH_SIZE texts and,
    unless one text alone is longer, TOKEN_BUDGET tokens once padded to the first one's width."""
    start = 0
    while start < len(widths):
        rows = min(defaults.ENCODE_BATCH_SIZE, max(1, TOKEN_BUDGET // int(widths[start])))
        yield slice(start, min(start + rows, len(widths)))
        start += rows


def read_meta(export: Path) -> dict:
    return json.loads((export / "meta.json").read_text())


class OnnxEmbedder:
    """An Embedder on ONNX Runtime: the model's own tokenizer, the exported Transformer, numpy pooling."""

    device = "cpu"
    backend = "onnx"

    def __init__(self, export: Path, meta: dict, *, name: str, threads: int, model_file: str = "model.onnx") -> None:
        from tokenizers import Tokenizer

        self.name = name
        self.dimension = int(meta["dimension"])
        self.meta = meta
        self.model_path = export / model_file
        self.tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
        self.tokenizer.no_padding()  # each sub-batch is padded here, to its own longest text
        self.tokenizer.enable_truncation(max_length=int(meta["max_seq_length"]), strategy="longest_first")
        self.max_seq_length = int(meta["max_seq_length"])
        self.text_cap = text_char_cap(self.max_seq_length)
        # Offsets for windows come from a second copy that never truncates (pieces are bounded by the caller).
        self.span_tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
        self.span_tokenizer.no_padding()
        self.span_tokenizer.no_truncation()
        processor = self.span_tokenizer.post_processor
        self.window_tokens = self.max_seq_length - (processor.num_special_tokens_to_add(False) if processor else 0)
        self.threads = 0
        self.use_threads(threads)

    def use_threads(self, threads: int) -> None:
        """Run on `threads` cores. ONNX Runtime fixes them per session, so a change makes a new one."""
        if threads == self.threads:
            return
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle threads sleep instead of spinning: the cores are shared with Redis, the worker's own
        # bookkeeping and other workers. On 2 busy cores, spinning made a batch 1.3-1.5x slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        self.threads = threads

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(encoding.ids) for encoding in self.span_tokenizer.encode_batch(texts, add_special_tokens=False)]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.span_tokenizer.encode(text, add_special_tokens=False).offsets

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised vectors; texts are run longest first in sub-batches of similar length (sub_batches)."""
        texts = [text[: self.text_cap] for text in texts]
        if self.meta["do_lower_case"]:
            texts = [text.lower() for text in texts]
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        lengths = np.fromiter((len(encoding.ids) for encoding in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable")
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for part in sub_batches(lengths[order]):
            chosen = order[part]
            width = int(lengths[chosen[0]])
            ids = np.full((len(chosen), width), self.meta["pad_id"], dtype=np.int64)
            mask = np.zeros((len(chosen), width), dtype=np.int64)
            type_ids = np.zeros((len(chosen), width), dtype=np.int64)
            for row, index in enumerate(chosen):
                encoding = encodings[index]
                length = int(lengths[index])
                ids[row, :length] = encoding.ids
                type_ids[row, :length] = encoding.type_ids
                mask[row, :length] = 1
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
            hidden = self.session.run(None, {name: feeds[name] for name in self.meta["input_names"]})[0]
            vectors[chosen] = self._pool(hidden, mask)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The pooling the model's Pooling config names, over real (unpadded) tokens only."""
        mode = self.meta["pooling"]
        if mode == "cls":
            return hidden[:, 0]
        weights = mask[:, :, None].astype(np.float32)
        if mode == "max":
            return np.where(weights > 0, hidden, np.float32(-1e9)).max(axis=1)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
