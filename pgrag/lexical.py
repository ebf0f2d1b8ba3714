"""Lexical recall: a BM25 inverted index in blocks, written by COPY and read in one statement.

Tables:

    pgrag.lexical_blocks (id, collection_id, chunk_ids[], total_len, lexemes[])  one row per block
    pgrag.postings (collection_id, lexeme, block_id, chunk_ids[], tfs[], chunk_lens[])

A block is the chunks of one embed task. The worker analyses them (`analyzer.py`: title and
chunk text, lower-cased, stemmed, stop words out) and writes one posting row per distinct
lexeme of the block, its posting list as parallel arrays: about a sixth of the rows of one
row per (lexeme, chunk), written by binary COPY with no per-row trigger or second index.
Statistics are sums over the rows, so they are exact at every commit and no job refreshes
them:

    N     = chunks in the collection's blocks          df(t) = entries of t's posting rows
    avgdl = total_len summed / N

Deleting chunks (re-ingest, --delete-missing, a failed document) rebuilds the blocks that
held them from their surviving chunks, under a row lock of each block, in the deleting
transaction.

A query is analysed the same way. A chunk matching any lexeme scores (OR semantics):

    score  = sum over query lexemes t of  qtf(t) * idf(t) * bm25_tf(t)
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))
    bm25_tf(t) = tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avgdl))

with k1 = 0.9, b = 0.4 (Anserini's defaults) and qtf the lexeme's count in the query. Each
query lexeme's rows are read through the primary key's (collection_id, lexeme) prefix; the
whole posting list of every query lexeme is scored (no early termination).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg

from pgrag.analyzer import Analyzer, analyzer
from pgrag.filters import Filter, where_sql

K1 = 0.9
B = 0.4

# One statement writes a block: PostgreSQL groups the chunks' (lexeme, tf) pairs into posting
# rows (C-speed, where Python would spend some 250 µs a chunk) and the block row lists the
# lexemes it wrote. Each chunk's pairs arrive as two space-separated strings, lexemes and
# counts: lexemes are runs of word characters, so a space never occurs inside one.
STORE_BLOCK = """
WITH pairs AS (
    SELECT c.chunk_id, c.len, p.lexeme, p.tf
    FROM unnest(%(ids)s::bigint[], %(lens)s::int[], %(lexemes)s::text[], %(tfs)s::text[])
         AS c(chunk_id, len, lexemes, tfs),
         unnest(string_to_array(c.lexemes, ' '), string_to_array(c.tfs, ' ')::int[])
         AS p(lexeme, tf)
), written AS (
    INSERT INTO pgrag.postings (collection_id, lexeme, block_id, chunk_ids, tfs, chunk_lens)
    SELECT %(c)s, lexeme, %(b)s, array_agg(chunk_id), array_agg(tf), array_agg(len)
    FROM pairs GROUP BY lexeme
    RETURNING lexeme
)
INSERT INTO pgrag.lexical_blocks (id, collection_id, chunk_ids, total_len, lexemes)
SELECT %(b)s, %(c)s, %(ids)s, %(total)s, coalesce(array_agg(lexeme), '{}') FROM written
ON CONFLICT (id) DO UPDATE SET
    chunk_ids = excluded.chunk_ids, total_len = excluded.total_len, lexemes = excluded.lexemes
"""


def analysed_text(title: str | None, text: str) -> str:
    """What a chunk is indexed by: its document's title, then its text."""
    return f"{title}\n{text}" if title else text


def new_block_id(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT nextval('pgrag.lexical_blocks_id_seq')").fetchone()
    return int(row[0])  # type: ignore[index]


def store_block(
    conn: psycopg.Connection,
    collection_id: int,
    block_id: int,
    chunk_ids: Sequence[int],
    lexemes: Sequence[Mapping[str, int]],
) -> None:
    """Write block `block_id`: the chunks `chunk_ids` with their lexeme counts (from
    `Analyzer.lexemes`), as its posting rows and its row in lexical_blocks; the block must
    have no posting rows yet."""
    lens = [sum(counts.values()) for counts in lexemes]
    params = {
        "c": collection_id,
        "b": block_id,
        "ids": list(chunk_ids),
        "lens": lens,
        "lexemes": [" ".join(counts) for counts in lexemes],
        "tfs": [" ".join(map(str, counts.values())) for counts in lexemes],
        "total": sum(lens),
    }
    conn.execute(STORE_BLOCK, params)


def _rebuild_block(conn: psycopg.Connection, block_id: int, lexer: Analyzer) -> None:
    """Re-index a block from the chunks of it that still exist (or drop it if none do)."""
    collection_id, chunk_ids, lexemes = conn.execute(
        "SELECT collection_id, chunk_ids, lexemes FROM pgrag.lexical_blocks WHERE id = %s",
        (block_id,),
    ).fetchone()  # type: ignore[misc]
    conn.execute(
        "DELETE FROM pgrag.postings WHERE collection_id = %s AND lexeme = ANY(%s)"
        " AND block_id = %s",
        (collection_id, lexemes, block_id),
    )
    survivors = conn.execute(
        "SELECT c.id, d.title, c.text FROM pgrag.chunks c"
        " JOIN pgrag.documents d ON d.id = c.document_id"
        " WHERE c.id = ANY(%s) ORDER BY c.id",
        (chunk_ids,),
    ).fetchall()
    if survivors:
        counts = [lexer.lexemes(analysed_text(title, text)) for _, title, text in survivors]
        store_block(conn, collection_id, block_id, [row[0] for row in survivors], counts)
    else:
        conn.execute("DELETE FROM pgrag.lexical_blocks WHERE id = %s", (block_id,))


def delete_chunks(conn: psycopg.Connection, text_config: str, document_ids: list[int]) -> None:
    """Delete the chunks of these documents and take them out of the lexical index.

    The blocks that held them are locked in id order, so two transactions deleting chunks of
    one block wait for each other and never deadlock.
    """
    if not document_ids:
        return
    blocks = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM pgrag.lexical_blocks WHERE id IN ("
            "  SELECT lexical_block FROM pgrag.chunks WHERE document_id = ANY(%s))"
            " ORDER BY id FOR UPDATE",
            (document_ids,),
        )
    ]
    conn.execute("DELETE FROM pgrag.chunks WHERE document_id = ANY(%s)", (document_ids,))
    lexer = analyzer(text_config)
    for block_id in blocks:
        _rebuild_block(conn, block_id, lexer)


