"""Recovery in seconds: the ledger in PostgreSQL (`pgrag.work`) heals a killed worker and a
wiped broker, with the broker's own visibility timeout (an hour) out of the way.

Each test has a Redis database of its own and its own workers, with short leases."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psycopg.types.json import Jsonb

from pgrag.client import follow
from pgrag.ingest import jobs, pipeline
from pgrag.query import answering
from pgrag.runtime import db, queue, streaming
from pgrag.store import indexing
from pgrag.store.collections import create_collection, get_collection
from pgrag.store.schema import IngestJob
from tests.conftest import QUESTIONS, Worker, sample_text

pytestmark = pytest.mark.slow

# Leases of 6 s and a sweep every second; the broker would wait an hour.
ENV = {
    "PGRAG_LEASE_S": "6",
    "PGRAG_LOST_AFTER_S": "6",
    "PGRAG_SWEEP_S": "1",
    "PGRAG_VISIBILITY_TIMEOUT_S": "3600",
    "PGRAG_INGEST_BATCH_DOCS": "50",
}


def write_source(path: Path, n: int) -> Path:
    rows = ({"id": f"n{i}", "text": sample_text(i, 60)} for i in range(n))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pgrag_cli(*args: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "pgrag", *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def running_embed_work(job_id: int, worker: Worker) -> bool:
    """Whether `worker` holds the lease of one of the job's embed batches."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pgrag.work WHERE job_id = %s AND task = %s"
            " AND state = 'running' AND owner = ANY(%s)",
            (job_id, queue.EMBED_DOCUMENTS, worker.owners()),
        ).fetchone()
    return bool(row and row[0])


def assert_exact(job_id: int, n: int) -> IngestJob:
    done = jobs.get_job(job_id)
    assert (done.state, done.error) == ("done", None)
    assert (done.docs_read, done.docs_done, done.docs_failed) == (n, n, 0)
    with db.connect() as conn:
        chunks, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (document_id, ord)) FROM pgrag.chunks"
            " WHERE collection_id = %s",
            (done.collection_id,),
        ).fetchone()  # type: ignore[misc]
    assert chunks == distinct == done.chunks_done == n  # one chunk each, none twice
    return done


@contextlib.contextmanager
def silent_llm(timeout_s: int) -> Iterator[dict[str, str]]:
    """A query worker's settings for an LLM endpoint that accepts connections (the kernel
    does) and never answers, with generation given `timeout_s`."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        yield {
            **ENV,
            "PGRAG_GENERATOR": "openai",
            "PGRAG_OPENAI_BASE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
            "PGRAG_OPENAI_MODEL": "stand-in",
            "PGRAG_GENERATE_TIMEOUT_S": str(timeout_s),
        }


def recoveries(job_id: int) -> set[str]:
    """Why the sweeper sent the job's work again: every reason in the recovery log."""
    return set(jobs.job_recoveries(job_id))


@pytest.mark.parametrize("survivor", [False, True], ids=["restarted", "survivor"])
def test_killed_embed_worker_costs_a_lease_not_an_hour(
    own_broker: None, tmp_path: Path, collection_name: str, survivor: bool
) -> None:
    """SIGKILL of an embed worker's whole process group in the middle of a batch: the batch
    is taken over by a new worker, or by a second one that was running all along."""
    n = 600
    source = write_source(tmp_path / "notes.jsonl", n)
    create_collection(collection_name)
    home = Path(os.environ["PGRAG_HOME"])
    reader = Worker(home, "ingest", "rec-ingest", ENV)
    doomed = Worker(home, "embed", "rec-doomed", ENV)
    others = [Worker(home, "embed", "rec-survivor", ENV)] if survivor else []
    try:
        job = pipeline.submit(source, collection_name)
        wait_until(lambda: running_embed_work(job.id, doomed), 120, "a batch in flight there")
        doomed.kill()
        killed = time.monotonic()
        if not survivor:
            others.append(Worker(home, "embed", "rec-new", ENV))
        wait_until(lambda: jobs.get_job(job.id).finished, 240, "the job to end")
        took = time.monotonic() - killed
    finally:
        for w in [reader, doomed, *others]:
            w.stop()
    assert_exact(job.id, n)
    assert "lease expired" in recoveries(job.id)
    assert took < 120, f"{took:.0f} s from the kill to done"
    shown = pgrag_cli("jobs", str(job.id))  # with the count of each reason
    assert "lease expired: " in shown, shown
    status = pgrag_cli("status")
    assert "postgres  up" in status and "redis     up" in status, status


