"""Step 2 of an ingest job: chunk, embed and load one batch of documents.

Chunks go in by binary COPY, and their lexeme counts by a second COPY (`lexical.stage`: the
job's last step indexes them), in the same transaction as the documents' status change:
they commit together or not at all.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from pgrag.inference.embedding import Embedder, collection_embedder
from pgrag.ingest import jobs
from pgrag.ingest.chunking import (
    Chunk,
    chunk_text,
    chunk_texts,
    embed_input,
    truncate_tokens,
)
from pgrag.ingest.pipeline import claim_finalize
from pgrag.runtime import db, queue, work
from pgrag.runtime.settings import get_settings
from pgrag.store import lexical
from pgrag.store.analyzer import analyzer
from pgrag.store.collections import get_collection_by_id, record_backend
from pgrag.store.schema import Collection

COPY_CHUNKS = (
    "COPY pgrag.chunks (id, collection_id, document_id, ord, text, start_char, end_char,"
    " token_count, metadata, embedding) FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = ["int8", "int4", "int8", "int4", "text", "int4", "int4", "int4", "jsonb", "vector"]


@dataclass(frozen=True)
class DocumentChunks:
    document_id: int
    title: str | None
    metadata: dict[str, Any]
    chunks: Sequence[Chunk]


def chunk_lexemes(
    collection: Collection, documents: Sequence[DocumentChunks]
) -> list[Counter[str]]:
    """The lexeme counts of every chunk (its title and text), in the order of `documents`
    then `chunks`."""
    lexer = analyzer(collection.text_config)
    return [
        lexer.lexemes(lexical.analysed_text(doc.title, chunk.text))
        for doc in documents
        for chunk in doc.chunks
    ]


def replace_chunks(
    conn: psycopg.Connection,
    collection: Collection,
    documents: Sequence[DocumentChunks],
    embeddings: np.ndarray,
    lexemes: Sequence[Mapping[str, int]],
) -> int:
    """Replace the chunks of `documents` by the given ones; returns the chunk count.

    `embeddings` and `lexemes` (from `chunk_lexemes`) have one row per chunk, in the order
    of `documents` then `chunks`. Deleting first makes a redelivered task replace its own
    rows instead of duplicating them. The chunks' ids are taken from the sequence before the
    COPY so that their lexeme rows can name them.
    """
    count = sum(len(doc.chunks) for doc in documents)
    if not count == len(embeddings) == len(lexemes):
        raise ValueError(f"{len(embeddings)} embeddings, {len(lexemes)} lexemes, {count} chunks")
    lexical.delete_chunks(conn, collection.id, [d.document_id for d in documents])
    if not count:
        return 0
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT nextval('pgrag.chunks_id_seq') FROM generate_series(1, %s)", (count,)
        )
    ]
    rows = zip(ids, ((d, c) for d in documents for c in d.chunks), embeddings, strict=True)
    with conn.cursor().copy(COPY_CHUNKS) as copy:
        copy.set_types(COPY_TYPES)
        metadata, last = None, None
        for chunk_id, (doc, chunk), embedding in rows:
            if doc is not last:
                metadata, last = Jsonb(doc.metadata), doc
            copy.write_row(
                (
                    chunk_id,
                    collection.id,
                    doc.document_id,
                    chunk.ord,
                    chunk.text,
                    chunk.start,
                    chunk.end,
                    chunk.token_count,
                    metadata,
                    embedding,
                )
            )
    lexical.stage(conn, collection.id, ids, lexemes)
    return count


def mark_embedded(conn: psycopg.Connection, documents: Sequence[DocumentChunks]) -> None:
    """Set the documents' status to embedded with their chunk counts, in one statement."""
    conn.execute(
        "UPDATE pgrag.documents d SET status = 'embedded', chunk_count = u.n, updated_at = now()"
        " FROM unnest(%s::bigint[], %s::int[]) AS u(id, n) WHERE d.id = u.id",
        ([doc.document_id for doc in documents], [len(doc.chunks) for doc in documents]),
    )


# The task's documents still pending for its job, each by primary key (locked in id order
# with FOR UPDATE). Written so because with `status = 'pending'` in a plain WHERE the planner
# may take the partial index of the job's pending documents and read all of them for every
# task, work that grows with the job (tests/test_ingest.py checks the plan).
PENDING_BY_ID = (
    " FROM unnest(%s::bigint[]) AS u(id) CROSS JOIN LATERAL"
    " (SELECT * FROM pgrag.documents WHERE id = u.id OFFSET 0{lock}) d"
    " WHERE d.job_id = %s AND d.status = 'pending' ORDER BY d.id"
)


@dataclass(frozen=True)
class PendingDocument:
    id: int
    external_id: str
    title: str | None
    text: str
    metadata: dict


def embed_inputs(
    collection: Collection, embedder: Embedder, title: str | None, chunks: list[Chunk]
) -> list[str]:
    """The texts to embed: each chunk, after the title when the collection wants it."""
    if not (collection.prepend_title and title):
        return [c.text for c in chunks]
    # The title gets what the chunk leaves of the model's sequence (2 special tokens).
    room = embedder.max_seq_length - 2 - collection.chunk_size
    short_title = truncate_tokens(title, embedder.tokenizer, room) or None
    return [embed_input(short_title, c.text) for c in chunks]


