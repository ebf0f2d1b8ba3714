"""The embedder and its token-budget batching, on the packaged default model (no services)."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from pgrag.inference.embedding import Embedder, load_embedder, token_batches
from pgrag.inference.weights import PACKAGED_MODELS, pick_device, resolve_model
from pgrag.runtime.settings import DEFAULT_EMBED_MODEL

WORDS = [
    *("postgres", "vector", "index", "query", "chunk", "token", "batch", "model", "river"),
    *("bridge", "storm", "city", "light", "engineer", "document", "search", "answer"),
    *("embedding", "cosine", "neighbour", "recall", "worker", "queue"),
]


def sample_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences of 1 to 120 words, in no particular order of length."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(1, 120))
        texts.append(" ".join(words).capitalize() + ".")
    return texts


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder(DEFAULT_EMBED_MODEL, "cpu")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# token_batches


@pytest.mark.parametrize("budget", [1, 64, 1000, 8192])
@pytest.mark.parametrize("max_batch", [1, 7, 512])
def test_token_batches(budget: int, max_batch: int) -> None:
    rng = random.Random(budget * max_batch)
    lengths = [rng.randint(1, 300) for _ in range(500)]
    batches = token_batches(lengths, token_budget=budget, max_batch=max_batch)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        assert 1 <= len(b) <= max_batch
        longest = max(lengths[i] for i in b)
        assert len(b) == 1 or len(b) * longest <= budget
    # Greedy: a batch stops only when the next row would break the budget or the row cap.
    for b in batches[:-1]:
        assert len(b) == max_batch or (len(b) + 1) * lengths[b[0]] > budget


def test_token_batches_edges() -> None:
    assert token_batches([], token_budget=100, max_batch=8) == []
    assert token_batches([500, 10, 10], token_budget=100, max_batch=8) == [[0], [1, 2]]
    assert token_batches([5, 5, 5], token_budget=10, max_batch=8) == [[0, 1], [2]]


# encode


def test_encode_matches_sentence_transformers(embedder: Embedder) -> None:
    texts = sample_texts(60)
    reference = embedder.model.encode(texts, batch_size=32)
    for budget in (None, 256, 2048):  # the default, many small batches, a few large ones
        out = embedder.encode(texts, token_budget=budget)
        assert out.shape == (len(texts), embedder.dim) and out.dtype == np.float32
        assert cosines(out, reference).min() > 0.999  # row i is text i
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_encode_order_with_duplicates(embedder: Embedder) -> None:
    texts = sample_texts(10, seed=1)
    mixed = [texts[i] for i in (3, 0, 3, 9, 1, 0)]
    out = embedder.encode(mixed, token_budget=128)
    alone = embedder.encode(texts, token_budget=128)
    for row, i in enumerate((3, 0, 3, 9, 1, 0)):
        assert cosines(out[row : row + 1], alone[i : i + 1])[0] > 0.9999


def test_encode_empty(embedder: Embedder) -> None:
    out = embedder.encode([])
    assert out.shape == (0, embedder.dim) and out.dtype == np.float32
    assert embedder.count_tokens([]) == []


def test_long_text_is_truncated(embedder: Embedder) -> None:
    long_text = ("A very long document about vector search. " * 300)[:10_000]
    assert embedder.count_tokens([long_text, "short text"]) == [embedder.max_seq_length, 4]
    out = embedder.encode([long_text, "short text"])
    assert np.isfinite(out).all()
    reference = embedder.model.encode([long_text, "short text"])
    assert cosines(out, reference).min() > 0.999


def test_embedder_shape(embedder: Embedder) -> None:
    assert (embedder.dim, embedder.max_seq_length, embedder.device) == (384, 256, "cpu")
    assert embedder.tokenizer.is_fast
    assert embedder.tokenizer is not embedder.model.tokenizer  # callers get their own copy


def test_load_embedder_is_cached(embedder: Embedder) -> None:
    assert load_embedder(DEFAULT_EMBED_MODEL, "cpu") is embedder
    # A bare name resolves to the same packaged folder, so the model is loaded once.
    assert load_embedder("all-MiniLM-L6-v2", "cpu").model is embedder.model


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_encode_on_gpu_matches_cpu(embedder: Embedder) -> None:
    gpu = load_embedder(DEFAULT_EMBED_MODEL, "cuda")
    assert next(gpu.model.parameters()).dtype == torch.float16
    texts = sample_texts(200)
    out = gpu.encode(texts)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert cosines(out, embedder.encode(texts)).min() > 0.999


# models


def test_resolve_model() -> None:
    path = resolve_model(DEFAULT_EMBED_MODEL)
    assert os.path.isfile(os.path.join(path, "modules.json"))
    assert resolve_model("all-MiniLM-L6-v2") == path
    assert resolve_model("someone/unknown-model") == "someone/unknown-model"
    assert resolve_model(path) == path
    assert DEFAULT_EMBED_MODEL in PACKAGED_MODELS


def test_pick_device() -> None:
    assert pick_device("") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            pick_device("cuda")
