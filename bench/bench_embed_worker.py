"""Bench only: a Celery worker whose embedder skips the model.

`bench/pipeline.py` starts it in place of `celery -A pgrag.workers.app worker ...` to measure the
pipeline's ceiling: everything real (tokenizer, chunking, COPY, lexical index, HNSW build)
except the model's forward pass, which a GPU makes nearly free. Each text gets a
deterministic unit vector derived from its CRC-32. Nothing in pgrag can reach this file.

    python bench/bench_embed_worker.py <celery worker arguments>
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pgrag.inference.embedding import Embedder


def bench_encode(self: Embedder, texts: Sequence[str], **_: Any) -> np.ndarray:
    """Unit vectors, one per text, the same for the same text."""
    out = np.empty((len(texts), self.dim), dtype=np.float32)
    for i, text in enumerate(texts):
        out[i] = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(self.dim)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


if __name__ == "__main__":
    from celery.__main__ import main

    Embedder.encode = bench_encode  # type: ignore[method-assign]
    sys.argv = ["celery", *sys.argv[1:]]
    main()
