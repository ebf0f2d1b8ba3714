"""Lexical search prunes: posting rows and blocks store how many chunks they list.

`postings.df` and `lexical_blocks.chunks` are the cardinality of their `chunk_ids`, kept
beside the arrays so that a query reads N and its lexemes' document frequencies from small
columns, without detoasting any list, and decides from them which posting lists it must
score in full (`pgrag/store/lexical.py`). `lexical_stats` reads the new column too.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STATS = """
CREATE OR REPLACE VIEW pgrag.lexical_stats AS
SELECT collection_id,
       sum({chunks})::bigint AS chunks,
       sum(total_len)::float8 / nullif(sum({chunks}), 0) AS avg_len,
       count(*) AS blocks,
       (SELECT count(*) FROM pgrag.lexical_pending p WHERE p.collection_id = b.collection_id)
           AS pending
FROM pgrag.lexical_blocks b GROUP BY collection_id;
"""

UPGRADE = rf"""
ALTER TABLE pgrag.postings ADD COLUMN df int;
UPDATE pgrag.postings SET df = cardinality(chunk_ids);
ALTER TABLE pgrag.postings ALTER COLUMN df SET NOT NULL;
COMMENT ON COLUMN pgrag.postings.df IS 'Chunks in this row (cardinality of chunk_ids): summed over a lexeme''s rows, its document frequency.';
ALTER TABLE pgrag.lexical_blocks ADD COLUMN chunks int;
UPDATE pgrag.lexical_blocks SET chunks = cardinality(chunk_ids);
ALTER TABLE pgrag.lexical_blocks ALTER COLUMN chunks SET NOT NULL;
COMMENT ON COLUMN pgrag.lexical_blocks.chunks IS 'Chunks in the block (cardinality of chunk_ids).';
{STATS.format(chunks="chunks")}
"""

DOWNGRADE = rf"""
{STATS.format(chunks="cardinality(chunk_ids)")}
ALTER TABLE pgrag.lexical_blocks DROP COLUMN chunks;
ALTER TABLE pgrag.postings DROP COLUMN df;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
