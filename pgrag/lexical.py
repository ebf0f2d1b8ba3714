"""Lexical recall: Okapi BM25 in one SQL statement over the collection's postings.

Tables (filled by `loading.py` as chunks load, statistics refreshed when a job ends):

    pgrag.postings (collection_id, lexeme, chunk_id, tf, chunk_len)   one row per lexeme and chunk
    pgrag.lexemes  (collection_id, lexeme, df)                         chunks holding the lexeme
    pgrag.collections.lexical_chunks (N), .lexical_avg_len (avgdl)

The query's lexemes come from `to_tsvector(collection.text_config, query)`, the same
function that made the postings, so stemming and stop words agree. A chunk matching any
lexeme scores (OR semantics):

    score  = sum over query lexemes t of  qtf(t) * idf(t) * bm25_tf(t)
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))
    bm25_tf(t) = tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avgdl))

with k1 = 0.9, b = 0.4 (Anserini's defaults) and qtf the lexeme's count in the query (a
repeated query word weighs more, as in Anserini's bag-of-words queries). Lexemes loaded since
the last refresh are missing from pgrag.lexemes: their df is counted from the postings then.
Before the first refresh (N = 0) N is the largest df seen and avgdl the mean length of the
matched chunks.

The postings of each query lexeme are read through the primary key's (collection_id, lexeme)
prefix; the whole posting list of every query lexeme is scored (no early termination), so
very common lexemes cost their full list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from pgrag.filters import Filter, where_sql

K1 = 0.9
B = 0.4

# {join} and {where} are empty, or a join of the chunks and the conditions from
# filters.where_sql, whose values are all parameters.
BM25 = """
WITH col AS (
    SELECT text_config, lexical_chunks, lexical_avg_len FROM pgrag.collections WHERE id = %(c)s
), terms AS (
    SELECT t.lexeme, coalesce(array_length(t.positions, 1), 1) AS qtf
    FROM col, unnest(to_tsvector(col.text_config, %(query)s)) AS t
), stats AS MATERIALIZED (  -- once: the df fallback must not run per reference
    SELECT t.lexeme, t.qtf,
           coalesce(l.df, (SELECT count(*) FROM pgrag.postings p
                           WHERE p.collection_id = %(c)s AND p.lexeme = t.lexeme)) AS df
    FROM terms t
    LEFT JOIN pgrag.lexemes l ON l.collection_id = %(c)s AND l.lexeme = t.lexeme
), weights AS (
    SELECT s.lexeme,
           s.qtf * ln(1 + (greatest(col.lexical_chunks, max(s.df) OVER ())::float8 - s.df + 0.5)
                          / (s.df + 0.5)) AS idf
    FROM stats s, col
), matched AS (
    SELECT p.chunk_id, p.tf, p.chunk_len, w.idf
    FROM weights w
    JOIN pgrag.postings p ON p.collection_id = %(c)s AND p.lexeme = w.lexeme
), avgdl AS (
    SELECT coalesce(nullif(col.lexical_avg_len, 0), (SELECT avg(chunk_len) FROM matched), 1) AS v
    FROM col
), scored AS (
    SELECT m.chunk_id,
           sum(m.idf * m.tf * (%(k1)s + 1)
               / (m.tf + %(k1)s * (1 - %(b)s + %(b)s * m.chunk_len / avgdl.v))) AS score
    FROM matched m, avgdl
    GROUP BY m.chunk_id
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
    query: str,
    n: int,
    filters: Sequence[Filter] = (),
    *,
    k1: float = K1,
    b: float = B,
) -> list[tuple[Any, ...]]:
    """The n best chunks for `query` by BM25, best first: rows of (chunk id, document id,
    external id, title, text, ord, metadata, score). A query with no indexed lexeme (only
    stop words, say) gives no rows."""
    sql, params = bm25_sql(filters)
    params |= {"c": collection_id, "query": query, "n": n, "k1": k1, "b": b}
    return conn.execute(sql, params).fetchall()
