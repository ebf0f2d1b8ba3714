"""The embedder: a sentence-transformers model, fed in batches sized by tokens.

Texts are sorted by token length and packed into batches of at most `token_budget` padded
tokens (rows x longest row), so short chunks go in large batches and long ones in small
batches, with little padding either way. While the model runs one batch, a background
thread tokenizes the next.

The forward pass runs in the embedder's backend (`pgrag.inference.weights.pick_backend`):
torch, in fp16 on CUDA, or OpenVINO on a CPU (`pgrag.inference.openvino`). A collection
records the backend of its vectors, and `collection_embedder` gives every ingest and query
of it that one, so that its vectors never mix two numerics.

A model that expects an instruction before queries (BGE's "Represent this sentence for
searching relevant passages: ") gets it from `Embedder.queries`, which every query goes
through; documents are embedded as they are. A packaged int8 ONNX embedder runs as its
de-quantized sentence-transformers copy (`pgrag.inference.onnx_torch.embedder_copy`), in
whichever backend, as any other model.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from transformers import PreTrainedTokenizerFast

from pgrag.inference.batching import Batcher
from pgrag.inference.cross_encoders import is_onnx_model
from pgrag.inference.weights import (
    QUERY_PROMPTS,
    cpu_turn,
    pick_backend,
    pick_device,
    resolve_model,
)
from pgrag.runtime.errors import UserError
from pgrag.runtime.settings import get_settings
from pgrag.store.schema import Collection


class BackendMismatch(UserError, ValueError):
    """The inference backend setting differs from the one a collection was embedded with."""


def token_batches(lengths: Sequence[int], *, token_budget: int, max_batch: int) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut into batches whose padded size
    (rows x the longest row) stays within `token_budget` and whose rows number at most
    `max_batch`. A row longer than the budget gets a batch of its own."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable").tolist()
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        # Rows come longest first, so the first row of a batch sets its padded length.
        if batch and (
            len(batch) == max_batch or (len(batch) + 1) * max(lengths[batch[0]], 1) > token_budget
        ):
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


class Embedder:
    """A loaded embedding model. Get one with `load_embedder`.

    `tokenizer` is a copy of the model's tokenizer for callers (chunking, counting): the
    model's own one is used only inside `encode`, under a lock, so that tokenizing in
    another thread cannot collide with it (a Rust tokenizer used from two threads with
    different truncation settings fails with "Already borrowed").
    """

    def __init__(self, name: str, model: SentenceTransformer, device: str, backend: str) -> None:
        self.name = name
        self.model = model
        self.device = device  # where the inputs go: "cpu" for OpenVINO
        self.backend = backend
        self.dim = int(model.get_embedding_dimension() or 0)
        self.max_seq_length = int(model.max_seq_length or model.tokenizer.model_max_length)
        self.tokenizer: PreTrainedTokenizerFast = copy.deepcopy(model.tokenizer)
        # Put before every query, never before a document: the model's own "query" prompt,
        # else the one pgrag knows its hub id to expect.
        self.query_prompt: str = model.prompts.get("query") or QUERY_PROMPTS.get(name, "")
        self._lock = threading.Lock()
        # The texts of many threads, embedded together: a query worker's questions in flight,
        # and the sentences its extractive answers score (`Batcher`).
        self.together: Batcher[Sequence[str], np.ndarray] = Batcher(
            self._encode_lists, get_settings().embed_max_batch
        )

    def queries(self, texts: Sequence[str]) -> list[str]:
        """`texts` as queries are embedded: after the model's query prompt, if it has one."""
        return [self.query_prompt + text for text in texts]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as the model sees it: special tokens included, capped at
        `max_seq_length` (the rest is truncated)."""
        with self._lock:
            return self._count_tokens(texts)

    def _count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self.model.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_seq_length,
            return_attention_mask=False,
            return_token_type_ids=False,
            return_length=True,
        )
        return [int(n) for n in encoded["length"]]

    def _encode_lists(self, lists: list[Sequence[str]]) -> list[np.ndarray]:
        """`encode` of each list, computed in one call."""
        vectors = self.encode([text for texts in lists for text in texts])
        bounds = itertools.accumulate((len(texts) for texts in lists), initial=0)
        return [vectors[a:b] for a, b in itertools.pairwise(bounds)]

    def encode(self, texts: Sequence[str], *, token_budget: int | None = None) -> np.ndarray:
        """Embeddings of `texts`: float32, shape (len(texts), dim), L2-normalised, one row
        per text in input order. Texts longer than `max_seq_length` tokens are truncated.

        `token_budget` (padded tokens per batch) defaults to the settings' GPU or CPU one.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        settings = get_settings()
        if token_budget is None:
            on_gpu = self.device.startswith("cuda")
            token_budget = (
                settings.embed_token_budget_gpu if on_gpu else settings.embed_token_budget_cpu
            )

        with self._lock, ThreadPoolExecutor(1) as tokenizing, torch.inference_mode():
            lengths = self._count_tokens(texts)
            batches = token_batches(
                lengths, token_budget=token_budget, max_batch=settings.embed_max_batch
            )

            def features(k: int) -> Future[dict[str, Any]]:
                return tokenizing.submit(self._features, [texts[i] for i in batches[k]])

            outputs = []
            upcoming = features(0)
            for k in range(len(batches)):
                batch = upcoming.result()
                if k + 1 < len(batches):
                    upcoming = features(k + 1)  # tokenized while the model runs batch k
                with cpu_turn(self.device):
                    outputs.append(self.model(batch)["sentence_embedding"])
            # Unit length whatever the model's last module is (cosine == inner product),
            # and one copy back to the host at the end, so the GPU never waits for the CPU.
            embeddings = F.normalize(torch.cat(outputs).float(), p=2, dim=1).cpu().numpy()

        # Row j of `embeddings` belongs to text order[j]: put the rows back in input order.
        order = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches])
        result = np.empty_like(embeddings)
        result[order] = embeddings
        return result

    def _features(self, texts: list[str]) -> dict[str, Any]:
        """Model inputs for one batch, on the device: token ids truncated at
        `max_seq_length` and padded to the batch's longest text."""
        features: dict[str, Any] = self.model.preprocess(texts)
        on_gpu = self.device.startswith("cuda")
        for key, value in features.items():
            if isinstance(value, torch.Tensor):
                # Page-locked memory lets the copy to the GPU run asynchronously.
                value = value.pin_memory() if on_gpu else value
                features[key] = value.to(self.device, non_blocking=True)
        return features


