"""Lexical recall: a BM25 inverted index in blocks, built set-based by PostgreSQL and read in
one statement.

Tables:

    pgrag.chunk_lexemes (chunk_id, collection_id, lexemes, tfs, len)   forward index
    pgrag.lexical_pending (collection_id, chunk_id)                    chunks not yet indexed
    pgrag.lexical_blocks (id, collection_id, chunk_ids[], total_len)   one row per block
    pgrag.postings (collection_id, lexeme, block_id, chunk_ids[], tfs[], chunk_lens[])

An embed task analyses its chunks (`analyzer.py`: title and chunk text, lower-cased, stemmed,
stop words out) while the model runs, and COPYs each chunk's lexeme counts (its forward
index row) and a pending row beside the chunk rows: the load writes no posting row.
`index_pending` turns the collection's pending chunks into blocks of up to
`lexical_block_chunks` (a setting, 4096) chunks, one statement each: PostgreSQL groups their
(lexeme, tf) pairs into one posting row per distinct lexeme of the block, its posting list as
parallel arrays. While a job loads, the ingest worker builds each whole block as soon as its
chunks are in (`build_block(..., whole=True)`); the job's last step builds the rest. Big blocks
make few rows (a common lexeme has one row per block, not one per chunk), which keeps a bulk
load cheap; a small job makes a small block, in time proportional to its chunks, as the
HNSW index does.

Statistics are sums over the blocks, exact at every commit, over the indexed chunks only:

    N     = chunks in the collection's blocks          df(t) = entries of t's posting rows
    avgdl = total_len summed / N

Deleting chunks (re-ingest, --delete-missing, a failed document) drops their pending rows, or
takes them out of the posting rows of their lexemes (read from the forward index) in place,
under a row lock of each block: work proportional to what is deleted. Both an index build and
a delete take the pending rows first, in chunk order, so they never miss each other.

A query is analysed the same way. A chunk matching any lexeme scores (OR semantics):

    score  = sum over query lexemes t of  qtf(t) * idf(t) * bm25_tf(t)
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))
    bm25_tf(t) = tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avgdl))

with k1 = 0.9, b = 0.4 (Anserini's defaults) and qtf the lexeme's count in the query. Each
query lexeme's rows are read through the primary key's (collection_id, lexeme) prefix, and
its df from the same index alone (df is a column of the key). The long lists of common
lexemes are not read when the rarer ones decide the top n (MaxScore): a chunk's score from
them is at most qtf * idf * (k1 + 1) each. The rarest lexemes' short lists are scored first
(the probe), and their n best chunks, made whole from their forward rows, give a floor that
the top n reach; the longest lists that together add well under that floor are skipped;
the rest are scored in full; and only the chunks that could still clear the bar get the
skipped lexemes' terms. One statement does it all (BM25 below).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pgrag.runtime.settings import get_settings
from pgrag.store.analyzer import analyzer
from pgrag.store.filters import Filter, where_sql

K1 = 0.9
B = 0.4

# Text format: lexemes are runs of word characters (no tab, newline, backslash or space), so
# a row needs no escaping, and a chunk's pairs travel as two space-separated strings.
COPY_LEXEMES = "COPY pgrag.chunk_lexemes (chunk_id, collection_id, lexemes, tfs, len) FROM STDIN"
COPY_PENDING = "COPY pgrag.lexical_pending (collection_id, chunk_id) FROM STDIN"

# One block of the collection's oldest pending chunks, which it takes out of lexical_pending;
# none unless at least %(least)s are pending.
BUILD_BLOCK = """
WITH ids AS MATERIALIZED (  -- chosen and locked once: a plan must not re-run the LIMIT per row
    SELECT chunk_id FROM pgrag.lexical_pending WHERE collection_id = %(c)s
    ORDER BY chunk_id LIMIT %(n)s FOR UPDATE
), picked AS MATERIALIZED (
    DELETE FROM pgrag.lexical_pending p USING ids
    WHERE p.collection_id = %(c)s AND p.chunk_id = ids.chunk_id
      AND (SELECT count(*) FROM ids) >= %(least)s
    RETURNING p.chunk_id
), chunks AS MATERIALIZED (  -- each forward row by its key, per picked chunk (OFFSET 0 keeps
    -- it so): statistics taken while the table was nearly empty made a plain join scan the
    -- whole table once per picked chunk
    SELECT f.chunk_id, f.lexemes, f.tfs, f.len
    FROM picked CROSS JOIN LATERAL (
        SELECT * FROM pgrag.chunk_lexemes WHERE chunk_id = picked.chunk_id OFFSET 0
    ) f
), written AS (
    INSERT INTO pgrag.postings (collection_id, lexeme, block_id, chunk_ids, tfs, chunk_lens, df)
    SELECT %(c)s, p.lexeme, %(b)s, array_agg(c.chunk_id), array_agg(p.tf), array_agg(c.len),
           count(*)
    FROM chunks c,
         unnest(string_to_array(c.lexemes, ' '), string_to_array(c.tfs, ' ')::int[])
         AS p(lexeme, tf)
    GROUP BY p.lexeme
)
INSERT INTO pgrag.lexical_blocks (id, collection_id, chunk_ids, total_len, chunks)
SELECT %(b)s, %(c)s, array_agg(chunk_id ORDER BY chunk_id), sum(len), count(*) FROM chunks
HAVING count(*) > 0
RETURNING chunks
"""

# Take deleted chunks out of the posting rows of their (block, lexeme) pairs: each row keeps
# the rest of its entries, or goes when none is left; then out of their blocks. The deleted
# ids are matched as a hashed set (NOT IN a subquery), not an array scanned per entry.
UNPOST = """
WITH gone AS (
    SELECT unnest(%(ids)s::bigint[]) AS id
), targets AS MATERIALIZED (
    SELECT p.lexeme, p.block_id, p.chunk_ids, p.tfs, p.chunk_lens
    FROM pgrag.postings p
    JOIN unnest(%(blocks)s::bigint[], %(lexemes)s::text[]) AS t(block_id, lexeme)
      ON p.collection_id = %(c)s AND p.lexeme = t.lexeme AND p.block_id = t.block_id
), kept AS MATERIALIZED (
    SELECT t.lexeme, t.block_id,
           array_agg(u.id) AS ids, array_agg(u.tf) AS tfs, array_agg(u.len) AS lens
    FROM targets t, unnest(t.chunk_ids, t.tfs, t.chunk_lens) AS u(id, tf, len)
    WHERE u.id NOT IN (SELECT id FROM gone)
    GROUP BY t.lexeme, t.block_id
), updated AS (
    UPDATE pgrag.postings p
    SET chunk_ids = k.ids, tfs = k.tfs, chunk_lens = k.lens, df = cardinality(k.ids)
    FROM kept k
    WHERE p.collection_id = %(c)s AND p.lexeme = k.lexeme AND p.block_id = k.block_id
)
DELETE FROM pgrag.postings p USING targets t
WHERE p.collection_id = %(c)s AND p.lexeme = t.lexeme AND p.block_id = t.block_id
  AND NOT EXISTS (SELECT FROM kept k WHERE k.lexeme = t.lexeme AND k.block_id = t.block_id)
