"""Ingestion: submit a job, read its source, embed and load its documents, finish it.

The work is split in three steps, each run by a Celery task and each idempotent:

1. `read_source` (ingest queue) streams the source, upserts documents by external id and
   content hash in batches, and enqueues one `embed_documents` per batch of new or changed
   documents. Its position in the source is checkpointed with each batch, so a redelivered
   task resumes where the dead one stopped.
2. `loading.embed_documents` (embed queue) chunks, embeds and loads one batch of documents
   in one transaction with their status change; documents no longer pending are left
   alone, so a duplicate or redelivered task changes nothing twice. Each time the job's
   loaded chunks pass a multiple of the lexical block size, it queues `index_loaded_block`
   (ingest queue), which builds that block of the BM25 index while the load goes on.
3. `finalize_job` (ingest queue), claimed once by whoever sees the last pending document go,
   deletes missing documents, indexes the chunks still pending for BM25
   (`lexical.index_pending`), builds the HNSW index when the collection has none and marks
   the job done.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psycopg

from pgrag.ingest import jobs
from pgrag.ingest.sources import SourceDocument, SourceError, open_source
from pgrag.runtime import db, queue, work
from pgrag.runtime.settings import get_settings
from pgrag.store import indexing, lexical
from pgrag.store.collections import create_collection, get_collection, get_collection_by_id
from pgrag.store.schema import IngestJob

T = TypeVar("T")
log = logging.getLogger(__name__)


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def _max_document_bytes() -> int:
    return int(get_settings().max_document_mb * 1024 * 1024)


# ---------------------------------------------------------------------------- submit


def submit(
    source: str | Path,
    collection: str,
    *,
    delete_missing: bool = False,
    create: bool = False,
) -> IngestJob:
    """Queue an ingest job; a bad path or unknown collection fails here, before any work."""
    path = Path(source).expanduser().resolve()
    open_source(path, max_document_bytes=_max_document_bytes())  # raises SourceNotFound
    try:
        target = get_collection(collection)
    except LookupError:
        if not create:
            raise
        target = create_collection(collection)
    # The job and its first unit of work commit together: PostgreSQL never holds a job
    # that nothing will run.
    with db.connect() as conn:
        job_id = jobs.insert_job(conn, target.id, str(path), {"delete_missing": delete_missing})
        work_id = work.add(conn, queue.INGEST_SOURCE, [job_id], job_id)
    work.send(work_id, queue.INGEST_SOURCE, [job_id])
    return jobs.get_job(job_id)


# ---------------------------------------------------------------------------- step 1: read


def content_hash(doc: SourceDocument) -> bytes:
    payload = json.dumps([doc.title, doc.text, doc.metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).digest()


@dataclass
class BatchPlan:
    """What to do with one batch of source entries."""

    load: list[SourceDocument] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)  # document ids
    errors: list[tuple[str, str]] = field(default_factory=list)


def plan_batch(
    conn: psycopg.Connection,
    collection_id: int,
    job_id: int,
    items: list[SourceDocument | SourceError],
) -> BatchPlan:
    """Sort a batch into documents to (re)load, unchanged documents and errors.

    Locks the existing rows so that two jobs on one collection cannot interleave.
    """
    plan = BatchPlan()
    docs: dict[str, SourceDocument] = {}
    for item in items:
        if isinstance(item, SourceError):
            plan.errors.append((item.ref, item.reason))
        elif item.external_id in docs:
            plan.errors.append(
                (
                    item.external_id,
                    "duplicate id: the source has it more than once; the first one was kept",
                )
            )
        else:
            docs[item.external_id] = item
    existing = {
        row[0]: row[1:]
        for row in conn.execute(
            "SELECT external_id, id, content_hash, status, seen_job_id FROM pgrag.documents"
            " WHERE collection_id = %s AND external_id = ANY(%s) ORDER BY id FOR UPDATE",
            (collection_id, list(docs)),
        )
    }
    for external_id, doc in docs.items():
        if external_id not in existing:
            plan.load.append(doc)
            continue
        doc_id, old_hash, status, seen_job_id = existing[external_id]
        if seen_job_id == job_id:
            plan.errors.append(
                (
                    external_id,
                    "duplicate id: the source has it more than once; the first one was kept",
                )
            )
        elif bytes(old_hash) == content_hash(doc) and status == "embedded":
            plan.unchanged.append(doc_id)
        else:
            plan.load.append(doc)
    return plan


UPSERT_DOCUMENT = """
INSERT INTO pgrag.documents
    (collection_id, external_id, title, metadata, content_hash, text, status, job_id, seen_job_id)