def index_unindexed(conn: psycopg.Connection, block_size: int = 1024) -> None:
    """Index the chunks that have no lexical block yet (chunks stored before blocks
    existed), `block_size` chunks to a block."""
    collections = conn.execute("SELECT id, text_config::text FROM pgrag.collections").fetchall()
    for collection_id, config in collections:
        lexer = analyzer(config)
        while rows := conn.execute(
            "SELECT c.id, d.title, c.text FROM pgrag.chunks c"
            " JOIN pgrag.documents d ON d.id = c.document_id"
            " WHERE c.collection_id = %s AND c.lexical_block IS NULL ORDER BY c.id LIMIT %s",
            (collection_id, block_size),
        ).fetchall():
            block_id, ids = new_block_id(conn), [row[0] for row in rows]
            counts = [lexer.lexemes(analysed_text(title, text)) for _, title, text in rows]
            store_block(conn, collection_id, block_id, ids, counts)
            conn.execute(
                "UPDATE pgrag.chunks SET lexical_block = %s WHERE id = ANY(%s)", (block_id, ids)
            )


# ---------------------------------------------------------------------------- BM25

# {join} and {where} are empty, or a join of the chunks and the conditions from
# filters.where_sql, whose values are all parameters.
BM25 = """
WITH terms AS (
    SELECT * FROM unnest(%(lexemes)s::text[], %(qtfs)s::int[]) AS t(lexeme, qtf)
), stats AS (
    SELECT sum(cardinality(chunk_ids))::float8 AS n,
           sum(total_len)::float8 / nullif(sum(cardinality(chunk_ids)), 0) AS avgdl
    FROM pgrag.lexical_blocks WHERE collection_id = %(c)s
), lists AS MATERIALIZED (  -- read each posting row once
    SELECT p.lexeme, p.chunk_ids, p.tfs, p.chunk_lens
    FROM terms t
    JOIN pgrag.postings p ON p.collection_id = %(c)s AND p.lexeme = t.lexeme
), weights AS (
    SELECT l.lexeme, t.qtf * ln(1 + (s.n - l.df + 0.5) / (l.df + 0.5)) AS idf
    FROM (SELECT lexeme, sum(cardinality(chunk_ids)) AS df FROM lists GROUP BY lexeme) l
    JOIN terms t USING (lexeme), stats s
), scored AS (
    SELECT u.chunk_id,
           sum(w.idf * u.tf * (%(k1)s + 1)
               / (u.tf + %(k1)s * (1 - %(b)s + %(b)s * u.len / s.avgdl))) AS score
    FROM lists l
    JOIN weights w USING (lexeme)
    CROSS JOIN LATERAL unnest(l.chunk_ids, l.tfs, l.chunk_lens) AS u(chunk_id, tf, len)
    CROSS JOIN stats s
    GROUP BY u.chunk_id
), top AS (
    SELECT s.chunk_id, s.score FROM scored s {join}
    WHERE true {where}
    ORDER BY s.score DESC, s.chunk_id
    LIMIT %(n)s
)
SELECT c.id, c.document_id, d.external_id, d.title, c.text, c.ord, c.metadata, top.score
FROM top
JOIN pgrag.chunks c ON c.id = top.chunk_id
JOIN pgrag.documents d ON d.id = c.document_id
ORDER BY top.score DESC, top.chunk_id
"""


def bm25_sql(filters: Sequence[Filter] = ()) -> tuple[str, dict[str, Any]]:
    """The statement for `filters` and the filters' parameters."""
    where, params = where_sql(filters, "c.metadata")
    join = "JOIN pgrag.chunks c ON c.id = s.chunk_id" if filters else ""
    return BM25.format(join=join, where=where), params


def bm25_recall(
    conn: psycopg.Connection,
    collection_id: int,
    text_config: str,
    query: str,
    n: int,
    filters: Sequence[Filter] = (),
    *,
    k1: float = K1,
    b: float = B,
) -> list[tuple[Any, ...]]:
    """The n best chunks for `query` by BM25, best first: rows of (chunk id, document id,
    external id, title, text, ord, metadata, score). A query with no lexeme (only stop
    words, say) gives no rows."""
    terms = analyzer(text_config).lexemes(query)
    if not terms:
        return []
    sql, params = bm25_sql(filters)
    params |= {
        "c": collection_id,
        "lexemes": list(terms),
        "qtfs": list(terms.values()),
        "n": n,
        "k1": k1,
        "b": b,
    }
    return conn.execute(sql, params).fetchall()
