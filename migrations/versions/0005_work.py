"""Work in flight: one row per queued task, with its lease, heartbeat and recoveries.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JOB_PROGRESS = r"""
CREATE OR REPLACE VIEW pgrag.job_progress AS
SELECT j.id AS job_id,
       col.name AS collection,
       j.state,
       p.processed AS docs_processed,
       j.docs_total,
       CASE WHEN j.docs_total > 0 THEN round(100.0 * p.processed / j.docs_total, 1)
            WHEN j.state = 'done' THEN 100.0 END AS percent,
       j.docs_done,
       j.docs_skipped,
       j.docs_failed AS errors,
       j.docs_deleted,
       j.chunks_done,
       e.elapsed,
       round(p.processed / e.seconds, 2) AS docs_per_s,
       round(j.chunks_done / e.seconds, 1) AS chunks_per_s,
       CASE WHEN j.state IN ('queued', 'running') AND j.docs_total IS NOT NULL AND p.processed > 0
            THEN make_interval(
                secs => round(greatest(j.docs_total - p.processed, 0) * e.seconds / p.processed))
       END AS eta,
       j.source,
       j.error,
       j.created_at,
       j.started_at,
       j.updated_at,
       j.finished_at{extra}
FROM pgrag.ingest_jobs j
JOIN pgrag.collections col ON col.id = j.collection_id
CROSS JOIN LATERAL (SELECT j.docs_done + j.docs_failed + j.docs_skipped AS processed) p
CROSS JOIN LATERAL (
    SELECT coalesce(j.finished_at, now()) - j.started_at AS elapsed,
           nullif(extract(epoch FROM coalesce(j.finished_at, now()) - j.started_at), 0) AS seconds
) e{join};
"""

RECOVERIES = """,
       w.recovered,
       w.last_recovery"""
RECOVERIES_JOIN = """
CROSS JOIN LATERAL (
    SELECT coalesce(sum(recovered), 0)::bigint AS recovered,
           (array_agg(last_recovery ORDER BY id DESC)
                FILTER (WHERE last_recovery IS NOT NULL))[1] AS last_recovery
    FROM pgrag.work WHERE job_id = j.id
) w"""

UPGRADE = rf"""
CREATE TABLE pgrag.work (
    id              bigserial PRIMARY KEY,
    task            text NOT NULL,
    args            jsonb NOT NULL,
    job_id          bigint REFERENCES pgrag.ingest_jobs(id) ON DELETE CASCADE,
    state           text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done')),
    owner           text,
    heartbeat_at    timestamptz,
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    recovered       integer NOT NULL DEFAULT 0,
    last_recovery   text
);
CREATE INDEX work_open_idx ON pgrag.work (state) WHERE state <> 'done';
CREATE INDEX work_job_idx ON pgrag.work (job_id);
COMMENT ON TABLE pgrag.work IS 'Work in flight: one row per task sent to the broker (a job''s read, a batch to embed, a finalize step, a question), with its lease. The sweeper re-sends work whose lease expired or whose message was lost.';
COMMENT ON COLUMN pgrag.work.id IS 'Work id (the task''s work_id argument).';
COMMENT ON COLUMN pgrag.work.task IS 'Celery task name.';
COMMENT ON COLUMN pgrag.work.args IS 'The task''s arguments: ids, never documents.';
COMMENT ON COLUMN pgrag.work.job_id IS 'Ingest job the work belongs to (null for a question).';
COMMENT ON COLUMN pgrag.work.state IS 'queued (sent, not started), running (leased by owner) or done.';
COMMENT ON COLUMN pgrag.work.owner IS 'host:pid of the worker process holding the lease.';
COMMENT ON COLUMN pgrag.work.heartbeat_at IS 'Last renewal of the lease by the running task.';
COMMENT ON COLUMN pgrag.work.enqueued_at IS 'When the message was last sent.';
COMMENT ON COLUMN pgrag.work.attempts IS 'Times a worker claimed the work.';
COMMENT ON COLUMN pgrag.work.recovered IS 'Times the sweeper sent the work again.';
COMMENT ON COLUMN pgrag.work.last_recovery IS 'Why the sweeper last sent it again.';
{JOB_PROGRESS.format(extra=RECOVERIES, join=RECOVERIES_JOIN)}
COMMENT ON COLUMN pgrag.job_progress.recovered IS 'Units of the job''s work that the sweeper sent again (lost worker or lost message).';
COMMENT ON COLUMN pgrag.job_progress.last_recovery IS 'Why the sweeper last recovered work of the job.';
"""

DOWNGRADE = rf"""
DROP VIEW pgrag.job_progress;
{JOB_PROGRESS.format(extra="", join="").replace("CREATE OR REPLACE VIEW", "CREATE VIEW")}
DROP TABLE pgrag.work;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