def _chunk_documents(
    collection: Collection, embedder: Embedder, docs: Sequence[PendingDocument]
) -> list[list[Chunk] | Exception]:
    """The chunks of each document, tokenized together; if that fails, one by one, so that
    one bad document fails alone."""
    options = {"chunk_size": collection.chunk_size, "overlap": collection.chunk_overlap}
    try:
        return list(chunk_texts([d.text for d in docs], embedder.tokenizer, **options))
    except Exception:  # find the document at fault
        chunked: list[list[Chunk] | Exception] = []
    for doc in docs:
        try:
            chunked.append(chunk_text(doc.text, embedder.tokenizer, **options))
        except Exception as e:  # one bad document must not sink the batch
            chunked.append(e)
    return chunked


def embed_documents(job_id: int, document_ids: list[int]) -> None:
    """Step 2: chunk, embed and load one batch of documents, in one transaction."""
    with db.connect() as conn:
        if jobs.job_state(conn, job_id) != "running":
            return
        job = jobs.get_job(job_id)
        collection = get_collection_by_id(job.collection_id)
        docs = [
            PendingDocument(*row)
            for row in conn.execute(
                "SELECT d.id, d.external_id, d.title, d.text, d.metadata"
                + PENDING_BY_ID.format(lock=""),
                (sorted(document_ids), job_id),
            )
        ]
        conn.commit()
        if not docs:
            return
        embedder = collection_embedder(collection)
        if collection.embed_backend is None:
            # Its first vectors: record their backend. Another task may have recorded its
            # own first; then that one is the collection's.
            embedder = collection_embedder(record_backend(collection, embedder.backend))
        loads, inputs, errors = [], [], []
        for doc, chunks in zip(docs, _chunk_documents(collection, embedder, docs), strict=True):
            if isinstance(chunks, Exception):
                errors.append((doc, f"chunking failed: {chunks}"))
                continue
            if not chunks:
                errors.append((doc, "no text to embed"))
                continue
            loads.append(DocumentChunks(doc.id, doc.title, doc.metadata, chunks))
            inputs.extend(embed_inputs(collection, embedder, doc.title, chunks))
        # The lexical analysis (Python) runs while the model embeds (the GIL is free then).
        with ThreadPoolExecutor(1) as pool:
            analysing = pool.submit(chunk_lexemes, collection, loads)
            embeddings = embedder.encode(inputs)
            lexemes = analysing.result()

        # Only documents still pending for this job are written: a duplicate delivery of
        # this task waits on the row locks here and then finds nothing left to do.
        locked = {
            row[0]
            for row in conn.execute(
                "SELECT d.id" + PENDING_BY_ID.format(lock=" FOR UPDATE"),
                ([d.id for d in docs], job_id),
            )
        }
        keep = [i for i, load in enumerate(loads) if load.document_id in locked]
        if len(keep) < len(loads):
            offsets = list(itertools.accumulate((len(d.chunks) for d in loads), initial=0))
            rows = [r for i in keep for r in range(offsets[i], offsets[i + 1])]
            loads, embeddings = [loads[i] for i in keep], embeddings[rows]
            lexemes = [lexemes[r] for r in rows]
        errors = [(doc, reason) for doc, reason in errors if doc.id in locked]
        chunk_count = replace_chunks(conn, collection, loads, embeddings, lexemes)
        mark_embedded(conn, loads)
        if errors:
            conn.execute(
                "UPDATE pgrag.documents SET status = 'failed', chunk_count = 0, updated_at = now()"
                " WHERE id = ANY(%s)",
                ([doc.id for doc, _ in errors],),
            )
            lexical.delete_chunks(conn, collection.id, [doc.id for doc, _ in errors])
        failed = jobs.record_errors(
            conn, job_id, [(doc.external_id, reason) for doc, reason in errors]
        )
        jobs.bump(conn, job_id, docs_done=len(loads), docs_failed=failed, chunks_done=chunk_count)
        filled = _blocks_filled(conn, job_id, chunk_count)
        blocks = [work.add(conn, queue.INDEX_BLOCK, [job_id], job_id) for _ in range(filled)]
        work.fence(conn)  # a worker that lost this batch's lease writes none of it
        conn.commit()
    for work_id in blocks:
        work.send(work_id, queue.INDEX_BLOCK, [job_id])
    claim_finalize(job_id)


def _blocks_filled(conn: psycopg.Connection, job_id: int, added: int) -> int:
    """How many multiples of the lexical block size the job's loaded chunks have just passed
    (its counter was bumped by `added` in this transaction, which holds its row)."""
    if not added:
        return 0
    size = get_settings().lexical_block_chunks
    row = conn.execute("SELECT chunks_done FROM pgrag.ingest_jobs WHERE id = %s", (job_id,))
    done = int(row.fetchone()[0])  # type: ignore[index]
    return done // size - (done - added) // size