def load_embedder(name: str, device: str = "", backend: str | None = None) -> Embedder:
    """The embedder for a model name or path, loaded once per process, device and backend.

    `backend` is a backend setting (default: `PGRAG_INFERENCE_BACKEND`), resolved on the
    device by `pick_backend`. Call it in the process that uses it (in a Celery worker: after
    the fork), never in a parent that forks, so CUDA and the tokenizer's threads start in
    the right process.
    """
    device = pick_device(device)
    setting = get_settings().inference_backend if backend is None else backend
    return _load_embedder(name, device, pick_backend(setting, device))


def collection_embedder(collection: Collection) -> Embedder:
    """The embedder for the vectors of `collection`: the backend it records (the setting's,
    for a collection with no vectors yet). An explicit backend setting that differs is
    refused: a query would not match the stored vectors, an ingest would mix them."""
    settings = get_settings()
    device = pick_device(settings.device)
    setting = settings.inference_backend.strip() or "auto"
    recorded = collection.embed_backend or setting
    backend = pick_backend(recorded, device)
    if setting != "auto" and pick_backend(setting, device) != backend:
        raise BackendMismatch(
            f"collection {collection.name!r} was embedded with the {backend} backend, and "
            f"PGRAG_INFERENCE_BACKEND={setting} would compute its vectors differently; unset "
            "it (auto uses the collection's backend) or ingest into a new collection"
        )
    embedder = _load_embedder(collection.model, device, backend)
    # With no vectors yet, what the setting resolves to runs (int8 asked of a model whose
    # int8 export misses the quality bar runs fp32), and the first vectors record it.
    if collection.embed_backend and embedder.backend != backend:
        raise BackendMismatch(
            f"collection {collection.name!r} was embedded with the {backend} backend, which "
            f"this machine cannot run (it computes {embedder.backend})"
        )
    return embedder


@cache
def _load_embedder(name: str, device: str, backend: str) -> Embedder:
    path = resolve_model(name)
    if is_onnx_model(path):  # a packaged int8 ONNX embedder: its de-quantized copy
        from pgrag.inference.onnx_torch import embedder_copy

        path = embedder_copy(name, path)
    model, backend = _load_model(path, device, backend)
    return Embedder(name, model, "cpu" if backend.startswith("openvino") else device, backend)


@cache
def _load_model(path: str, device: str, backend: str) -> tuple[SentenceTransformer, str]:
    """The model at `path` for `backend`, and the backend it runs (OpenVINO's precision is
    what the CPU can do)."""
    runtime, precision = backend.split("-")
    if runtime == "openvino":
        from pgrag.inference.openvino import use_openvino

        model = SentenceTransformer(path, device="cpu").eval()
        return model, f"openvino-{use_openvino(model, path, 'sentence_embedding', precision)}"
    model = SentenceTransformer(path, device=device)
    if precision == "fp16":
        # fp16 rather than bf16: it keeps 3 more mantissa bits, so the vectors stay closer
        # to the fp32 ones, while the activations of a small BERT model stay well inside
        # fp16's range; and every CUDA GPU runs it (bf16 needs Ampere or later).
        model.half()
    return model.eval(), backend
