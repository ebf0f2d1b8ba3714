"""Bulk ingestion end to end: real PostgreSQL + pgvector, real Redis, real Celery workers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pgrag.ingest import jobs, pipeline
from pgrag.ingest.sources import SourceNotFound
from pgrag.query.retrieval import search
from pgrag.runtime import db
from pgrag.store.collections import UnknownCollection, create_collection, get_collection

pytestmark = pytest.mark.slow

DOCS = {
    "security/keys.md": "# Key rotation\n\nEncryption keys are rotated every 90 days by the "
    "platform team. An emergency rotation happens within four hours of a suspected leak.",
    "ops/backups.txt": "Backups are taken every night. Daily snapshots are kept for 35 days and "
    "monthly snapshots for 13 months. Restores are tested every quarter.",
    "people/leave.md": "# Parental leave\n\nEvery parent gets 20 weeks of paid parental leave, "
    "which can be split into two blocks within the first year.",
    "web/travel.html": "<html><head><title>Travel policy</title><script>var x = 1;</script></head>"
    "<body><h1>Travel</h1><p>Economy class is booked for flights under six hours; business class "
    "is allowed for longer flights.</p></body></html>",
}
ROWS = [
    {
        "id": "faq-1",
        "title": "Office hours",
        "text": "The Lisbon office is open from 8am to 7pm.",
        "metadata": {"lang": "en"},
    },
    {
        "id": "faq-2",
        "title": "Coffee",
        "text": "Free coffee is served on the third floor kitchen.",
        "metadata": {"lang": "en"},
    },
]


def write_corpus(root: Path, docs: dict[str, str] = DOCS) -> Path:
    for rel, text in docs.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "faq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


def scalar(sql: str, *params: object) -> object:
    with db.connect() as conn:
        row = conn.execute(sql, params).fetchone()
        assert row is not None
        return row[0]


def test_folder_ingest_end_to_end(
    worker: object, corpus: Path, collection_name: str, wait_job: Callable
) -> None:
    job = pipeline.submit(corpus, collection_name, create=True)
    done = wait_job(job.id)
    assert (done.state, done.error) == ("done", None)
    assert (done.docs_total, done.docs_done, done.docs_failed, done.docs_skipped) == (6, 6, 0, 0)
    collection = get_collection(collection_name)

    with db.connect() as conn:
        ids = {
            r[0]
            for r in conn.execute(
                "SELECT external_id FROM pgrag.documents"
                " WHERE collection_id = %s AND status = 'embedded'",
                (collection.id,),
            )
        }
        assert ids == {*DOCS, "faq.jsonl#faq-1", "faq.jsonl#faq-2"}
        vectors = [
            r[0]
            for r in conn.execute(
                "SELECT embedding FROM pgrag.chunks WHERE collection_id = %s", (collection.id,)
            )
        ]
        title = conn.execute(
            "SELECT title FROM pgrag.documents WHERE external_id = 'web/travel.html'"
            " AND collection_id = %s",
            (collection.id,),
        ).fetchone()
    assert len(vectors) == done.chunks_done >= 6
    assert {len(v.to_numpy()) for v in vectors} == {384}
    np.testing.assert_allclose([np.linalg.norm(v.to_numpy()) for v in vectors], 1.0, atol=1e-3)
    assert title == ("Travel policy",)
    html_text = scalar("SELECT text FROM pgrag.documents WHERE external_id = 'web/travel.html'")
    assert "var x" not in str(html_text)

    # The collection's own HNSW index exists and the search query uses it.
    assert (
        scalar("SELECT count(*) FROM pg_indexes WHERE indexname = %s", collection.index_name) == 1
    )
    from pgrag.query.retrieval import dense_sql, embed_query

    with db.connect() as conn:
        # On a handful of rows the planner rightly prefers an exact scan and a sort; hold it
        # to the HNSW path, the only one that serves the ORDER BY without a sort.
        conn.execute("SET enable_sort = off")
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN " + dense_sql(collection), {"q": embed_query(collection, "keys"), "k": 3}
            )
        )
    assert f"Index Scan using {collection.index_name}" in plan, plan

    expected = {
        "how often are encryption keys rotated": "security/keys.md",
        "how long are daily backup snapshots kept": "ops/backups.txt",
        "weeks of paid leave for new parents": "people/leave.md",
        "can I fly business class": "web/travel.html",
        "when is the Lisbon office open": "faq.jsonl#faq-1",
    }
    for question, external_id in expected.items():
        assert search(question, collection_name, k=3)[0].external_id == external_id, question


def test_reingest_skips_unchanged_replaces_changed_deletes_missing(
    worker: object, corpus: Path, collection_name: str, wait_job: Callable
) -> None:
    first = wait_job(pipeline.submit(corpus, collection_name, create=True).id)
    assert first.docs_done == 6
    collection = get_collection(collection_name)

    def chunk_ids(external_id: str) -> list[int]:
        with db.connect() as conn:
            return [
                r[0]
                for r in conn.execute(
                    "SELECT c.id FROM pgrag.chunks c JOIN pgrag.documents d ON d.id = c.document_id"
                    " WHERE d.collection_id = %s AND d.external_id = %s ORDER BY c.id",
                    (collection.id, external_id),
                )
            ]

    kept_before = chunk_ids("security/keys.md")
    (corpus / "ops/backups.txt").write_text("Backups are now kept for 60 days.")
    (corpus / "people/leave.md").unlink()
    (corpus / "new.md").write_text("# New\n\nA brand new page about the cafeteria menu.")

    second = wait_job(pipeline.submit(corpus, collection_name, delete_missing=True).id)
    assert (second.state, second.docs_done, second.docs_skipped, second.docs_deleted) == (
        "done",
        2,
        4,
        1,
    )
    assert chunk_ids("security/keys.md") == kept_before  # not re-embedded
    assert chunk_ids("people/leave.md") == []
    changed = scalar(
        "SELECT string_agg(c.text, ' ') FROM pgrag.chunks c"
        " JOIN pgrag.documents d ON d.id = c.document_id"
        " WHERE d.collection_id = %s AND d.external_id = 'ops/backups.txt'",
        collection.id,
    )
    assert changed == "Backups are now kept for 60 days."
    assert search("cafeteria menu", collection_name, k=1)[0].external_id == "new.md"

    third = wait_job(pipeline.submit(corpus, collection_name).id)
    assert (third.docs_done, third.docs_skipped, third.chunks_done) == (0, 6, 0)


def test_bad_input_gets_error_rows_and_the_rest_goes_on(
    worker: object, corpus: Path, collection_name: str, wait_job: Callable
) -> None:
    (corpus / "bad-utf8.txt").write_bytes(b"caf\xe9 au lait")
    (corpus / "binary.txt").write_bytes(b"\x00\x01\x02 garbage \x00")
    (corpus / "empty.md").write_text("   \n")
    (corpus / "corrupt.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (corpus / "huge.txt").write_text("word " * (5 * 1024 * 1024))  # 25 MB, over the 20 MB limit
    (corpus / "rows.jsonl").write_text(
        '{"id": "ok", "text": "A fine row about kittens."}\n{not json\n{"id": "no-text"}\n'
    )
    outside = corpus.parent / "secret.txt"
    outside.write_text("top secret outside the source")
    (corpus / "link.txt").symlink_to(outside)

    job = wait_job(pipeline.submit(corpus, collection_name, create=True).id)

    assert job.state == "done"
    errors = {e.ref: e.reason for e in jobs.job_errors(job.id)}
    assert set(errors) == {
        "bad-utf8.txt",
        "binary.txt",
        "empty.md",
        "corrupt.pdf",
        "huge.txt",
        "rows.jsonl:2",
        "rows.jsonl:3",
        "link.txt",
    }
    assert "UTF-8" in errors["bad-utf8.txt"]
    assert "NUL" in errors["binary.txt"]
    assert "empty" in errors["empty.md"]
    assert "PDF" in errors["corrupt.pdf"]
    assert "limit" in errors["huge.txt"]
    assert "JSON" in errors["rows.jsonl:2"]
    assert "text" in errors["rows.jsonl:3"]
    assert "outside" in errors["link.txt"]
    assert (job.docs_done, job.docs_failed) == (7, 8)
    assert scalar("SELECT count(*) FROM pgrag.chunks WHERE text LIKE %s", "%top secret%") == 0


def test_bad_path_and_unknown_collection_fail_before_any_work(
    services: Path, corpus: Path, collection_name: str
) -> None:
    before = len(jobs.list_jobs(limit=1000))
    with pytest.raises(SourceNotFound, match="does not exist"):
        pipeline.submit(corpus / "nope", collection_name, create=True)
    with pytest.raises(UnknownCollection, match="does not exist"):
        pipeline.submit(corpus, collection_name)
    assert len(jobs.list_jobs(limit=1000)) == before


def test_worker_killed_mid_embed_job_still_ends_exact(
    own_broker: None, tmp_path: Path, collection_name: str, wait_job: Callable
) -> None:
    from tests.conftest import Worker

    docs = {
        f"doc{i:02}.txt": " ".join(
            f"Sentence {j} of document {i} talks about topic {i * j}." for j in range(80)
        )
        for i in range(40)
    }
    corpus = write_corpus(tmp_path / "many", docs)
    collection = create_collection(collection_name)
    home = Path(os.environ["PGRAG_HOME"])
    env = {
        "PGRAG_INGEST_BATCH_DOCS": "8",  # embed tasks of a second or more each
        # Short leases, swept every second: the killed task's lease expires in seconds.
        "PGRAG_LEASE_S": "6",
        "PGRAG_LOST_AFTER_S": "6",
        "PGRAG_SWEEP_S": "1",
    }
    first = Worker(home, "ingest,embed", "doomed", env)
    job = pipeline.submit(corpus, collection_name)

    # Kill once one batch is loaded and the next embed task has just started.
    received = re.compile(r"embed_documents\[([\w-]+)\] received")
    deadline = time.monotonic() + 120
    while jobs.get_job(job.id).chunks_done == 0 or len(received.findall(first.log.read_text())) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    first.kill()
    assert not jobs.get_job(job.id).finished
    second = Worker(home, "ingest,embed", "survivor", env)
    try:
        # The killed task's work is sent again (by the sweeper once its lease expires, or by
        # the broker after its visibility timeout): the job ends, exact.
        done = wait_job(job.id, timeout=300)
    finally:
        second.stop()

    from pgrag.inference.embedding import load_embedder
    from pgrag.ingest.chunking import chunk_text

    tokenizer = load_embedder(collection.model).tokenizer
    expected = sum(
        len(
            chunk_text(
                t, tokenizer, chunk_size=collection.chunk_size, overlap=collection.chunk_overlap
            )
        )
        for t in [*docs.values(), *(r["text"] for r in ROWS)]
    )
    assert (done.state, done.docs_done, done.docs_failed) == ("done", 42, 0)
    assert done.chunks_done == expected
    with db.connect() as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (document_id, ord)) FROM pgrag.chunks"
            " WHERE collection_id = %s",
            (collection.id,),
        ).fetchone()
    assert total == distinct == expected


def test_two_models_with_different_dimensions_coexist(
    worker: object, corpus: Path, collection_name: str, tmp_path: Path, wait_job: Callable
) -> None:
    from sentence_transformers import SentenceTransformer, models

    from pgrag.inference.weights import resolve_model

    # A real second model: MiniLM with a 64-d projection, saved locally.
    base = SentenceTransformer(
        resolve_model("sentence-transformers/all-MiniLM-L6-v2"), device="cpu"
    )
    small = SentenceTransformer(modules=[*base, models.Dense(384, 64)], device="cpu")
    small_path = tmp_path / "minilm-64"
    small.save(str(small_path))

    a = create_collection(collection_name + "_a")
    b = create_collection(collection_name + "_b", model=str(small_path))
    assert (a.dim, b.dim) == (384, 64)
    for c in (a, b):
        assert wait_job(pipeline.submit(corpus, c.name).id).state == "done"
    with db.connect() as conn:
        dims = dict(
            conn.execute(
                "SELECT collection_id, vector_dims(embedding) FROM pgrag.chunks"
                " WHERE collection_id IN (%s, %s) GROUP BY 1, 2",
                (a.id, b.id),
            ).fetchall()
        )
        indexes = {
            r[0]
            for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'pgrag'")
        }
    assert dims == {a.id: 384, b.id: 64}
    assert {a.index_name, b.index_name} <= indexes
    assert search("encryption key rotation", b.name, k=3)


def test_cli_ingest_shows_progress_and_jobs(
    worker: object, corpus: Path, collection_name: str
) -> None:
    def pgrag(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pgrag", *args], capture_output=True, text=True, timeout=300
        )

    run = pgrag("ingest", str(corpus), "--collection", collection_name, "--create")
    assert run.returncode == 0, run.stderr
    assert "job " in run.stdout and "done" in run.stdout
    assert "doc" in run.stderr  # the progress bar
    job_id = run.stdout.split()[1].rstrip(":")
    listing = pgrag("jobs")
    assert job_id in listing.stdout
    shown = pgrag("jobs", job_id)
    assert "6 loaded" in shown.stdout
    unknown = pgrag("ingest", str(corpus), "--collection", collection_name + "_nope")
    assert unknown.returncode == 1 and "does not exist" in unknown.stderr
    hits = pgrag("search", "paid parental leave", "--collection", collection_name, "-k", "2")
    assert "people/leave.md" in hits.stdout.splitlines()[0]


def test_ingest_worker_killed_mid_read_resumes_from_its_checkpoint(
    own_broker: None, tmp_path: Path, collection_name: str, wait_job: Callable
) -> None:
    """The reading task dies part way through the source: its redelivery resumes after the
    last committed batch, and every document is read, counted and embedded exactly once."""
    from tests.conftest import Worker

    n = 2000
    source = tmp_path / "notes.jsonl"
    source.write_text(
        "".join(
            json.dumps({"id": f"n{i}", "text": f"Note {i} about item {i}."}) + "\n"
            for i in range(n)
        )
    )
    create_collection(collection_name)
    home = Path(os.environ["PGRAG_HOME"])
    env = {"PGRAG_INGEST_BATCH_DOCS": "10"}  # 200 checkpoints along the source
    # Only a reader: the embed tasks it fans out wait in the broker.
    reader = Worker(home, "ingest", "doomed-reader", env)
    job = pipeline.submit(source, collection_name)
    deadline = time.monotonic() + 120
    while jobs.get_job(job.id).docs_read < 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    reader.kill()
    killed_at = jobs.get_job(job.id)
    assert not killed_at.source_done, "the source was read whole before the kill: no resume"
    assert 0 < killed_at.docs_read < n

    survivor = Worker(home, "ingest,embed", "survivor-reader", env)
    try:
        done = wait_job(job.id, timeout=300)
    finally:
        survivor.stop()
    assert "ingest_source" in survivor.log.read_text()  # the killed read was delivered again
    assert (done.state, done.error) == ("done", None)
    assert (done.docs_total, done.docs_read, done.docs_done, done.docs_failed) == (n, n, n, 0)
    assert done.chunks_done == n
    with db.connect() as conn:
        documents, chunks, distinct = conn.execute(
            "SELECT (SELECT count(*) FROM pgrag.documents WHERE job_id = %(j)s),"
            " count(*), count(DISTINCT document_id) FROM pgrag.chunks"
            " WHERE collection_id = %(c)s",
            {"j": job.id, "c": killed_at.collection_id},
        ).fetchone()
    assert documents == chunks == distinct == n


def test_cancel_stops_a_running_job(own_broker: None, tmp_path: Path, collection_name: str) -> None:
    """`pgrag jobs cancel` ends a job at once; the workers skip what was left of it."""
    from click.testing import CliRunner

    from pgrag.cli import main
    from pgrag.runtime import queue
    from pgrag.runtime.streaming import connection
    from tests.conftest import Worker

    docs = {
        f"doc{i:02}.txt": " ".join(f"Sentence {j} of document {i}." for j in range(150))
        for i in range(40)
    }
    corpus = write_corpus(tmp_path / "many", docs)
    collection = create_collection(collection_name)
    home = Path(os.environ["PGRAG_HOME"])
    w = Worker(home, "ingest,embed", "canceller", {"PGRAG_INGEST_BATCH_DOCS": "4"})
    try:
        job = pipeline.submit(corpus, collection_name)
        deadline = time.monotonic() + 120
        while jobs.get_job(job.id).chunks_done == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        result = CliRunner().invoke(main, ["jobs", "cancel", str(job.id)])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"job {job.id}: cancelled"
        # The tasks still queued for the job run and find it cancelled.
        deadline = time.monotonic() + 120
        while connection().llen(queue.QUEUES[queue.EMBED_DOCUMENTS]) > 0:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        w.stop()  # a warm shutdown: the task in flight finishes first
    final = jobs.get_job(job.id)
    assert final.state == "cancelled" and final.finished_at is not None
    with db.connect() as conn:
        stored, pending = conn.execute(
            "SELECT (SELECT count(*) FROM pgrag.chunks WHERE collection_id = %(c)s),"
            " (SELECT count(*) FROM pgrag.documents WHERE job_id = %(j)s AND status = 'pending')",
            {"c": collection.id, "j": job.id},
        ).fetchone()
    assert stored == final.chunks_done > 0  # the counters agree with what was stored
    assert pending > 0 and final.docs_done < 42  # the rest was skipped, not embedded
    again = CliRunner().invoke(main, ["jobs", "cancel", str(job.id)])
    assert again.output.strip() == f"job {job.id}: cancelled"


def test_an_embed_task_finds_its_documents_by_key_whatever_the_statistics(
    worker: object, tmp_path: Path, collection_name: str, wait_job: Callable
) -> None:
    """Statistics taken while the documents table was empty (a first bulk load before
    autovacuum comes back) must not make each embed task read all of its job's pending
    documents through their partial index, as the statement before did: work that grows with
    the job."""
    from pgrag.ingest.loading import PENDING_BY_ID
    from tests.conftest import plan_nodes

    source = tmp_path / "docs.jsonl"
    source.write_text(json.dumps({"id": "d0", "text": "A note."}) + "\n")
    job = wait_job(pipeline.submit(source, collection_name, create=True).id)
    collection = get_collection(collection_name)
    with db.connect() as conn:
        try:
            with conn.transaction(force_rollback=True):
                ids = [  # a bulk load's pending documents
                    row[0]
                    for row in conn.execute(
                        "INSERT INTO pgrag.documents (collection_id, external_id, content_hash,"
                        " text, status, job_id) SELECT %s, 'p' || g, '\\x00', repeat('word ', 200),"
                        " 'pending', %s FROM generate_series(1, 20000) g RETURNING id",
                        (collection.id, job.id),
                    )
                ]
                conn.execute(
                    "SELECT pg_restore_relation_stats('schemaname', 'pgrag', 'relname',"
                    " 'documents', 'relpages', 0, 'reltuples', 0::real)"
                )
                task = sorted(ids[5000:5128])
                for lock in ("", " FOR UPDATE"):
                    statement = "SELECT d.id" + PENDING_BY_ID.format(lock=lock)
                    plan = conn.execute(
                        "EXPLAIN (FORMAT JSON) " + statement, (task, job.id)
                    ).fetchone()[0]  # type: ignore[index]
                    used = {node.get("Index Name") for node in plan_nodes(plan[0]["Plan"])}
                    assert "documents_pkey" in used and "documents_pending_idx" not in used, used
                    found = conn.execute(statement, (task, job.id)).fetchall()
                    assert [row[0] for row in found] == task
        finally:
            conn.execute("ANALYZE pgrag.documents")
