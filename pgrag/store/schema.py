"""Typed SQLAlchemy models of the `pgrag` schema.

Migrations are the source of the schema; these classes mirror them for typed access to the
small tables, and a test checks that they agree. Bulk paths (documents, chunks, postings)
use psycopg and COPY directly (see `loading.py`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import BigInteger, DateTime, ForeignKey, LargeBinary, MetaData, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REGCONFIG
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

TERMINAL_JOB_STATES = ("done", "failed", "cancelled")


class Base(DeclarativeBase):
    metadata = MetaData(schema="pgrag")
    type_annotation_map = {datetime: DateTime(timezone=True)}  # noqa: RUF012 (SQLAlchemy API)


class Collection(Base):
    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    model: Mapped[str] = mapped_column(Text)
    dim: Mapped[int]
    chunk_size: Mapped[int]
    chunk_overlap: Mapped[int]
    prepend_title: Mapped[bool] = mapped_column(default=True)
    text_config: Mapped[str] = mapped_column(REGCONFIG, default="english")
    hnsw_m: Mapped[int] = mapped_column(default=16)
    hnsw_ef_construction: Mapped[int] = mapped_column(default=64)
    fusion: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # None: pgrag.query.fusion.DEFAULT
    # Runtime and precision of its vectors (pgrag.inference.weights.BACKENDS); None: no vectors yet.
    embed_backend: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default="now()")

    @property
    def index_name(self) -> str:
        return f"chunks_hnsw_{self.id}"


class IngestJob(Base):
    __tablename__ = "ingest_jobs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("pgrag.collections.id", ondelete="CASCADE")
    )
    source: Mapped[str] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    state: Mapped[str] = mapped_column(Text, default="queued")
    source_done: Mapped[bool] = mapped_column(default=False)
    docs_total: Mapped[int | None] = mapped_column(BigInteger)
    docs_read: Mapped[int] = mapped_column(BigInteger, default=0)
    docs_done: Mapped[int] = mapped_column(BigInteger, default=0)
    docs_failed: Mapped[int] = mapped_column(BigInteger, default=0)
    docs_skipped: Mapped[int] = mapped_column(BigInteger, default=0)
    docs_deleted: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks_done: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default="now()")
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(server_default="now()")

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_JOB_STATES

    @property
    def docs_processed(self) -> int:
        return self.docs_done + self.docs_failed + self.docs_skipped

    @property
    def chunks_per_s(self) -> float | None:
        """Chunks stored per second from the start to the end (or the last update so far);
        None before the job starts."""
        if self.started_at is None:
            return None
        end = self.finished_at or self.updated_at
        return self.chunks_done / max((end - self.started_at).total_seconds(), 1e-3)


class Document(Base):
    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    collection_id: Mapped[int] = mapped_column(
        ForeignKey("pgrag.collections.id", ondelete="CASCADE")
    )
    external_id: Mapped[str] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    content_hash: Mapped[bytes] = mapped_column(LargeBinary)
    text: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, default="pending")
    chunk_count: Mapped[int] = mapped_column(default=0)
    job_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("pgrag.ingest_jobs.id", ondelete="SET NULL")
    )
    seen_job_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(server_default="now()")
    updated_at: Mapped[datetime] = mapped_column(server_default="now()")


class Chunk(Base):
    __tablename__ = "chunks"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    collection_id: Mapped[int]
    document_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("pgrag.documents.id", ondelete="CASCADE")
    )
    ord: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    start_char: Mapped[int]
    end_char: Mapped[int]
    token_count: Mapped[int]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    embedding: Mapped[Any] = mapped_column(Vector())


class IngestError(Base):
    __tablename__ = "ingest_errors"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("pgrag.ingest_jobs.id", ondelete="CASCADE")
    )
    ref: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default="now()")


class Query(Base):
    __tablename__ = "queries"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, server_default="gen_random_uuid()")
    collection: Mapped[str] = mapped_column(Text)
    collection_id: Mapped[int | None] = mapped_column(
        ForeignKey("pgrag.collections.id", ondelete="SET NULL")
    )
    question: Mapped[str] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    state: Mapped[str] = mapped_column(Text, default="queued")
    question_embedding: Mapped[Any | None] = mapped_column(Vector())
    answer: Mapped[str | None] = mapped_column(Text)
    short_answer: Mapped[str | None] = mapped_column(Text)
    citations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    passages: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    timings: Mapped[dict[str, float] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default="now()")
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    api_key_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("pgrag.api_keys.id", ondelete="SET NULL")
    )


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(Text, unique=True)
    hash: Mapped[bytes] = mapped_column(LargeBinary)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    collections: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = mapped_column(server_default="now()")
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def sees(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections
