"""Lexical index built when a job ends: a forward index and a queue of chunks to index.

Embed tasks stop writing posting rows: they COPY each chunk's lexeme counts into
`chunk_lexemes` and queue the chunk in `lexical_pending`; the job's last step groups the
pending chunks into blocks of up to 4,096 chunks (pgrag/store/lexical.py). Deletes read a chunk's
lexemes from `chunk_lexemes` and edit the posting rows in place, so blocks no longer need to
list their lexemes, nor chunks to name their block (a GIN index finds a chunk's block).

The upgrade analyses the chunks already stored into `chunk_lexemes`; chunks of no block yet
(stored before revision 0004) are queued and indexed here.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from typing import Any

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STATS = """
CREATE OR REPLACE VIEW pgrag.lexical_stats AS
SELECT collection_id,
       sum(cardinality(chunk_ids))::bigint AS chunks,
       sum(total_len)::float8 / nullif(sum(cardinality(chunk_ids)), 0) AS avg_len,
       count(*) AS blocks{pending}
FROM pgrag.lexical_blocks b GROUP BY collection_id;
"""
PENDING = """,
       (SELECT count(*) FROM pgrag.lexical_pending p WHERE p.collection_id = b.collection_id)
           AS pending"""

UPGRADE = rf"""
CREATE TABLE pgrag.chunk_lexemes (
    chunk_id        bigint PRIMARY KEY,
    collection_id   integer NOT NULL,
    lexemes         text NOT NULL,
    tfs             text NOT NULL,
    len             integer NOT NULL
);
COMMENT ON TABLE pgrag.chunk_lexemes IS 'Forward index for BM25: each chunk''s distinct lexemes and their counts, as analysed when it was loaded (title and text; pgrag/store/analyzer.py).';
COMMENT ON COLUMN pgrag.chunk_lexemes.chunk_id IS 'The chunk.';
COMMENT ON COLUMN pgrag.chunk_lexemes.collection_id IS 'Collection of the chunk.';
COMMENT ON COLUMN pgrag.chunk_lexemes.lexemes IS 'Its distinct lexemes, space-separated: string_to_array(lexemes, '' '').';
COMMENT ON COLUMN pgrag.chunk_lexemes.tfs IS 'Occurrences of each of those lexemes, space-separated, in the same order.';
COMMENT ON COLUMN pgrag.chunk_lexemes.len IS 'Lexeme occurrences in the whole chunk (BM25 document length).';

CREATE TABLE pgrag.lexical_pending (
    collection_id   integer NOT NULL,
    chunk_id        bigint NOT NULL,
    PRIMARY KEY (collection_id, chunk_id)
);
COMMENT ON TABLE pgrag.lexical_pending IS 'Chunks loaded but not yet in the BM25 index: the ingest job''s last step indexes them (lexical search does not see them until then).';
COMMENT ON COLUMN pgrag.lexical_pending.collection_id IS 'Collection of the chunk.';
COMMENT ON COLUMN pgrag.lexical_pending.chunk_id IS 'The chunk.';

CREATE INDEX lexical_blocks_chunks_idx ON pgrag.lexical_blocks USING gin (chunk_ids);
COMMENT ON TABLE pgrag.lexical_blocks IS 'Blocks of the BM25 index: up to 4,096 chunks indexed together when a job ends. N = sum of cardinality(chunk_ids), avgdl = sum(total_len) / N.';
{STATS.format(pending=PENDING)}
COMMENT ON COLUMN pgrag.lexical_stats.blocks IS 'Blocks the index is made of.';
COMMENT ON COLUMN pgrag.lexical_stats.pending IS 'Chunks loaded and waiting for the index (until their job ends).';
GRANT SELECT ON pgrag.chunk_lexemes, pgrag.lexical_pending TO pgrag_reader;
"""

AFTER_UPGRADE = """
ALTER TABLE pgrag.lexical_blocks DROP COLUMN lexemes;
ALTER TABLE pgrag.chunks DROP COLUMN lexical_block;
"""

DOWNGRADE = rf"""
ALTER TABLE pgrag.lexical_blocks ADD COLUMN lexemes text[] NOT NULL DEFAULT '{{}}';
UPDATE pgrag.lexical_blocks b SET lexemes = coalesce((
    SELECT array_agg(p.lexeme) FROM pgrag.postings p
    WHERE p.collection_id = b.collection_id AND p.block_id = b.id), '{{}}');