VALUES (%s, %s, %s, %s, %s, %s, 'pending', %s, %s)
ON CONFLICT (collection_id, external_id) DO UPDATE SET
    title = excluded.title, metadata = excluded.metadata, content_hash = excluded.content_hash,
    text = excluded.text, status = 'pending', job_id = excluded.job_id,
    seen_job_id = excluded.seen_job_id, updated_at = now()
RETURNING id
"""


def apply_plan(
    conn: psycopg.Connection, collection_id: int, job_id: int, plan: BatchPlan
) -> list[int]:
    """Write a batch plan; returns the ids of the documents now pending for this job."""
    from psycopg.types.json import Jsonb

    pending: list[int] = []
    if plan.load:
        cur = conn.cursor()
        cur.executemany(
            UPSERT_DOCUMENT,
            [
                (
                    collection_id,
                    d.external_id,
                    d.title,
                    Jsonb(d.metadata),
                    content_hash(d),
                    d.text,
                    job_id,
                    job_id,
                )
                for d in plan.load
            ],
            returning=True,
        )
        while True:
            pending.extend(row[0] for row in cur.fetchall())
            if not cur.nextset():
                break
    if plan.unchanged:
        conn.execute(
            "UPDATE pgrag.documents SET seen_job_id = %s WHERE id = ANY(%s)",
            (job_id, plan.unchanged),
        )
    return pending


def read_source(job_id: int) -> None:
    """Step 1: stream the source into `documents` and fan out embed tasks."""
    job = jobs.get_job(job_id)
    if job.finished or job.source_done:
        return
    settings = get_settings()
    try:
        source = open_source(job.source, max_document_bytes=_max_document_bytes())
    except ValueError as e:  # the source vanished between submit and now
        jobs.fail_job(job_id, str(e))
        return
    with db.connect() as conn:
        started = conn.execute(
            "UPDATE pgrag.ingest_jobs SET state = 'running',"
            " started_at = coalesce(started_at, now()),"
            " docs_total = coalesce(docs_total, %s), updated_at = now()"
            " WHERE id = %s AND state IN ('queued', 'running') RETURNING docs_read",
            (source.estimate_total(), job_id),
        ).fetchone()
        conn.commit()
        if started is None:
            return
        # A previous delivery that died resumes after its last checkpoint; the embed work it
        # had queued is in pgrag.work, which the sweeper sends again if its message is lost.
        entries = itertools.islice(source, int(started[0]), None)
        for batch in _batched(entries, settings.ingest_batch_docs):
            if jobs.job_state(conn, job_id) != "running":
                return  # cancelled
            plan = plan_batch(conn, job.collection_id, job_id, batch)
            pending = apply_plan(conn, job.collection_id, job_id, plan)
            failed = jobs.record_errors(conn, job_id, plan.errors)
            jobs.bump(
                conn,
                job_id,
                docs_read=len(batch),
                docs_skipped=len(plan.unchanged),
                docs_failed=failed,
            )
            args = [job_id, pending]
            work_id = work.add(conn, queue.EMBED_DOCUMENTS, args, job_id) if pending else None
            work.fence(conn)  # a reader that lost its lease counts and queues nothing twice
            conn.commit()
            if work_id is not None:
                work.send(work_id, queue.EMBED_DOCUMENTS, args)
        conn.execute(
            "UPDATE pgrag.ingest_jobs SET source_done = true, docs_total = docs_read,"
            " updated_at = now()"
            " WHERE id = %s",
            (job_id,),
        )
        conn.commit()
    claim_finalize(job_id)


# ---------------------------------------------------------------------------- step 3: finish


def claim_finalize(job_id: int) -> None:
    """Move the job to `indexing` once nothing is left to read or embed; only one caller wins."""
    with db.connect() as conn:
        claimed = conn.execute(
            "UPDATE pgrag.ingest_jobs SET state = 'indexing', updated_at = now()"
            " WHERE id = %s AND state = 'running' AND source_done AND NOT EXISTS ("
            "   SELECT 1 FROM pgrag.documents WHERE job_id = %s AND status = 'pending')"
            " RETURNING id",
            (job_id, job_id),
        ).fetchone()
        work_id = work.add(conn, queue.FINALIZE_JOB, [job_id], job_id) if claimed else None
    if work_id is not None:
        work.send(work_id, queue.FINALIZE_JOB, [job_id])


def index_loaded_block(job_id: int) -> None:
    """Build one whole lexical block of a running job's collection (the job's loaded chunks
    have just filled one), so that the job's end has only the rest to index. Optional work:
    if it is lost, finalize does it; one block a task keeps the ingest worker free for
    other jobs' steps between blocks."""
    job = jobs.get_job(job_id)
    if job.state != "running":
        return
    with db.connect() as conn:
        indexed = lexical.build_block(conn, job.collection_id, whole=True)
    log.info("job %s: a block of %d chunks indexed for BM25 while loading", job_id, indexed)


