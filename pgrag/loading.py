"""Bulk loading of chunks: binary COPY, then the lexical postings computed in SQL.

Everything here runs in the caller's transaction, so chunks, postings and the document
status change commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from pgrag.chunking import Chunk

COPY_CHUNKS = (
    "COPY pgrag.chunks (collection_id, document_id, ord, text, start_char, end_char,"
    " token_count, metadata, embedding) FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = ["int4", "int8", "int4", "text", "int4", "int4", "int4", "jsonb", "vector"]

# BM25 postings of the given documents' chunks: one row per lexeme with its frequency and
# the chunk length, from the collection's text search configuration over title + text.
INSERT_POSTINGS = """
INSERT INTO pgrag.postings (collection_id, lexeme, chunk_id, tf, chunk_len)
SELECT c.collection_id, t.lexeme, c.id, t.tf, sum(t.tf) OVER (PARTITION BY c.id)
FROM pgrag.chunks c
JOIN pgrag.documents d ON d.id = c.document_id
JOIN pgrag.collections col ON col.id = c.collection_id
CROSS JOIN LATERAL (
    SELECT u.lexeme, coalesce(array_length(u.positions, 1), 1) AS tf
    FROM unnest(to_tsvector(col.text_config, coalesce(d.title, '') || ' ' || c.text)) AS u
) AS t
WHERE c.document_id = ANY(%s)
"""


@dataclass(frozen=True)
class DocumentChunks:
    document_id: int
    metadata: dict[str, Any]
    chunks: Sequence[Chunk]


def replace_chunks(
    conn: psycopg.Connection,
    collection_id: int,
    documents: Sequence[DocumentChunks],
    embeddings: np.ndarray,
) -> int:
    """Replace the chunks of `documents` by the given ones; returns the chunk count.

    `embeddings` has one row per chunk, in the order of `documents` then `chunks`. Deleting
    first makes a redelivered task replace its own rows instead of duplicating them.
    """
    ids = [d.document_id for d in documents]
    conn.execute("DELETE FROM pgrag.chunks WHERE document_id = ANY(%s)", (ids,))
    row = 0
    with conn.cursor().copy(COPY_CHUNKS) as copy:
        copy.set_types(COPY_TYPES)
        for doc in documents:
            metadata = Jsonb(doc.metadata)
            for chunk in doc.chunks:
                copy.write_row(
                    (
                        collection_id,
                        doc.document_id,
                        chunk.ord,
                        chunk.text,
                        chunk.start,
                        chunk.end,
                        chunk.token_count,
                        metadata,
                        embeddings[row],
                    )
                )
                row += 1
    if row != len(embeddings):
        raise ValueError(f"{len(embeddings)} embeddings for {row} chunks")
    conn.execute(INSERT_POSTINGS, (ids,))
    return row