ALTER TABLE pgrag.lexical_blocks ALTER COLUMN lexemes DROP DEFAULT;
COMMENT ON COLUMN pgrag.lexical_blocks.lexemes IS 'Distinct lexemes of the block: the keys of its rows in pgrag.postings.';
COMMENT ON TABLE pgrag.lexical_blocks IS 'Blocks of the BM25 index: the chunks of one embed task, analysed together. N = sum of cardinality(chunk_ids), avgdl = sum(total_len) / N.';
ALTER TABLE pgrag.chunks ADD COLUMN lexical_block bigint;
UPDATE pgrag.chunks c SET lexical_block = b.id
FROM pgrag.lexical_blocks b, unnest(b.chunk_ids) AS x WHERE c.id = x;
COMMENT ON COLUMN pgrag.chunks.lexical_block IS 'The pgrag.lexical_blocks row that indexes the chunk for BM25.';
DROP INDEX pgrag.lexical_blocks_chunks_idx;
DROP VIEW pgrag.lexical_stats;
{STATS.format(pending="").replace("CREATE OR REPLACE", "CREATE")}
COMMENT ON VIEW pgrag.lexical_stats IS 'BM25 statistics per collection: N (chunks), avgdl (avg_len), and the number of blocks.';
COMMENT ON COLUMN pgrag.lexical_stats.collection_id IS 'Collection.';
COMMENT ON COLUMN pgrag.lexical_stats.chunks IS 'BM25 N: chunks in the lexical index.';
COMMENT ON COLUMN pgrag.lexical_stats.avg_len IS 'BM25 avgdl: mean lexeme occurrences per chunk.';
COMMENT ON COLUMN pgrag.lexical_stats.blocks IS 'Blocks (embed tasks) the index is made of.';
GRANT SELECT ON pgrag.lexical_stats TO pgrag_reader;
DROP TABLE pgrag.lexical_pending;
DROP TABLE pgrag.chunk_lexemes;
"""


# The block build of pgrag/store/lexical.py as of this revision (later ones add columns that
# the live statement fills), for the chunks this upgrade or downgrade leaves pending.
BUILD_BLOCK = """
WITH ids AS MATERIALIZED (
    SELECT chunk_id FROM pgrag.lexical_pending WHERE collection_id = %(c)s
    ORDER BY chunk_id LIMIT 4096 FOR UPDATE
), picked AS MATERIALIZED (
    DELETE FROM pgrag.lexical_pending p USING ids
    WHERE p.collection_id = %(c)s AND p.chunk_id = ids.chunk_id
    RETURNING p.chunk_id
), chunks AS MATERIALIZED (
    SELECT f.chunk_id, f.lexemes, f.tfs, f.len
    FROM picked JOIN pgrag.chunk_lexemes f USING (chunk_id)
), written AS (
    INSERT INTO pgrag.postings (collection_id, lexeme, block_id, chunk_ids, tfs, chunk_lens)
    SELECT %(c)s, p.lexeme, %(b)s, array_agg(c.chunk_id), array_agg(p.tf), array_agg(c.len)
    FROM chunks c,
         unnest(string_to_array(c.lexemes, ' '), string_to_array(c.tfs, ' ')::int[])
         AS p(lexeme, tf)
    GROUP BY p.lexeme
)
INSERT INTO pgrag.lexical_blocks (id, collection_id, chunk_ids, total_len)
SELECT %(b)s, %(c)s, array_agg(chunk_id ORDER BY chunk_id), sum(len) FROM chunks
HAVING count(*) > 0
RETURNING cardinality(chunk_ids)
"""


def _index_pending(conn: Any) -> None:
    for (collection_id,) in conn.execute(
        "SELECT DISTINCT collection_id FROM pgrag.lexical_pending"
    ).fetchall():
        while True:
            block = conn.execute("SELECT nextval('pgrag.lexical_blocks_id_seq')").fetchone()[0]
            if conn.execute(BUILD_BLOCK, {"c": collection_id, "b": block}).fetchone() is None:
                break


def upgrade() -> None:
    from pgrag.store import lexical
    from pgrag.store.analyzer import Analyzer

    op.execute(UPGRADE)
    conn = op.get_bind().connection.driver_connection
    collections = conn.execute("SELECT id, text_config::text FROM pgrag.collections").fetchall()
    for collection_id, config in collections:
        lexer, after = Analyzer(config), 0
        while rows := conn.execute(
            "SELECT c.id, d.title, c.text, c.lexical_block FROM pgrag.chunks c"
            " JOIN pgrag.documents d ON d.id = c.document_id"
            " WHERE c.collection_id = %s AND c.id > %s ORDER BY c.id LIMIT 4096",
            (collection_id, after),
        ).fetchall():
            after = rows[-1][0]
            counts = [
                lexer.lexemes(lexical.analysed_text(title, text)) for _, title, text, _ in rows
            ]
            lexical.stage(conn, collection_id, [row[0] for row in rows], counts)
            # Chunks already in a block are indexed: only the others stay queued.
            indexed = [row[0] for row in rows if row[3] is not None]
            conn.execute(
                "DELETE FROM pgrag.lexical_pending WHERE collection_id = %s AND chunk_id = ANY(%s)",
                (collection_id, indexed),
            )
    op.execute(AFTER_UPGRADE)
    _index_pending(conn)


def downgrade() -> None:
    _index_pending(op.get_bind().connection.driver_connection)
    op.execute(DOWNGRADE)
