"""Lexical index in blocks: one posting row per (lexeme, block of chunks), written by COPY.

Each embed task's chunks form a block. The worker analyses their text (pgrag/store/analyzer.py)
and writes one row per distinct lexeme of the block, holding the block's posting list for
that lexeme as parallel arrays. BM25 statistics are sums over the blocks, exact at every
commit: nothing is refreshed when a job ends.

The chunks already stored are indexed by a later revision (0007), which keeps their lexemes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
DROP TABLE pgrag.postings;
DROP TABLE pgrag.lexemes;
ALTER TABLE pgrag.collections DROP COLUMN lexical_chunks, DROP COLUMN lexical_avg_len;

CREATE TABLE pgrag.lexical_blocks (
    id              bigserial PRIMARY KEY,
    collection_id   integer NOT NULL REFERENCES pgrag.collections(id) ON DELETE CASCADE,
    chunk_ids       bigint[] NOT NULL,
    total_len       bigint NOT NULL,
    lexemes         text[] NOT NULL
);
CREATE INDEX lexical_blocks_collection_idx ON pgrag.lexical_blocks (collection_id);
COMMENT ON TABLE pgrag.lexical_blocks IS 'Blocks of the BM25 index: the chunks of one embed task, analysed together. N = sum of cardinality(chunk_ids), avgdl = sum(total_len) / N.';
COMMENT ON COLUMN pgrag.lexical_blocks.id IS 'Block id.';
COMMENT ON COLUMN pgrag.lexical_blocks.collection_id IS 'Collection of the chunks.';
COMMENT ON COLUMN pgrag.lexical_blocks.chunk_ids IS 'The chunks of the block.';
COMMENT ON COLUMN pgrag.lexical_blocks.total_len IS 'Lexeme occurrences in all of the block''s chunks (BM25 document lengths summed).';
COMMENT ON COLUMN pgrag.lexical_blocks.lexemes IS 'Distinct lexemes of the block: the keys of its rows in pgrag.postings.';

ALTER TABLE pgrag.chunks ADD COLUMN lexical_block bigint;
-- A chunk row (a 384-d vector is 1.5 kB, plus the text) passes the default 2 kB target, and
-- then PostgreSQL moves the vector out of line into the TOAST table: a second heap and index
-- insert per chunk on load, a second fetch per exact distance. Rows up to a page stay whole
-- (COPY of real chunks measured 2-3x faster).
ALTER TABLE pgrag.chunks SET (toast_tuple_target = 8160);
COMMENT ON COLUMN pgrag.chunks.lexical_block IS 'The pgrag.lexical_blocks row that indexes the chunk for BM25.';

CREATE TABLE pgrag.postings (
    collection_id   integer NOT NULL,
    lexeme          text NOT NULL,
    block_id        bigint NOT NULL,
    chunk_ids       bigint[] NOT NULL,
    tfs             integer[] NOT NULL,
    chunk_lens      integer[] NOT NULL,
    PRIMARY KEY (collection_id, lexeme, block_id)
);
COMMENT ON TABLE pgrag.postings IS 'Inverted index for BM25: for each lexeme and block, the block''s chunks holding the lexeme, with parallel arrays of term frequency and chunk length. pgrag.lexical_postings shows one row per (lexeme, chunk).';
COMMENT ON COLUMN pgrag.postings.collection_id IS 'Collection of the chunks.';
COMMENT ON COLUMN pgrag.postings.lexeme IS 'Normalised lexeme (lower-cased, stemmed, stop words removed; pgrag/store/analyzer.py).';
COMMENT ON COLUMN pgrag.postings.block_id IS 'The pgrag.lexical_blocks row this posting list belongs to.';
COMMENT ON COLUMN pgrag.postings.chunk_ids IS 'Chunks of the block containing the lexeme.';
COMMENT ON COLUMN pgrag.postings.tfs IS 'Occurrences of the lexeme in each of those chunks.';
COMMENT ON COLUMN pgrag.postings.chunk_lens IS 'Lexeme occurrences in the whole of each of those chunks (BM25 document length).';

CREATE VIEW pgrag.lexical_postings AS
SELECT p.collection_id, p.lexeme, u.chunk_id, u.tf, u.chunk_len
FROM pgrag.postings p, unnest(p.chunk_ids, p.tfs, p.chunk_lens) AS u(chunk_id, tf, chunk_len);
COMMENT ON VIEW pgrag.lexical_postings IS 'The BM25 inverted index one (lexeme, chunk) per row; filter on collection_id and lexeme.';
COMMENT ON COLUMN pgrag.lexical_postings.collection_id IS 'Collection of the chunk.';
COMMENT ON COLUMN pgrag.lexical_postings.lexeme IS 'Normalised lexeme.';
COMMENT ON COLUMN pgrag.lexical_postings.chunk_id IS 'Chunk containing the lexeme.';
COMMENT ON COLUMN pgrag.lexical_postings.tf IS 'Occurrences of the lexeme in the chunk.';
COMMENT ON COLUMN pgrag.lexical_postings.chunk_len IS 'Lexeme occurrences in the whole chunk (BM25 document length).';

CREATE VIEW pgrag.lexical_stats AS
SELECT collection_id,
       sum(cardinality(chunk_ids))::bigint AS chunks,
       sum(total_len)::float8 / nullif(sum(cardinality(chunk_ids)), 0) AS avg_len,
       count(*) AS blocks
FROM pgrag.lexical_blocks GROUP BY collection_id;
COMMENT ON VIEW pgrag.lexical_stats IS 'BM25 statistics per collection: N (chunks), avgdl (avg_len), and the number of blocks.';
COMMENT ON COLUMN pgrag.lexical_stats.collection_id IS 'Collection.';
COMMENT ON COLUMN pgrag.lexical_stats.chunks IS 'BM25 N: chunks in the lexical index.';
COMMENT ON COLUMN pgrag.lexical_stats.avg_len IS 'BM25 avgdl: mean lexeme occurrences per chunk.';
COMMENT ON COLUMN pgrag.lexical_stats.blocks IS 'Blocks (embed tasks) the index is made of.';

GRANT SELECT ON pgrag.lexical_blocks, pgrag.postings, pgrag.lexical_postings, pgrag.lexical_stats
    TO pgrag_reader;
"""