def test_broker_wiped_mid_job_ends_done_and_exact(
    own_broker: None, tmp_path: Path, collection_name: str
) -> None:
    """The broker loses every message (its Redis database flushed) while the job runs: the
    sweeper finds the work that PostgreSQL still has queued and sends it again."""
    n = 600
    source = write_source(tmp_path / "notes.jsonl", n)
    create_collection(collection_name)
    home = Path(os.environ["PGRAG_HOME"])
    workers = [Worker(home, "ingest", "wipe-ingest", ENV), Worker(home, "embed", "wipe-embed", ENV)]
    try:
        job = pipeline.submit(source, collection_name)
        wait_until(lambda: jobs.get_job(job.id).source_done, 120, "the source to be read")
        with queue._client().connection_for_write() as conn:
            conn.default_channel.client.flushdb()
        assert jobs.get_job(job.id).docs_done < n, "every batch was done before the wipe"
        wait_until(lambda: jobs.get_job(job.id).finished, 240, "the job to end")
    finally:
        for w in workers:
            w.stop()
    assert_exact(job.id, n)
    assert "message lost" in recoveries(job.id)


def test_killed_query_worker_hands_its_question_to_another(kb: str, own_broker: None) -> None:
    """A query worker SIGKILLed while it answers (its LLM endpoint accepts and never replies):
    another worker answers the question from the start, and the reader is told to drop the
    pieces it had. (How long that takes is bench/recovery.py's business, not a test's.)"""
    home = Path(os.environ["PGRAG_HOME"])
    with silent_llm(timeout_s=600) as stalled:
        doomed = Worker(home, "query", "rec-query-doomed", stalled)
        try:
            question, document = QUESTIONS[0]
            query_id = answering.submit(question, kb)
            events = follow(query_id)
            seen = [next(events)]
            while not (seen[-1].type == "status" and seen[-1].data.get("state") == "generating"):
                seen.append(next(events))
            doomed.kill()
        finally:
            doomed.stop()  # killed already, unless the test failed before
        other = Worker(home, "query", "rec-query-other", {**ENV, "PGRAG_GENERATOR": "extractive"})
        try:
            seen.extend(events)
        finally:
            other.stop()
    kinds = [e.type for e in seen]
    assert kinds[-1] == "done", kinds
    assert any(e.type == "status" and e.data.get("state") == "restarted" for e in seen)
    assert seen[-1].data["citations"][0]["external_id"] == document


def test_ingest_worker_killed_mid_index_build(
    own_broker: None, tmp_path: Path, collection_name: str
) -> None:
    """The worker building a collection's first HNSW index dies: the server aborts the
    orphaned build, and the finalize step, sent again, drops the invalid index and builds it."""
    n = 2000
    source = write_source(tmp_path / "notes.jsonl", n)
    collection = create_collection(collection_name)
    with db.connect() as conn:  # a slow build, to be caught in the middle
        conn.execute(
            "UPDATE pgrag.collections SET hnsw_m = 48, hnsw_ef_construction = 800 WHERE id = %s",
            (collection.id,),
        )
    home = Path(os.environ["PGRAG_HOME"])
    doomed = Worker(home, "ingest", "build-doomed", ENV)
    workers = [doomed, Worker(home, "embed", "build-embed", ENV)]

    def building() -> bool:
        with db.connect() as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_progress_create_index").fetchone()
        return bool(row and row[0])

    try:
        job = pipeline.submit(source, collection_name)
        wait_until(building, 240, "the index build")
        doomed.kill()
        workers.append(Worker(home, "ingest", "build-new", ENV))
        wait_until(lambda: jobs.get_job(job.id).finished, 300, "the job to end")
    finally:
        for w in workers:
            w.stop()
    assert_exact(job.id, n)
    with db.connect() as conn:
        assert indexing.index_state(conn, get_collection(collection_name)) == "valid"
    assert "lease expired" in recoveries(job.id)


