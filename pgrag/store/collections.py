"""Collections: a named set of documents embedded with one model and chunked one way."""

from __future__ import annotations

import re
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import bindparam, select

from pgrag.runtime import db
from pgrag.runtime.errors import UserError
from pgrag.runtime.settings import get_settings
from pgrag.store.schema import Collection

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class UnknownCollection(UserError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"collection {name!r} does not exist: create it with "
            f"`pgrag collections create {name}` (or pass --create to `pgrag ingest`)"
        )


class InvalidCollection(UserError, ValueError):
    """A collection that cannot be made as asked (its name, its chunking)."""


class CollectionExists(InvalidCollection):
    pass


# Built once: a query worker looks its collection up for every question.
BY_NAME = select(Collection).where(Collection.name == bindparam("name"))


def get_collection(name: str) -> Collection:
    with db.session() as s:
        found = s.scalar(BY_NAME, {"name": name})
    if found is None:
        raise UnknownCollection(name)
    return found


def get_collection_by_id(collection_id: int) -> Collection:
    with db.session() as s:
        found = s.get(Collection, collection_id)
    if found is None:
        raise LookupError(f"collection id {collection_id} does not exist")
    return found


def list_collections() -> list[Collection]:
    with db.session() as s:
        return list(s.scalars(select(Collection).order_by(Collection.name)))


def create_collection(
    name: str,
    *,
    model: str | None = None,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    prepend_title: bool = True,
    text_config: str = "english",
) -> Collection:
    """Create a collection; the model is loaded once to learn its dimension and sequence length."""
    from pgrag.inference.embedding import load_embedder

    if not NAME.match(name):
        raise InvalidCollection(
            f"bad collection name {name!r}: use 1-64 letters, digits, '_', '.' or '-'"
        )
    settings = get_settings()
    model = model or settings.embed_model
    # Only its sizes are needed here: the collection's backend is chosen by its first vectors.
    embedder = load_embedder(model, settings.device, backend="torch")
    # Two special tokens ([CLS], [SEP]) always go around a chunk.
    longest = embedder.max_seq_length - 2
    chunk_size = min(chunk_size or settings.chunk_size, longest)
    overlap = settings.chunk_overlap if chunk_overlap is None else chunk_overlap
    if not 0 <= overlap < chunk_size:
        raise InvalidCollection(
            f"chunk overlap must be between 0 and the chunk size ({chunk_size})"
        )
    collection = Collection(
        name=name,
        model=model,
        dim=embedder.dim,
        chunk_size=chunk_size,
        chunk_overlap=overlap,
        prepend_title=prepend_title,
        text_config=text_config,
    )
    with db.session() as s:
        if s.scalar(select(Collection.id).where(Collection.name == name)) is not None:
            raise CollectionExists(f"collection {name!r} already exists")
        s.add(collection)
        s.commit()
    return collection


def set_fusion(name: str, fusion: dict[str, Any] | None) -> None:
    """Store how hybrid searches of the collection fuse their rankings: a
    `pgrag.query.fusion.Fusion` as JSON, or None for the default."""
    collection = get_collection(name)
    with db.connect() as conn:
        conn.execute(
            "UPDATE pgrag.collections SET fusion = %s WHERE id = %s",
            (Jsonb(fusion) if fusion else None, collection.id),
        )


def record_backend(collection: Collection, backend: str) -> Collection:
    """`collection` with `backend` recorded as that of its vectors, unless it records one
    already: the first stored vectors decide, once (concurrent embed tasks agree here)."""
    if collection.embed_backend is None:
        with db.connect() as conn:
            row = conn.execute(
                "UPDATE pgrag.collections SET embed_backend = coalesce(embed_backend, %s)"
                " WHERE id = %s RETURNING embed_backend",
                (backend, collection.id),
            ).fetchone()
        collection.embed_backend = row[0] if row else backend
    return collection


def drop_collection(name: str) -> None:
    collection = get_collection(name)
    with db.connect() as conn:
        # The partial HNSW index lives on the shared chunks table: drop it with the collection.
        conn.execute(f"DROP INDEX IF EXISTS pgrag.{collection.index_name}")
        # The lexical tables have no foreign key (a per-row check would slow every load down).
        for table in ("postings", "chunk_lexemes", "lexical_pending"):
            conn.execute(f"DELETE FROM pgrag.{table} WHERE collection_id = %s", (collection.id,))
        conn.execute("DELETE FROM pgrag.collections WHERE id = %s", (collection.id,))