FINALIZE_LOCK = 0x70677261  # advisory lock class for finalize steps ("pgra")


def finalize_job(job_id: int) -> None:
    """Step 3: delete missing documents, build the index if needed."""
    job = jobs.get_job(job_id)
    if job.state != "indexing":
        return
    collection = get_collection_by_id(job.collection_id)
    with db.connect(autocommit=True) as lock_conn:
        # If this worker dies mid-build, its server process notices within seconds and
        # aborts the build (CONCURRENTLY leaves an invalid index, which the next try drops)
        # instead of building on for nobody while holding the lock below.
        lock_conn.execute("SET client_connection_check_interval = '2s'")
        # A second delivery of this step waits for the first (or for its dead process to
        # let go), then does what is left.
        lock_conn.execute("SELECT pg_advisory_lock(%s, %s)", (FINALIZE_LOCK, job_id))
        if jobs.job_state(lock_conn, job_id) != "indexing":
            return
        with db.connect() as conn:
            if job.options.get("delete_missing"):
                missing = [
                    row[0]
                    for row in conn.execute(
                        "SELECT id FROM pgrag.documents WHERE collection_id = %s"
                        " AND seen_job_id IS DISTINCT FROM %s ORDER BY id FOR UPDATE",
                        (collection.id, job_id),
                    )
                ]
                lexical.delete_chunks(conn, collection.id, missing)
                conn.execute("DELETE FROM pgrag.documents WHERE id = ANY(%s)", (missing,))
                jobs.bump(conn, job_id, docs_deleted=len(missing))
        started = time.perf_counter()
        with db.connect() as conn:
            indexed = lexical.index_pending(conn, collection.id)
        # After a bulk load, do now what autovacuum would do later (small jobs leave it to
        # it): queries read df from the postings' key alone where pages are all-visible, and
        # join forward rows by key only while the statistics know the table's size.
        if job.chunks_done >= get_settings().lexical_block_chunks:
            lock_conn.execute("VACUUM (PROCESS_TOAST FALSE) pgrag.postings")
            lock_conn.execute("ANALYZE pgrag.chunk_lexemes")
        lexical_s, started = time.perf_counter() - started, time.perf_counter()
        indexing.build_index(lock_conn, collection)
        lock_conn.execute("ANALYZE pgrag.chunks")
        log.info(
            "job %s: the last %d chunks indexed for BM25 in %.1f s, HNSW index and ANALYZE"
            " in %.1f s",
            job_id,
            indexed,
            lexical_s,
            time.perf_counter() - started,
        )
        lock_conn.execute(
            "UPDATE pgrag.ingest_jobs SET state = 'done', finished_at = now(), updated_at = now()"
            " WHERE id = %s AND state = 'indexing'",
            (job_id,),
        )
