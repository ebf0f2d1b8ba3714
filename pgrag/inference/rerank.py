"""Rerank: a sentence-transformers CrossEncoder scores (question, passage) pairs.

The model is `settings.rerank_model` (PGRAG_RERANK_MODEL): a hub id or a local path,
resolved through `pgrag.inference.weights.resolve_model`. The default,
`cross-encoder/ms-marco-MiniLM-L-6-v2`, ships in no PyPI package, so offline it loads only
from a local copy (or the Hugging Face cache); when it cannot be loaded, `load_reranker`
raises `RerankerUnavailable` naming the model and the setting.

The backend follows `PGRAG_INFERENCE_BACKEND` (`pgrag.inference.weights.pick_backend`):
torch in fp16 on CUDA, OpenVINO on a CPU (`pgrag.inference.openvino`). Scores are not
stored, so unlike the embedder it needs no per-collection record. Pairs go in batches of
`batch_size`; a passage is its document title and chunk text, as embedded.

No trained cross-encoder ships in a PyPI package, so none loads offline out of the box. The
tests run this module on a real CrossEncoder built from the packaged all-MiniLM-L6-v2 weights
with a new, randomly initialised scoring head: that checks loading, batching and ordering by
the model's scores, and says nothing about rerank quality.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import cache
from typing import Protocol

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from pgrag.inference.batching import Batcher
from pgrag.inference.weights import pick_backend, pick_device, resolve_model
from pgrag.runtime.errors import UserError
from pgrag.runtime.settings import get_settings


class RerankerUnavailable(UserError, ValueError):
    """The configured reranker model cannot be loaded (a setting to fix, hence ValueError)."""


class Rerankable(Protocol):
    title: str | None
    text: str


def passage_text(passage: Rerankable) -> str:
    title = (passage.title or "").strip()
    return f"{title}\n{passage.text}" if title else passage.text


def load_reranker(
    name: str | None = None, device: str | None = None, backend: str | None = None
) -> CrossEncoder:
    """The cross-encoder for `name` (default: the setting), loaded once per process, device
    and backend (a backend setting; default: `PGRAG_INFERENCE_BACKEND`).

    Call it in the process that uses it (in a Celery worker: after the fork).
    """
    settings = get_settings()
    device = pick_device(settings.device if device is None else device)
    backend = pick_backend(settings.inference_backend if backend is None else backend, device)
    return _load(name or settings.rerank_model, device, backend)


@cache
def _load(name: str, device: str, backend: str) -> CrossEncoder:
    path = resolve_model(name)
    runtime, precision = backend.split("-")
    device = "cpu" if runtime == "openvino" else device
    kwargs = {"torch_dtype": torch.float16} if precision == "fp16" else {}
    try:
        model = CrossEncoder(path, device=device, model_kwargs=kwargs)
    except (OSError, ValueError) as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise RerankerUnavailable(
            f"cannot load the reranker model {name!r} ({reason}); "
            "set PGRAG_RERANK_MODEL to a local cross-encoder folder or a hub id that can be "
            "downloaded, or search without --rerank"
        ) from e
    model.eval()
    if runtime == "openvino":
        from pgrag.inference.openvino import use_openvino

        use_openvino(model, name, "scores", precision)
    return model


def rerank_scores(
    question: str,
    passages: Sequence[Rerankable],
    *,
    model: CrossEncoder | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """The cross-encoder's score of each passage for `question`, in input order (float32)."""
    pairs = [(question, passage_text(p)) for p in passages]
    return score_pairs(pairs, model=model or load_reranker(), batch_size=batch_size)


def score_pairs(
    pairs: Sequence[tuple[str, str]], *, model: CrossEncoder, batch_size: int = 32
) -> np.ndarray:
    """The cross-encoder's score of each (question, passage text) pair (float32)."""
    if not pairs:
        return np.zeros(0, dtype=np.float32)
    with torch.inference_mode():
        scores = model.predict(list(pairs), batch_size=batch_size, show_progress_bar=False)
    return np.asarray(scores, dtype=np.float32).reshape(len(pairs))


def rerank_batched(question: str, passages: Sequence[Rerankable]) -> tuple[np.ndarray, int]:
    """`rerank_scores` with the default reranker, in one call with the questions that other
    threads rerank at the same time; and how many questions went in that call."""
    return _batcher(load_reranker())((question, passages))


@cache
def _batcher(model: CrossEncoder) -> Batcher[tuple[str, Sequence[Rerankable]], np.ndarray]:
    def score(items: list[tuple[str, Sequence[Rerankable]]]) -> list[np.ndarray]:
        pairs = [(q, passage_text(p)) for q, passages in items for p in passages]
        scores = score_pairs(pairs, model=model)
        bounds = np.cumsum([0] + [len(passages) for _, passages in items])
        return [scores[a:b] for a, b in itertools.pairwise(bounds)]

    return Batcher(score, get_settings().rerank_max_questions)
