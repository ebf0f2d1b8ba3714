"""Recoveries are logged, one row each; work is scoped to its broker; workers are listed.

- `pgrag.recoveries`: an append-only log of every unit of work the sweeper sent again, with
  its reason, replacing the counter and the last reason kept on each `pgrag.work` row (one
  column that each recovery overwrote). `job_progress` counts them per reason.
- `pgrag.work.broker`: the deployment whose broker carries the work's messages; only that
  deployment's sweepers send it again, so two deployments may share one database.
- `pgrag.workers`: the workers that are up, whether each has loaded its models, and how
  many questions it may hold at once (`pgrag status`).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# job_progress as 0005 made it, with its recovery columns read from a join of its own.
JOB_PROGRESS = r"""
CREATE VIEW pgrag.job_progress AS
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
       j.finished_at,
       w.recovered,
       w.last_recovery{extra}
FROM pgrag.ingest_jobs j
JOIN pgrag.collections col ON col.id = j.collection_id
CROSS JOIN LATERAL (SELECT j.docs_done + j.docs_failed + j.docs_skipped AS processed) p
CROSS JOIN LATERAL (
    SELECT coalesce(j.finished_at, now()) - j.started_at AS elapsed,
           nullif(extract(epoch FROM coalesce(j.finished_at, now()) - j.started_at), 0) AS seconds
) e
CROSS JOIN LATERAL ({recoveries}) w;
"""

FROM_LOG = """
    SELECT coalesce(sum(n), 0)::bigint AS recovered, max(last) AS last_recovery,
           coalesce(jsonb_object_agg(reason, n), '{}') AS recoveries
    FROM (SELECT reason, count(*) AS n,
                 (array_agg(reason || ': ' || detail ORDER BY id DESC))[1] AS last
          FROM pgrag.recoveries WHERE job_id = j.id GROUP BY reason) r
"""
FROM_WORK = """
    SELECT coalesce(sum(recovered), 0)::bigint AS recovered,
           (array_agg(last_recovery ORDER BY id DESC)
                FILTER (WHERE last_recovery IS NOT NULL))[1] AS last_recovery
    FROM pgrag.work WHERE job_id = j.id
