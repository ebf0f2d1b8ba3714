"""Quality: a collection's own fusion of dense and lexical rankings; a question's short answer.

- `collections.fusion`: how hybrid searches of the collection fuse their two lists
  (`{"method": "zscore" | "rrf", "dense_weight": 0..1}`); null: pgrag's default
  (`pgrag/query/fusion.py`). Set by `pgrag collections set-fusion`.
- `queries.short_answer`: the phrase of the answer's first cited sentence that answers the
  question, with that sentence's citation (`pgrag/query/generation/spans.py`).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE pgrag.collections ADD COLUMN fusion jsonb;
COMMENT ON COLUMN pgrag.collections.fusion IS
    'How hybrid searches fuse dense and lexical rankings: {"method": "zscore" or "rrf", "dense_weight": 0 to 1}; null: the default (zscore, 0.5).';
ALTER TABLE pgrag.queries ADD COLUMN short_answer text;
COMMENT ON COLUMN pgrag.queries.short_answer IS
    'The phrase of the answer''s first cited sentence that answers the question, with its citation [n].';
"""

DOWNGRADE = r"""
ALTER TABLE pgrag.queries DROP COLUMN short_answer;
ALTER TABLE pgrag.collections DROP COLUMN fusion;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