def test_postgres_restarted_mid_job_ends_done_and_exact(
    own_broker: None, tmp_path: Path, collection_name: str
) -> None:
    """The server restarts under the workers: their failed statements are retried or their
    work sent again, and the job ends with exact counts."""
    from pgrag.runtime import services
    from pgrag.runtime.settings import get_settings

    n = 600
    source = write_source(tmp_path / "notes.jsonl", n)
    create_collection(collection_name)
    home = Path(os.environ["PGRAG_HOME"])
    workers = [Worker(home, "ingest", "pg-ingest", ENV), Worker(home, "embed", "pg-embed", ENV)]
    try:
        job = pipeline.submit(source, collection_name)
        wait_until(lambda: jobs.get_job(job.id).docs_done > 0, 120, "the first batch")
        assert services.stop_postgres(get_settings())
        time.sleep(2)
        services.start_postgres(get_settings())
        wait_until(lambda: services.embedded_postgres_url(get_settings()) is not None, 60, "up")
        wait_until(lambda: jobs.get_job(job.id).finished, 300, "the job to end")
    finally:
        for w in workers:
            w.stop()
    assert_exact(job.id, n)


def test_a_message_held_by_a_worker_is_never_taken_for_lost(
    own_broker: None, tmp_path: Path, collection_name: str
) -> None:
    """A worker took the job's message and has not started it (its pool process paused, as a
    worker still loading its model would be): the message is held, not lost, however long
    the work stays queued. The sweeper sends nothing again and records no recovery; the job
    runs once the worker goes on."""
    n = 50
    source = write_source(tmp_path / "notes.jsonl", n)
    create_collection(collection_name)
    home = Path(os.environ["PGRAG_HOME"])
    reader = Worker(home, "ingest", "held-ingest", ENV)
    pool = [pid for pid in reader.pids() if pid != reader.proc.pid]
    workers = [reader]
    try:
        for pid in pool:
            os.kill(pid, signal.SIGSTOP)
        job = pipeline.submit(source, collection_name)
        wait_until(lambda: bool(queue.held_work(3600)), 60, "the worker to take the message")
        time.sleep(2 * float(ENV["PGRAG_LOST_AFTER_S"]))  # sweeps every second meanwhile
        with db.connect() as conn:
            state = conn.execute(
                "SELECT state FROM pgrag.work WHERE job_id = %s", (job.id,)
            ).fetchone()
        assert state == ("queued",)
        assert recoveries(job.id) == set()
        for pid in pool:
            os.kill(pid, signal.SIGCONT)
        workers.append(Worker(home, "embed", "held-embed", ENV))
        wait_until(lambda: jobs.get_job(job.id).finished, 240, "the job to end")
    finally:
        for pid in pool:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for w in workers:
            w.stop()
    assert_exact(job.id, n)
    assert recoveries(job.id) == set()


def test_a_paused_worker_changes_nothing_once_its_lease_is_taken_over(
    kb: str, own_broker: None
) -> None:
    """A query worker paused (SIGSTOP) past its lease while it waits on its LLM: another
    worker takes the question over and answers it. Resumed, the stale worker finds its lease
    lost (its request times out and it would record a failure) and writes nothing: not to
    the answer stream, not to the question's row, not to the ledger."""
    home = Path(os.environ["PGRAG_HOME"])
    with silent_llm(timeout_s=20) as stalled:
        stale = Worker(home, "query", "fence-stale", stalled)
        try:
            query_id = answering.submit(QUESTIONS[0][0], kb)
            events = follow(query_id)
            while not ((e := next(events)).type == "status" and e.data["state"] == "generating"):
                pass
            with stale.frozen():
                other = Worker(
                    home, "query", "fence-other", {**ENV, "PGRAG_GENERATOR": "extractive"}
                )
                try:
                    assert [e for e in events][-1].type == "done"
                finally:
                    other.stop()
                answered = list(streaming.read(query_id, timeout_s=10))
                row = answering.get_query(query_id)
            wait_until(lambda: "lease lost" in stale.log.read_text(), 120, "the stale worker")
        finally:
            stale.stop()
    assert any(e.type == "status" and e.data.get("state") == "restarted" for e in answered)
    assert list(streaming.read(query_id, timeout_s=10)) == answered  # nothing added
    after = answering.get_query(query_id)
    assert (after.state, after.answer, after.finished_at) == ("done", row.answer, row.finished_at)
    assert row.options["generator"] == "extractive"
    with db.connect() as conn:
        ledger = conn.execute(
            "SELECT state, attempts FROM pgrag.work WHERE args = %s",
            (Jsonb([str(query_id)]),),
        ).fetchone()
    assert ledger == ("done", 2)
