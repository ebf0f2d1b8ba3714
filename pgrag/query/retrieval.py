"""Retrieval: dense ANN and BM25 recall in SQL, fused into one ranking, optionally reranked.

    retrieve(collection, query, k=10, mode="hybrid", filters=["lang=en"], rerank=True)

- dense: the collection's partial HNSW index (see `indexing.py`), with `hnsw.ef_search` set
  from the number of rows wanted and `hnsw.iterative_scan = relaxed_order`, so that a
  selective metadata filter still gets its rows from the index;
- lexical: BM25 over the lexical index's posting rows (`lexical.py`);
- hybrid: the dense and lexical top-N, N = max(k, 50, the rerank depth), fused
  (`fusion.py`: by default a combination of each list's z-scores; a collection may set its
  own);
- rerank: a cross-encoder rescores the fused top `rerank_depth()` (PGRAG_RERANK_TOP_N, or
  the device's default: `pgrag.inference.rerank`).

Every passage keeps the score and the 1-based rank it got at each stage it went through
(`scores` / `ranks` keyed by "dense", "lexical", "fused", "rerank").
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from pgrag.query.fusion import Fusion, fuse
from pgrag.runtime import db
from pgrag.store import indexing
from pgrag.store.collections import get_collection
from pgrag.store.filters import Filter, parse_filters, where_sql
from pgrag.store.lexical import bm25_recall
from pgrag.store.schema import Collection

MODES = ("dense", "lexical", "hybrid")
# A hybrid search fuses at least this many chunks of each list: the depth its fusion was
# chosen and measured at (docs/quality.md), whatever number of them the reranker rescores.
HYBRID_DEPTH = 50


@dataclass
class Passage:
    chunk_id: int
    document_id: int
    external_id: str
    title: str | None
    text: str
    ord: int
    metadata: dict[str, Any]
    scores: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)  # 1-based rank at each stage


@dataclass
class Retrieval:
    passages: list[Passage]  # the top k, best first
    timings: dict[str, float]  # milliseconds: embed, recall, rerank (the stages that ran)
    # Questions in the model call that served this one, per stage (see `Batcher`).
    batches: dict[str, int] = field(default_factory=dict)
    query_vector: np.ndarray | None = None  # the query's embedding (dense and hybrid)
    # Each stage's own top k (dense, lexical, fused, rerank: those that ran), with every
    # score a passage got, for comparing the rankings side by side.
    stages: dict[str, list[Passage]] = field(default_factory=dict)


# The inner ORDER BY ... LIMIT is what the HNSW index serves; with an iterative scan the
# rows come in relaxed order, so the outer query sorts them again (pgvector's README).
DENSE = """
SELECT * FROM (
    SELECT c.id, c.document_id, d.external_id, d.title, c.text, c.ord, c.metadata,
           {vec} <=> %(q)s AS distance
    FROM pgrag.chunks c JOIN pgrag.documents d ON d.id = c.document_id
    WHERE c.collection_id = {cid}{where}
    ORDER BY {vec} <=> %(q)s
    LIMIT %(k)s
) hits ORDER BY distance
"""


def dense_sql(collection: Collection, filters: Sequence[Filter] = ()) -> str:
    """The dense statement (parameters q, k and the filters' own, see `dense_params`)."""
    # The collection id and dimension are integers from its row: inlining them lets the
    # planner match the partial expression index chunks_hnsw_<id>.
    where, _ = where_sql(filters, "c.metadata")
    return DENSE.format(
        vec=f"c.{indexing.vector_expr(collection)}", cid=int(collection.id), where=where
    )


def dense_params(
    query_vector: np.ndarray, k: int, filters: Sequence[Filter] = ()
) -> dict[str, Any]:
    return {"q": query_vector, "k": k, **where_sql(filters, "c.metadata")[1]}


def _passage(row: Sequence[Any], stage: str, score: float, rank: int) -> Passage:
    """A passage from a row: chunk id, document id, external id, title, text, ord, metadata."""
    chunk_id, document_id, external_id, title, text, ord_, metadata = row[:7]
    return Passage(
        chunk_id,
        document_id,
        external_id,
        title,
        text,
        ord_,
        metadata,
        scores={stage: score},
        ranks={stage: rank},
    )


def dense_recall(
    conn: psycopg.Connection,
    collection: Collection,
    query_vector: np.ndarray,
    k: int,
    filters: Sequence[Filter] = (),
) -> list[Passage]:
    """The k nearest chunks by cosine similarity (score "dense"), through the HNSW index."""
    indexing.set_search_params(conn, k)
    rows = conn.execute(dense_sql(collection, filters), dense_params(query_vector, k, filters))
    return [
        _passage(row, "dense", 1.0 - float(row[7]), rank)  # cosine similarity
        for rank, row in enumerate(rows.fetchall(), 1)
    ]


def lexical_recall(
    conn: psycopg.Connection,
    collection: Collection,
    query: str,
    k: int,
    filters: Sequence[Filter] = (),
) -> list[Passage]:
    """The k best chunks by BM25 (score "lexical")."""
    rows = bm25_recall(conn, collection.id, collection.text_config, query, k, filters)
    return [_passage(row, "lexical", float(row[7]), rank) for rank, row in enumerate(rows, 1)]


def rerank_passages(query: str, passages: list[Passage], top_n: int) -> tuple[list[Passage], int]:
    """The first `top_n` passages sorted by the cross-encoder's score (kept as "rerank"),
    then the rest in their order; and how many questions were reranked in that batch."""
    from pgrag.inference.rerank import rerank_batched

    head, tail = passages[:top_n], passages[top_n:]
    scores, batch = rerank_batched(query, head)
    for p, score in zip(head, scores, strict=True):
        p.scores["rerank"] = float(score)
    head.sort(key=lambda p: -p.scores["rerank"])
    for rank, p in enumerate(head, 1):
        p.ranks["rerank"] = rank
    return head + tail, batch


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = (time.perf_counter() - start) * 1000


def retrieve(
    collection: Collection,
    query: str,
    *,
    k: int = 10,
    mode: str = "hybrid",
    filters: Sequence[str] = (),
    rerank: bool = False,
    query_vector: np.ndarray | None = None,
    fusion: Fusion | None = None,
) -> Retrieval:
    """The k best passages of `collection` for `query`.

    mode: "dense", "lexical" or "hybrid" (both, fused). filters: expressions of
    `pgrag.store.filters` ("lang=en", "year>=2020"), ANDed. rerank: rescore the fused top
    `rerank_top_n` with the cross-encoder. query_vector: the query's embedding when the
    caller has it already (skips the embed stage). fusion: how a hybrid search fuses its
    lists; None: the collection's setting, else the default (`pgrag.query.fusion`).
    ValueError for an unknown mode, a bad k or a malformed filter, before any work.
    """
    if mode not in MODES:
        raise ValueError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    parsed = parse_filters(filters)
    top_n = 0
    if rerank:
        # Imported here: importing this module (the CLI and pgrag.remote do) loads no torch.
        from pgrag.inference.rerank import rerank_depth

        top_n = rerank_depth()
    depth = max(k, top_n, HYBRID_DEPTH if mode == "hybrid" else 0)
    timings: dict[str, float] = {}
    batches: dict[str, int] = {}

    if mode != "lexical" and query_vector is None:
        with _timed(timings, "embed"):
            query_vector, batches["embed"] = embed_query_batched(collection, query)
    lists: dict[str, list[Passage]] = {}
    with _timed(timings, "recall"), db.connect() as conn:
        if mode != "lexical":
            assert query_vector is not None
            lists["dense"] = dense_recall(conn, collection, query_vector, depth, parsed)
        if mode != "dense":
            lists["lexical"] = lexical_recall(conn, collection, query, depth, parsed)
    if mode == "hybrid":
        passages = fuse(lists, fusion or Fusion.from_json(collection.fusion), depth)
        lists["fused"] = passages
    else:
        passages = lists[mode]
    if rerank:
        with _timed(timings, "rerank"):
            passages, batches["rerank"] = rerank_passages(query, passages, top_n)
        lists["rerank"] = passages
    # A chunk both lists found is one passage after fusion: the one that holds every score.
    merged = {p.chunk_id: p for p in passages}
    stages = {name: [merged.get(p.chunk_id, p) for p in found[:k]] for name, found in lists.items()}
    return Retrieval(passages[:k], timings, batches, query_vector, stages)


def embed_query(collection: Collection, text: str) -> np.ndarray:
    return embed_query_batched(collection, text)[0]


def embed_query_batched(collection: Collection, text: str) -> tuple[np.ndarray, int]:
    """The query's embedding, computed in one forward pass with the queries that other
    threads embed at the same time; and how many went in that pass."""
    # Imported here: importing this module (the CLI and pgrag.remote do) loads no torch.
    from pgrag.inference.embedding import collection_embedder

    embedder = collection_embedder(collection)
    vectors, batch = embedder.together(embedder.queries([text]))
    return vectors[0], batch


def search(
    query: str,
    collection: str,
    k: int = 10,
    *,
    mode: str = "hybrid",
    filters: Sequence[str] = (),
    rerank: bool = False,
) -> list[Passage]:
    """`retrieve` by collection name, passages only."""
    return retrieve(
        get_collection(collection), query, k=k, mode=mode, filters=filters, rerank=rerank
    ).passages
