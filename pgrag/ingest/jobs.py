"""Ingest jobs: rows in `pgrag.ingest_jobs`, their states and their per-document errors.

States: queued -> running -> indexing -> done; any non-final state -> failed or cancelled.
Counters are updated by the workers in the same transactions that load the data, so a job
row never claims more than what is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import select

from pgrag.runtime import db
from pgrag.runtime.errors import UserError
from pgrag.store.schema import TERMINAL_JOB_STATES, Collection, IngestError, IngestJob


class UnknownJob(UserError, LookupError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"ingest job {job_id} does not exist (see `pgrag jobs`)")


def insert_job(
    conn: psycopg.Connection, collection_id: int, source: str, options: dict[str, Any]
) -> int:
    """Insert a queued job in the caller's transaction; returns its id."""
    row = conn.execute(
        "INSERT INTO pgrag.ingest_jobs (collection_id, source, options) VALUES (%s, %s, %s)"
        " RETURNING id",
        (collection_id, source, Jsonb(options)),
    ).fetchone()
    return int(row[0])  # type: ignore[index]


def get_job(job_id: int) -> IngestJob:
    with db.session() as s:
        job = s.get(IngestJob, job_id)
    if job is None:
        raise UnknownJob(job_id)
    return job


def list_jobs(limit: int = 20, collections: Sequence[str] | None = None) -> list[IngestJob]:
    """The latest jobs, newest first; with `collections`, only jobs of those (by name)."""
    query = select(IngestJob).order_by(IngestJob.id.desc()).limit(limit)
    if collections is not None:
        query = query.join(Collection).where(Collection.name.in_(collections))
    with db.session() as s:
        return list(s.scalars(query))


def job_errors(job_id: int, limit: int | None = None) -> list[IngestError]:
    with db.session() as s:
        query = select(IngestError).where(IngestError.job_id == job_id).order_by(IngestError.id)
        return list(s.scalars(query.limit(limit)))


def job_recoveries(job_id: int) -> dict[str, int]:
    """How many times the sweeper sent the job's work again, per reason (pgrag.recoveries)."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT recoveries FROM pgrag.job_progress WHERE job_id = %s", (job_id,)
        ).fetchone()
    return dict(row[0]) if row else {}


def cancel_job(job_id: int) -> IngestJob:
    """Cancel a job that has not finished; workers skip its remaining work."""
    get_job(job_id)
    with db.connect() as conn:
        conn.execute(
            "UPDATE pgrag.ingest_jobs"
            " SET state = 'cancelled', finished_at = now(), updated_at = now()"
            " WHERE id = %s AND state <> ALL(%s)",
            (job_id, list(TERMINAL_JOB_STATES)),
        )
    return get_job(job_id)


def job_state(conn: psycopg.Connection, job_id: int) -> str:
    row = conn.execute("SELECT state FROM pgrag.ingest_jobs WHERE id = %s", (job_id,)).fetchone()
    if row is None:
        raise UnknownJob(job_id)
    return str(row[0])


COUNTERS = frozenset(
    {"docs_read", "docs_done", "docs_failed", "docs_skipped", "docs_deleted", "chunks_done"}
)


def bump(conn: psycopg.Connection, job_id: int, **counts: int) -> None:
    """Add to a job's counters, in the caller's transaction."""
    if unknown := set(counts) - COUNTERS:
        raise ValueError(f"not job counters: {sorted(unknown)}")
    counts = {k: v for k, v in counts.items() if v}
    if not counts:
        return
    assignments = ", ".join(f"{name} = {name} + %({name})s" for name in counts)
    conn.execute(
        f"UPDATE pgrag.ingest_jobs SET {assignments}, updated_at = now() WHERE id = %(job_id)s",
        {**counts, "job_id": job_id},
    )


def record_errors(conn: psycopg.Connection, job_id: int, errors: list[tuple[str, str]]) -> int:
    """Insert (ref, reason) error rows once each; returns how many were new."""
    if not errors:
        return 0
    cur = conn.cursor()
    cur.executemany(
        "INSERT INTO pgrag.ingest_errors (job_id, ref, reason) VALUES (%s, %s, %s)"
        " ON CONFLICT (job_id, ref) DO NOTHING RETURNING 1",
        [(job_id, ref, reason) for ref, reason in errors],
        returning=True,
    )
    new = 0
    while True:
        new += len(cur.fetchall())
        if not cur.nextset():
            break
    return new


def fail_job(job_id: int, error: str) -> None:
    with db.connect() as conn:
        conn.execute(
            "UPDATE pgrag.ingest_jobs SET state = 'failed', error = %s, finished_at = now(),"
            " updated_at = now() WHERE id = %s AND state <> ALL(%s)",
            (error, job_id, list(TERMINAL_JOB_STATES)),
        )
