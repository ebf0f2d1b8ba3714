"""Celery tasks: thin wrappers that hold their work's lease, call `pgrag` and record
failures on the job.

Every task is idempotent (see `pgrag.ingest.pipeline`) and leased in PostgreSQL (`pgrag.work`): a
second delivery of running or finished work does nothing, and the sweeper sends work again
when its worker died or its message was lost.

The modules that embed (`pgrag.ingest.loading`, `pgrag.query.answering`: torch and the
models' code, 5 s of imports) are imported by the tasks that need them, so that a worker
that only reads sources starts in a second; a worker that embeds imports them before its
pool forks (`app.MODEL_MODULES`).
"""

from __future__ import annotations

from typing import Any

import psycopg
import redis
from celery import Task

from pgrag.ingest import jobs, pipeline
from pgrag.runtime import queue, work
from pgrag.runtime.services import ServiceError

from .app import app

# Lost connections (and an embedded server that is restarting) are retried; if they outlast
# the retries, the work is left to the sweeper, which sends it again: the job goes on.
# Anything else is a real failure and ends the job.
TRANSIENT = (psycopg.OperationalError, redis.ConnectionError, ServiceError)


class JobTask(Task):
    autoretry_for = TRANSIENT
    retry_backoff = True
    max_retries = 5

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if not isinstance(exc, TRANSIENT):
            jobs.fail_job(args[0], f"{self.name} failed: {type(exc).__name__}: {exc}")


@app.task(name=queue.INGEST_SOURCE, base=JobTask)
def ingest_source(job_id: int, work_id: int | None = None) -> None:
    with work.lease(work_id) as mine:
        if mine:
            pipeline.read_source(job_id)


@app.task(name=queue.EMBED_DOCUMENTS, base=JobTask)
def embed_documents(job_id: int, document_ids: list[int], work_id: int | None = None) -> None:
    with work.lease(work_id) as mine:
        if mine:
            from pgrag.ingest import loading

            loading.embed_documents(job_id, document_ids)


@app.task(name=queue.INDEX_BLOCK, base=JobTask)
def index_block(job_id: int, work_id: int | None = None) -> None:
    with work.lease(work_id) as mine:
        if mine:
            pipeline.index_loaded_block(job_id)


@app.task(name=queue.FINALIZE_JOB, base=JobTask)
def finalize_job(job_id: int, work_id: int | None = None) -> None:
    with work.lease(work_id) as mine:
        if mine:
            pipeline.finalize_job(job_id)


# Answering records its own outcome (a failed question ends with an `error` event), so this
# task never fails for a bad question and is not retried: a redelivered one is skipped once
# its question is answered.
@app.task(name=queue.ANSWER_QUESTION)
def answer_question(query_id: str, work_id: int | None = None) -> None:
    with work.lease(work_id) as mine:
        if mine:
            from pgrag.query import answering

            answering.answer(query_id)