"""
SHRINK_BLOCKS = """
UPDATE pgrag.lexical_blocks b
SET chunk_ids = array(
        SELECT x FROM unnest(b.chunk_ids) AS x
        WHERE x NOT IN (SELECT unnest(%(ids)s::bigint[]))),
    total_len = b.total_len - d.len, chunks = b.chunks - d.n
FROM unnest(%(blocks)s::bigint[], %(lens)s::bigint[], %(counts)s::int[]) AS d(block_id, len, n)
WHERE b.id = d.block_id
"""


def analysed_text(title: str | None, text: str) -> str:
    """What a chunk is indexed by: its document's title, then its text."""
    return f"{title}\n{text}" if title else text


def stage(
    conn: psycopg.Connection,
    collection_id: int,
    chunk_ids: Sequence[int],
    lexemes: Sequence[Mapping[str, int]],
) -> None:
    """Store the chunks' lexeme counts (`Analyzer.lexemes`) and queue them for the index."""
    c = int(collection_id)
    with conn.cursor().copy(COPY_LEXEMES) as copy:
        copy.write(
            "".join(
                f"{int(chunk_id)}\t{c}\t{' '.join(counts)}"
                f"\t{' '.join(map(str, counts.values()))}\t{sum(counts.values())}\n"
                for chunk_id, counts in zip(chunk_ids, lexemes, strict=True)
            )
        )
    with conn.cursor().copy(COPY_PENDING) as copy:
        copy.write("".join(f"{c}\t{int(chunk_id)}\n" for chunk_id in chunk_ids))


def build_block(conn: psycopg.Connection, collection_id: int, whole: bool = False) -> int:
    """Index up to a block of the collection's pending chunks as one new block (only a whole
    one if `whole`); returns how many (0: none, or too few, were pending)."""
    size = get_settings().lexical_block_chunks
    block_id = conn.execute("SELECT nextval('pgrag.lexical_blocks_id_seq')").fetchone()[0]  # type: ignore[index]
    params = {"c": collection_id, "b": block_id, "n": size, "least": size if whole else 1}
    row = conn.execute(BUILD_BLOCK, params).fetchone()
    return row[0] if row else 0


def index_pending(conn: psycopg.Connection, collection_id: int) -> int:
    """Index all of the collection's pending chunks, committing block by block (a build cut
    short keeps what it did); returns the chunks indexed."""
    indexed = 0
    while built := build_block(conn, collection_id):
        conn.commit()
        indexed += built
    return indexed


def delete_chunks(conn: psycopg.Connection, collection_id: int, document_ids: list[int]) -> None:
    """Delete the chunks of these documents (of one collection) and take them out of the
    lexical index."""
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM pgrag.chunks WHERE document_id = ANY(%s) ORDER BY id",
            (document_ids,),
        )
    ]
    if not ids:
        return
    c = {"c": collection_id, "ids": ids}
    # Pending rows first: this waits for an index build that holds them, after which they
    # are gone and the chunks are in a block that the statements below see.
    conn.execute(
        "DELETE FROM pgrag.lexical_pending WHERE collection_id = %(c)s AND chunk_id = ANY(%(ids)s)",
        c,
    )
    block_of: dict[int, int] = dict(
        conn.execute(
            "SELECT x, b.id FROM pgrag.lexical_blocks b, unnest(b.chunk_ids) AS x"
            " WHERE b.id IN (SELECT id FROM pgrag.lexical_blocks WHERE collection_id = %(c)s"
            "   AND chunk_ids && %(ids)s::bigint[] ORDER BY id FOR UPDATE)"
            " AND x = ANY(%(ids)s)",
            c,
        ).fetchall()
    )
    forward = conn.execute(
        "DELETE FROM pgrag.chunk_lexemes WHERE chunk_id = ANY(%(ids)s)"
        " RETURNING chunk_id, lexemes, len",
        c,
    ).fetchall()
    conn.execute("DELETE FROM pgrag.chunks WHERE id = ANY(%(ids)s)", c)
    pairs: set[tuple[int, str]] = set()
    lens: dict[int, int] = defaultdict(int)
    counts: dict[int, int] = defaultdict(int)
    for chunk_id, lexemes, length in forward:
        if (block := block_of.get(chunk_id)) is not None:
            pairs.update((block, lexeme) for lexeme in lexemes.split())
            lens[block] += length
            counts[block] += 1
    if not lens:
        return
    blocks, lexemes = (list(x) for x in zip(*sorted(pairs), strict=True)) if pairs else ([], [])
    conn.execute(UNPOST, {**c, "blocks": blocks, "lexemes": lexemes})
    conn.execute(
        SHRINK_BLOCKS,
        {
            "ids": ids,
            "blocks": list(lens),
            "lens": list(lens.values()),
            "counts": [counts[block] for block in lens],
        },
    )
    conn.execute(
        "DELETE FROM pgrag.lexical_blocks WHERE id = ANY(%s) AND chunk_ids = '{}'", (list(lens),)
    )


# ---------------------------------------------------------------------------- BM25

# N and avgdl, and the query lexemes' document frequencies: small columns, no list read.
STATS = """
SELECT coalesce(sum(chunks), 0)::float8, sum(total_len)::float8 / nullif(sum(chunks), 0)
FROM pgrag.lexical_blocks WHERE collection_id = %(c)s
"""
DFS = """
SELECT lexeme, sum(df)::float8 FROM pgrag.postings
WHERE collection_id = %(c)s AND lexeme = ANY(%(lexemes)s) GROUP BY lexeme
"""

TF = "{tf} * (%(k1)s + 1) / ({tf} + %(k1)s * (1 - %(b)s + %(b)s * {len} / %(avgdl)s))"
# A chunk's (lexeme, tf) pairs, from its forward row f.
FORWARD = (
    "unnest(string_to_array(f.lexemes, ' '), string_to_array(f.tfs, ' ')::int[]) AS u(lexeme, tf)"
)
# The entries (chunk_id, tf, len) of the posting lists of the lexemes t.
POSTINGS = """
    JOIN pgrag.postings p ON p.collection_id = %(c)s AND p.lexeme = t.lexeme
    CROSS JOIN LATERAL unnest(p.chunk_ids, p.tfs, p.chunk_lens) AS u(chunk_id, tf, len)"""

# A posting list shorter than this is scored in full: skipping it saves little.
LONG_LIST = 5000
# The probe: the rarest lexemes' lists, up to this many entries, set the floor.
PROBE_ENTRIES = 20_000
# The most of the floor that skipped lists may add (below 1, so that a chunk holding only
# skipped lexemes is never in the top n): more skips more lists, but lets more candidates
# through. What a chunk's forward row costs, in posting entries scored: candidates get the
# skipped lexemes' terms from their forward rows while that is cheaper than the skipped lists.
# All three measured on a million SciFact chunks and 200 queries (bench/pipeline.py).
REST_SHARE = 0.8
FORWARD_COST = 5
# A statement's hash tables (a chunk's partial score each) stay in memory up to this, instead
# of PostgreSQL's default 4MB: at a million chunks a query's common lexemes reach 100,000
# chunks, and a spilled table cost about a tenth of the time.
WORK_MEM = "64MB"

# The n-th best whole score of the n best chunks of {partial} (chunk_id, score), made whole
# from their forward rows with the terms of {others} (lexeme, weight); 0 when fewer than n.
NTH_WHOLE = f"""
    SELECT CASE WHEN count(*) = %(n)s THEN min(score) ELSE 0 END AS score
    FROM (
        SELECT x.chunk_id,
               min(x.score) + coalesce(sum(t.weight * {TF.format(tf="u.tf", len="f.len")}), 0)
               AS score
        FROM (SELECT * FROM {{partial}} x ORDER BY score DESC LIMIT %(n)s) x
        JOIN pgrag.chunk_lexemes f ON f.chunk_id = x.chunk_id
        CROSS JOIN LATERAL {FORWARD}
        LEFT JOIN {{others}} t USING (lexeme)
        GROUP BY x.chunk_id
    ) whole"""

# The query's lexemes are `terms`, rarest first. The probe lexemes (the first %(probe)s: the
# rarest, with short lists) are scored first; the n best chunks by them, made whole from their
# forward rows, give the floor, a score that n chunks reach. Then MaxScore: the longest lists
# (of common lexemes) that together add at most REST_SHARE of the floor are the rest, skipped;
# their terms' rest_bound, given by the caller, is the most that they and every longer list
# can add to a chunk's score. Every other list is scored in full (essential), and the rest only
# for the candidates: chunks whose partial score plus the rest's bound reaches the bar, the
# greater of the floor and the n-th best whole score of the n best partial ones. A chunk
# holding only skipped lexemes scores at most that bound, below the floor: never in the top n.
# A few candidates get the rest's terms from their forward rows (a substring test first: most
# hold none); many, from the rest's posting lists, kept to the candidates (one branch runs,
# the other's condition is false). Only the candidates holding a skipped lexeme are summed
# again; every other one keeps its partial score, so of those only the best few are looked at
# (`keep`: n, or NULL, which keeps all, when filters decide later which chunks count). {join}
# and {where} are empty, or a join of the chunks and the conditions from filters.where_sql,
# whose values are all parameters.
BM25 = f"""
WITH terms AS MATERIALIZED (
    SELECT * FROM unnest(%(lexemes)s::text[], %(weights)s::float8[], %(dfs)s::float8[],
                         %(rest_bounds)s::float8[])
    WITH ORDINALITY AS t(lexeme, weight, df, rest_bound, ord)
), probed AS MATERIALIZED (
    SELECT u.chunk_id, sum(t.weight * {TF.format(tf="u.tf", len="u.len")}) AS score
    FROM terms t{POSTINGS}
    WHERE t.ord <= %(probe)s
    GROUP BY u.chunk_id
), floor AS (
    {NTH_WHOLE.format(partial="probed", others="(SELECT * FROM terms WHERE ord > %(probe)s)")}
), rest AS MATERIALIZED (
    SELECT t.lexeme, t.weight, t.df, t.rest_bound FROM terms t, floor
    WHERE t.rest_bound <= {REST_SHARE} * floor.score
), bound AS (
    SELECT coalesce(max(rest_bound), 0) AS score, coalesce(sum(df), 0) AS entries FROM rest
), essential AS MATERIALIZED (
    SELECT chunk_id, sum(score) AS score
    FROM (
        SELECT chunk_id, score FROM probed
        UNION ALL
        SELECT u.chunk_id, t.weight * {TF.format(tf="u.tf", len="u.len")}
        FROM terms t{POSTINGS}
        WHERE t.ord > %(probe)s AND t.lexeme NOT IN (SELECT lexeme FROM rest)
    ) parts
    GROUP BY chunk_id
), leaders AS (  -- only when lists are skipped: else every chunk is a candidate anyway
    {
    NTH_WHOLE.format(
        partial="(SELECT * FROM essential WHERE (SELECT score FROM bound) > 0)", others="rest"
    )
}
), bar AS (  -- n chunks score at least this much
    SELECT greatest((SELECT score FROM floor), (SELECT score FROM leaders)) AS score
), candidates AS MATERIALIZED (
    SELECT e.chunk_id, e.score FROM essential e, bar, bound
    WHERE bound.score = 0 OR e.score + bound.score >= bar.score
), way AS (  -- counted once, for both branches
    SELECT (SELECT count(*) FROM candidates) <= entries / {FORWARD_COST} AS forward FROM bound
), completed AS MATERIALIZED (
    SELECT chunk_id, min(score) + sum(part) AS score
    FROM (
        SELECT x.chunk_id, x.score, t.weight * {TF.format(tf="v.tf", len="f.len")} AS part
        FROM (SELECT * FROM candidates ORDER BY chunk_id) x  -- neighbours share pages
        JOIN pgrag.chunk_lexemes f ON f.chunk_id = x.chunk_id
        JOIN rest t ON strpos(' ' || f.lexemes || ' ', ' ' || t.lexeme || ' ') > 0
        CROSS JOIN LATERAL (
            SELECT (string_to_array(f.tfs, ' '))[
                array_position(string_to_array(f.lexemes, ' '), t.lexeme)]::int AS tf
            OFFSET 0
        ) v
        WHERE (SELECT forward FROM way)
        UNION ALL
        SELECT x.chunk_id, x.score, t.weight * {TF.format(tf="u.tf", len="u.len")}
        FROM rest t{POSTINGS}
        JOIN candidates x ON x.chunk_id = u.chunk_id
        WHERE NOT (SELECT forward FROM way)
    ) parts
    GROUP BY chunk_id
), scored AS (  -- a completed candidate's partial score is below its whole one: max keeps it
    SELECT chunk_id, max(score) AS score
    FROM (
        SELECT chunk_id, score FROM completed
        UNION ALL
        (SELECT chunk_id, score FROM candidates
         ORDER BY round(score * 1e9) DESC, chunk_id
         LIMIT %(keep)s + (SELECT count(*) FROM completed))
    ) both_kinds
    GROUP BY chunk_id
), top AS (
    SELECT s.chunk_id, s.score FROM scored s {{join}}
    WHERE true {{where}}
    ORDER BY round(s.score * 1e9) DESC, s.chunk_id  -- sums in another order still tie
    LIMIT %(n)s
)
SELECT c.id, c.document_id, d.external_id, d.title, c.text, c.ord, c.metadata, top.score
FROM top
JOIN pgrag.chunks c ON c.id = top.chunk_id
JOIN pgrag.documents d ON d.id = c.document_id
ORDER BY round(top.score * 1e9) DESC, top.chunk_id
"""


@dataclass(frozen=True)
class Term:
    lexeme: str
    df: float
    weight: float  # qtf * idf: the most it adds to a score is weight * (k1 + 1)


def probe_size(terms: Sequence[Term], n: int) -> int:
    """How many of `terms` (rarest first) the probe scores: the rarest, while their lists
    hold at most PROBE_ENTRIES entries, and at least one, and at least n entries if it can."""
    size, entries = 0, 0.0
    for t in terms:
        if size and entries + t.df > PROBE_ENTRIES and entries >= n:
            break
        size, entries = size + 1, entries + t.df
    return size


def rest_bounds(
    terms: Sequence[Term], n: int, probe: int, long_list: int = LONG_LIST, k1: float = K1
) -> list[float | None]:
    """For each of `terms` (rarest first), the most that it and every longer list can add to
    a score if they are skipped; None where a list is never skipped: short (under `long_list`
    entries), probed, or needed for the lists scored to hold n entries."""
    bounds: list[float | None] = [None] * len(terms)
    added = 0.0
    for i in range(len(terms) - 1, probe - 1, -1):  # longest list first
        if terms[i].df < long_list or sum(t.df for t in terms[:i]) < n:
            break
        added += terms[i].weight * (k1 + 1)
        bounds[i] = added
    return bounds


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
    long_list: int = LONG_LIST,
) -> list[tuple[Any, ...]]:
    """The n best chunks for `query` by BM25, best first: rows of (chunk id, document id,
    external id, title, text, ord, metadata, score). A query with no lexeme (only stop
    words, say) gives no rows.

    Exact, with pruning: the long lists of common lexemes are skipped where the rarer ones
    decide the top n. With filters every list is scored."""
    qtfs = analyzer(text_config).lexemes(query)
    if not qtfs:
        return []
    c = {"c": collection_id}
    n_chunks, avgdl = conn.execute(STATS, c).fetchone()  # type: ignore[misc]
    dfs: dict[str, float] = dict(conn.execute(DFS, c | {"lexemes": list(qtfs)}).fetchall())
    terms = sorted(
        (
            Term(lexeme, df, qtfs[lexeme] * math.log(1 + (n_chunks - df + 0.5) / (df + 0.5)))
            for lexeme, df in dfs.items()
        ),
        key=lambda t: (t.df, t.lexeme),
    )
    if not terms:
        return []
    # Filters apply after scoring: with them, the probe's floor would not hold.
    probe = 0 if filters else probe_size(terms, n)
    bounds = [None] * len(terms) if filters else rest_bounds(terms, n, probe, long_list, k1)
    sql, params = bm25_sql(filters)
    conn.execute("SELECT set_config('work_mem', %s, true)", (WORK_MEM,))  # this transaction
    params |= c | {
        "n": n,
        "keep": None if filters else n,
        "k1": k1,
        "b": b,
        "avgdl": avgdl,
        "lexemes": [t.lexeme for t in terms],
        "weights": [t.weight for t in terms],
        "dfs": [t.df for t in terms],
        "rest_bounds": bounds,
        "probe": probe,
    }
    return conn.execute(sql, params).fetchall()
