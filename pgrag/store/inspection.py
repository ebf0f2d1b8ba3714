"""Reads of the SQL inspection views and functions (docs/sql.md), as Python rows.

The web console shows these: `collection_stats`, `embedding_health()`, `job_progress`,
`duplicates()`, `neighbors()` and a chunk with its document. Each function returns plain
dicts keyed by the view's columns, so what a page shows is what psql shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgrag.runtime import db


class UnknownChunk(LookupError):
    def __init__(self, chunk_id: int) -> None:
        super().__init__(f"chunk {chunk_id} does not exist")


def _rows(query: str, params: Sequence[Any] | dict[str, Any]) -> list[dict[str, Any]]:
    with db.connect() as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def collection_stats(names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`pgrag.collection_stats` with each collection's fusion and embedding backend, by name;
    `names`: only these collections (None: all)."""
    return _rows(
        "SELECT s.*, c.fusion, c.embed_backend FROM pgrag.collection_stats s"
        " JOIN pgrag.collections c ON c.id = s.collection_id"
        " WHERE %(names)s::text[] IS NULL OR s.collection = ANY(%(names)s)"
        " ORDER BY s.collection",
        {"names": None if names is None else list(names)},
    )


def embedding_health(collection: str) -> list[dict[str, Any]]:
    """The rows of `pgrag.embedding_health(collection)`: metric, value, ok, detail, chunk_ids."""
    return _rows("SELECT * FROM pgrag.embedding_health(%s)", (collection,))


def outlier_chunks(health: Sequence[dict[str, Any]]) -> list[int]:
    """The chunks that embedding_health's failing checks name (zero, NaN, unnormalised
    vectors, norm outliers: up to 10 each)."""
    return sorted({c for row in health if not row["ok"] for c in row["chunk_ids"] or ()})


def job_progress(
    names: Sequence[str] | None = None, limit: int = 50, job_id: int | None = None
) -> list[dict[str, Any]]:
    """The latest `limit` rows of `pgrag.job_progress`, newest first; `names`: only jobs of
    these collections (None: all); `job_id`: only that job."""
    return _rows(
        "SELECT * FROM pgrag.job_progress"
        " WHERE (%(names)s::text[] IS NULL OR collection = ANY(%(names)s))"
        " AND (%(job)s::bigint IS NULL OR job_id = %(job)s)"
        " ORDER BY job_id DESC LIMIT %(limit)s",
        {"names": None if names is None else list(names), "limit": limit, "job": job_id},
    )


def duplicate_pairs(
    collection: str, max_distance: float = 0.02, per_chunk: int = 2
) -> list[tuple[int, int, float]]:
    """`pgrag.duplicates()`: near-duplicate (chunk_a, chunk_b, distance) pairs."""
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT chunk_a, chunk_b, distance FROM pgrag.duplicates(%s, %s, %s)",
            (collection, max_distance, per_chunk),
        ).fetchall()
    return [(int(a), int(b), float(d)) for a, b, d in rows]


def chunk(chunk_id: int) -> dict[str, Any]:
    """A chunk with its collection's name and its document's external id, title and job."""
    rows = _rows(
        "SELECT c.id AS chunk_id, col.name AS collection, c.document_id, d.external_id,"
        " d.title, d.job_id, c.ord, c.token_count, c.metadata, c.text"
        " FROM pgrag.chunks c JOIN pgrag.documents d ON d.id = c.document_id"
        " JOIN pgrag.collections col ON col.id = c.collection_id WHERE c.id = %s",
        (chunk_id,),
    )
    if not rows:
        raise UnknownChunk(chunk_id)
    return rows[0]


def neighbors(chunk_id: int, k: int = 10) -> list[dict[str, Any]]:
    """`pgrag.neighbors(chunk_id, k)`: its k nearest chunks in its collection, nearest first."""
    try:
        return _rows("SELECT * FROM pgrag.neighbors(%s, %s)", (chunk_id, k))
    except psycopg.errors.NoDataFound:
        raise UnknownChunk(chunk_id) from None
