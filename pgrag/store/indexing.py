"""The per-collection HNSW index and the search-time index settings.

All collections share `pgrag.chunks`, whose `embedding` column has no fixed dimension, so each
collection gets a partial expression index on `embedding::vector(dim)`:

    CREATE INDEX chunks_hnsw_<id> ON pgrag.chunks
        USING hnsw ((embedding::vector(<dim>)) vector_cosine_ops) WHERE collection_id = <id>

A query uses it when it orders by the same expression and filters on the same collection id.
"""

from __future__ import annotations

import os

import psycopg

from pgrag.runtime.settings import get_settings
from pgrag.store.schema import Collection


def vector_expr(collection: Collection) -> str:
    """The indexed expression; `dim` is an integer from the collection row, never user text."""
    return f"embedding::vector({int(collection.dim)})"


def index_state(conn: psycopg.Connection, collection: Collection) -> str | None:
    """'valid', 'invalid' (a concurrent build that died) or None when there is no index."""
    row = conn.execute(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'pgrag' AND c.relname = %s",
        (collection.index_name,),
    ).fetchone()
    if row is None:
        return None
    return "valid" if row[0] else "invalid"


def build_index(conn: psycopg.Connection, collection: Collection) -> bool:
    """Build the collection's HNSW index if it is missing; returns True when it built one.

    CONCURRENTLY keeps other collections' loads going while this one builds. `conn` must be
    in autocommit mode.
    """
    state = index_state(conn, collection)
    if state == "valid":
        return False
    if state == "invalid":
        conn.execute(f"DROP INDEX CONCURRENTLY pgrag.{collection.index_name}")
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
    conn.execute(
        "SELECT set_config('maintenance_work_mem', %s, false)", (get_settings().index_build_memory,)
    )
    conn.execute(
        f"CREATE INDEX CONCURRENTLY {collection.index_name} ON pgrag.chunks"
        f" USING hnsw (({vector_expr(collection)}) vector_cosine_ops)"
        f" WITH (m = {int(collection.hnsw_m)},"
        f" ef_construction = {int(collection.hnsw_ef_construction)})"
        f" WHERE collection_id = {int(collection.id)}"
    )
    return True


def ef_search_for(k: int) -> int:
    """Candidate list size for k results: PGRAG_HNSW_EF_SEARCH, or 2k when that is larger
    (pgvector's default 40 is too small past k = 20), at most pgvector's limit of 1000."""
    return min(1000, max(get_settings().hnsw_ef_search, 2 * k))


def set_search_params(conn: psycopg.Connection, k: int) -> None:
    """Per-transaction index settings so that filtered searches still return k rows."""
    conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef_search_for(k)),))
    conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