"""

RECOVERIES_COLUMN = """,
       w.recoveries"""

UPGRADE = f"""
CREATE TABLE pgrag.recoveries (
    id            bigserial PRIMARY KEY,
    work_id       bigint NOT NULL REFERENCES pgrag.work(id) ON DELETE CASCADE,
    job_id        bigint REFERENCES pgrag.ingest_jobs(id) ON DELETE CASCADE,
    task          text NOT NULL,
    reason        text NOT NULL CHECK (reason IN ('lease expired', 'message lost')),
    detail        text NOT NULL,
    recovered_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX recoveries_job_idx ON pgrag.recoveries (job_id);
CREATE INDEX recoveries_work_idx ON pgrag.recoveries (work_id);
COMMENT ON TABLE pgrag.recoveries IS 'Every time the sweeper sent a unit of work again, and why: a row per recovery, never updated.';
COMMENT ON COLUMN pgrag.recoveries.id IS 'Recovery id, in order.';
COMMENT ON COLUMN pgrag.recoveries.work_id IS 'The unit of work (pgrag.work) sent again.';
COMMENT ON COLUMN pgrag.recoveries.job_id IS 'Ingest job of the work (null for a question).';
COMMENT ON COLUMN pgrag.recoveries.task IS 'Celery task name of the work.';
COMMENT ON COLUMN pgrag.recoveries.reason IS 'lease expired (its worker stopped renewing the lease) or message lost (queued, with its message in no broker queue and held by no worker).';
COMMENT ON COLUMN pgrag.recoveries.detail IS 'What the sweeper saw: the owner that stopped, or how long the work waited with no message.';
COMMENT ON COLUMN pgrag.recoveries.recovered_at IS 'When the sweeper sent it again.';

INSERT INTO pgrag.recoveries (work_id, job_id, task, reason, detail, recovered_at)
SELECT w.id, w.job_id, w.task, split_part(w.last_recovery, ':', 1),
       coalesce(nullif(trim(split_part(w.last_recovery, ':', 2)), ''), 'before the log'),
       w.enqueued_at
FROM pgrag.work w, generate_series(1, w.recovered)
WHERE split_part(w.last_recovery, ':', 1) IN ('lease expired', 'message lost');

CREATE TABLE pgrag.workers (
    name         text PRIMARY KEY,
    owner        text NOT NULL,
    queues       text NOT NULL,
    pool         text NOT NULL,
    concurrency  integer NOT NULL,
    state        text NOT NULL CHECK (state IN ('loading', 'ready')),
    models       text,
    ready_s      real,
    started_at   timestamptz NOT NULL DEFAULT now(),
    seen_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgrag.workers IS 'Celery workers that registered when they started; each renews seen_at every few seconds and removes its row when it stops (one killed outright just stops being seen).';
COMMENT ON COLUMN pgrag.workers.name IS 'Celery node name, e.g. query@host.';
COMMENT ON COLUMN pgrag.workers.owner IS 'host:pid of its main process: the lease owner (pgrag.work.owner) of the work a threads pool runs.';
COMMENT ON COLUMN pgrag.workers.queues IS 'Queues it consumes, comma-separated.';
COMMENT ON COLUMN pgrag.workers.pool IS 'threads (a query worker: questions share its models) or prefork (a process per task).';
COMMENT ON COLUMN pgrag.workers.concurrency IS 'Tasks it runs at once: questions in flight for a query worker.';
COMMENT ON COLUMN pgrag.workers.state IS 'loading (its models) or ready (taking work).';
COMMENT ON COLUMN pgrag.workers.models IS 'The models it loaded before taking work.';
COMMENT ON COLUMN pgrag.workers.ready_s IS 'Seconds it took to load them.';
COMMENT ON COLUMN pgrag.workers.started_at IS 'When it registered.';
COMMENT ON COLUMN pgrag.workers.seen_at IS 'When it last said it was alive.';

ALTER TABLE pgrag.work ADD COLUMN broker text;
COMMENT ON COLUMN pgrag.work.broker IS 'The deployment whose broker carries the work''s messages (PGRAG_DEPLOYMENT, by default the broker URL without credentials): only its sweepers send the work again. Null: work queued before brokers were recorded, which any sweeper may send.';
COMMENT ON COLUMN pgrag.work.attempts IS 'Times a worker claimed the work: with owner, the lease a worker must still hold to finish or release it.';

DROP VIEW pgrag.job_progress;
{JOB_PROGRESS.format(recoveries=FROM_LOG, extra=RECOVERIES_COLUMN)}
ALTER TABLE pgrag.work DROP COLUMN recovered, DROP COLUMN last_recovery;
"""

DOWNGRADE = f"""
ALTER TABLE pgrag.work ADD COLUMN recovered integer NOT NULL DEFAULT 0,
    ADD COLUMN last_recovery text;
UPDATE pgrag.work w SET recovered = r.n, last_recovery = r.last
FROM (SELECT work_id, count(*) AS n,
             (array_agg(reason || ': ' || detail ORDER BY id DESC))[1] AS last
      FROM pgrag.recoveries GROUP BY work_id) r
WHERE r.work_id = w.id;
COMMENT ON COLUMN pgrag.work.recovered IS 'Times the sweeper sent the work again.';
COMMENT ON COLUMN pgrag.work.last_recovery IS 'Why the sweeper last sent it again.';
COMMENT ON COLUMN pgrag.work.attempts IS 'Times a worker claimed the work.';
DROP VIEW pgrag.job_progress;
{JOB_PROGRESS.format(recoveries=FROM_WORK, extra="")}
ALTER TABLE pgrag.work DROP COLUMN broker;
DROP TABLE pgrag.recoveries;
DROP TABLE pgrag.workers;
"""

COMMENTS = r"""
COMMENT ON VIEW pgrag.job_progress IS
    'Ingest jobs with live progress: documents done of total, rates, ETA and errors. Read it '
    'again to see a running job move.';
COMMENT ON COLUMN pgrag.job_progress.job_id IS 'Job id.';
COMMENT ON COLUMN pgrag.job_progress.collection IS 'Collection the job loads into.';
COMMENT ON COLUMN pgrag.job_progress.state IS
    'queued, running, indexing (building the index), done, failed or cancelled.';
COMMENT ON COLUMN pgrag.job_progress.docs_processed IS
    'Documents finished so far: loaded + unchanged + failed.';
COMMENT ON COLUMN pgrag.job_progress.docs_total IS
    'Documents in the source (an estimate until the source is fully read; NULL when unknown).';
COMMENT ON COLUMN pgrag.job_progress.percent IS 'docs_processed as a percentage of docs_total.';
COMMENT ON COLUMN pgrag.job_progress.docs_done IS 'Documents chunked, embedded and loaded.';
COMMENT ON COLUMN pgrag.job_progress.docs_skipped IS
    'Documents unchanged since their last load (same content hash).';
COMMENT ON COLUMN pgrag.job_progress.errors IS
    'Documents that failed; the reasons are in pgrag.ingest_errors / pgrag.ingest_error_log.';
COMMENT ON COLUMN pgrag.job_progress.docs_deleted IS
    'Documents removed because the source no longer has them (--delete-missing).';
COMMENT ON COLUMN pgrag.job_progress.chunks_done IS 'Chunks embedded and loaded.';
COMMENT ON COLUMN pgrag.job_progress.elapsed IS
    'Time since a worker started the job, up to when it finished.';
COMMENT ON COLUMN pgrag.job_progress.docs_per_s IS 'docs_processed per second of elapsed.';
COMMENT ON COLUMN pgrag.job_progress.chunks_per_s IS 'chunks_done per second of elapsed.';
COMMENT ON COLUMN pgrag.job_progress.eta IS
    'Estimated time left to process the remaining documents at the rate so far (queued or '
    'running jobs with a known total; the index build after it is not included).';
COMMENT ON COLUMN pgrag.job_progress.source IS 'Source folder or file.';
COMMENT ON COLUMN pgrag.job_progress.error IS 'Why the job failed, when it did.';
COMMENT ON COLUMN pgrag.job_progress.created_at IS 'When the job was submitted.';
COMMENT ON COLUMN pgrag.job_progress.started_at IS 'When a worker started reading the source.';
COMMENT ON COLUMN pgrag.job_progress.updated_at IS 'Last change of the job''s state or counters.';
COMMENT ON COLUMN pgrag.job_progress.finished_at IS
    'When the job reached done, failed or cancelled.';
COMMENT ON COLUMN pgrag.job_progress.recovered IS 'Units of the job''s work that the sweeper sent again (lost worker or lost message).';
COMMENT ON COLUMN pgrag.job_progress.last_recovery IS 'Why the sweeper last recovered work of the job.';
"""


def upgrade() -> None:
    op.execute(UPGRADE + COMMENTS)
    op.execute(
        "COMMENT ON COLUMN pgrag.job_progress.recoveries IS 'Recoveries of the job''s work"
        ' per reason (pgrag.recoveries), e.g. {"lease expired": 1}.\''
    )


def downgrade() -> None:
    op.execute(DOWNGRADE + COMMENTS)