DOWNGRADE = r"""
DROP VIEW pgrag.lexical_stats;
DROP VIEW pgrag.lexical_postings;
DROP TABLE pgrag.postings;
ALTER TABLE pgrag.chunks RESET (toast_tuple_target);
ALTER TABLE pgrag.chunks DROP COLUMN lexical_block;
DROP TABLE pgrag.lexical_blocks;
ALTER TABLE pgrag.collections
    ADD COLUMN lexical_chunks bigint NOT NULL DEFAULT 0,
    ADD COLUMN lexical_avg_len double precision NOT NULL DEFAULT 0;
CREATE TABLE pgrag.postings (
    collection_id   integer NOT NULL,
    lexeme          text NOT NULL,
    chunk_id        bigint NOT NULL REFERENCES pgrag.chunks(id) ON DELETE CASCADE,
    tf              integer NOT NULL,
    chunk_len       integer NOT NULL,
    PRIMARY KEY (collection_id, lexeme, chunk_id) INCLUDE (tf, chunk_len)
);
CREATE INDEX postings_chunk_idx ON pgrag.postings (chunk_id);
CREATE TABLE pgrag.lexemes (
    collection_id   integer NOT NULL REFERENCES pgrag.collections(id) ON DELETE CASCADE,
    lexeme          text NOT NULL,
    df              bigint NOT NULL,
    PRIMARY KEY (collection_id, lexeme)
);
GRANT SELECT ON pgrag.postings, pgrag.lexemes TO pgrag_reader;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
