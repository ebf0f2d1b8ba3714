"""Recall in SQL: dense ANN over the collection's HNSW index."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from pgrag import db, indexing
from pgrag.collections import get_collection
from pgrag.embedding import load_embedder
from pgrag.schema import Collection
from pgrag.settings import get_settings


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


DENSE = """
SELECT * FROM (
    SELECT c.id, c.document_id, d.external_id, d.title, c.text, c.ord, c.metadata,
           {vec} <=> %(q)s AS distance
    FROM pgrag.chunks c JOIN pgrag.documents d ON d.id = c.document_id
    WHERE c.collection_id = {cid}
    ORDER BY {vec} <=> %(q)s
    LIMIT %(k)s
) hits ORDER BY distance
"""


def dense_sql(collection: Collection) -> str:
    # The collection id and dimension are integers from its row: inlining them lets the
    # planner match the partial expression index chunks_hnsw_<id>.
    return DENSE.format(vec=f"c.{indexing.vector_expr(collection)}", cid=int(collection.id))


def dense_recall(
    conn: psycopg.Connection, collection: Collection, query_vector: np.ndarray, k: int
) -> list[Passage]:
    indexing.set_search_params(conn, k)
    rows = conn.execute(dense_sql(collection), {"q": query_vector, "k": k}).fetchall()
    return [
        Passage(*row[:7], scores={"dense": 1.0 - float(row[7])})  # cosine similarity
        for row in rows
    ]


def embed_query(collection: Collection, text: str) -> np.ndarray:
    embedder = load_embedder(collection.model, get_settings().device)
    return embedder.encode([text])[0]


def search(query: str, collection: str, k: int = 10) -> list[Passage]:
    target = get_collection(collection)
    vector = embed_query(target, query)
    with db.connect() as conn:
        return dense_recall(conn, target, vector, k)
