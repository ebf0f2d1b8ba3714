"""Questions and their answers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE TABLE pgrag.queries (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    collection      text NOT NULL,
    collection_id   integer REFERENCES pgrag.collections(id) ON DELETE SET NULL,
    question        text NOT NULL,
    options         jsonb NOT NULL DEFAULT '{}',
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'done', 'failed')),
    question_embedding vector,
    answer          text,
    citations       jsonb,
    passages        jsonb,
    timings         jsonb,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX queries_created_idx ON pgrag.queries (created_at DESC);
COMMENT ON TABLE pgrag.queries IS 'Questions asked through the query queue, with the passages, answer and stage timings.';
COMMENT ON COLUMN pgrag.queries.id IS 'Question id; its answer streams on the Redis stream pgrag:answer:<id>.';
COMMENT ON COLUMN pgrag.queries.collection IS 'Collection name as asked (kept even if unknown or dropped).';
COMMENT ON COLUMN pgrag.queries.collection_id IS 'Collection searched, when it exists.';
COMMENT ON COLUMN pgrag.queries.question IS 'The question text.';
COMMENT ON COLUMN pgrag.queries.options IS 'Request options: k, rerank, filters, generator.';
COMMENT ON COLUMN pgrag.queries.state IS 'queued, running, done or failed.';
COMMENT ON COLUMN pgrag.queries.question_embedding IS 'Embedding of the question with the collection''s model.';
COMMENT ON COLUMN pgrag.queries.answer IS 'The generated answer, with [n] citation markers.';
COMMENT ON COLUMN pgrag.queries.citations IS 'Cited passages: [{"n", "chunk_id", "document_id", "external_id", "title"}].';
COMMENT ON COLUMN pgrag.queries.passages IS 'Passages given to the generator, with the score of each stage (dense, lexical, fused, rerank).';
COMMENT ON COLUMN pgrag.queries.timings IS 'Milliseconds per stage: embed, recall, rerank, generate, first_token, total.';
COMMENT ON COLUMN pgrag.queries.error IS 'Why answering failed, when it did.';
COMMENT ON COLUMN pgrag.queries.created_at IS 'When the question was queued.';
COMMENT ON COLUMN pgrag.queries.started_at IS 'When a query worker picked it up.';
COMMENT ON COLUMN pgrag.queries.finished_at IS 'When the answer (or error) was final.';
"""

DOWNGRADE = "DROP TABLE pgrag.queries;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
