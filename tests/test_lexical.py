"""The lexical index stays exact: after re-ingests, deletes and failures, and with four embed
processes writing to one collection at once, its posting rows (built when each job ends)
equal an index built from scratch out of the stored chunks, and the job counters equal the
stored rows."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pgrag.ingest import pipeline
from pgrag.query.retrieval import retrieve
from pgrag.runtime import db
from pgrag.store import lexical
from pgrag.store.collections import get_collection
from pgrag.store.schema import Collection
from tests.conftest import plan_nodes, sample_text, stored_chunk_lexemes

pytestmark = pytest.mark.slow


def assert_lexical_index_exact(collection: Collection) -> None:
    """Posting rows, blocks and statistics equal what the stored chunks give from scratch."""
    lexemes = stored_chunk_lexemes(collection.id, collection.text_config)
    with db.connect() as conn:
        postings = conn.execute(
            "SELECT lexeme, chunk_id, tf, chunk_len FROM pgrag.lexical_postings"
            " WHERE collection_id = %s",
            (collection.id,),
        ).fetchall()
        blocks = conn.execute(
            "SELECT id, unnest(chunk_ids) FROM pgrag.lexical_blocks WHERE collection_id = %s",
            (collection.id,),
        ).fetchall()
        forward = conn.execute(
            "SELECT chunk_id, lexemes, tfs, len FROM pgrag.chunk_lexemes WHERE collection_id = %s",
            (collection.id,),
        ).fetchall()
        pending = conn.execute(
            "SELECT count(*) FROM pgrag.lexical_pending WHERE collection_id = %s",
            (collection.id,),
        ).fetchone()
        stats = conn.execute(
            "SELECT chunks, avg_len FROM pgrag.lexical_stats WHERE collection_id = %s",
            (collection.id,),
        ).fetchone()
    lengths = {cid: sum(counts.values()) for cid, counts in lexemes.items()}
    expected = {
        (lexeme, cid, tf, lengths[cid])
        for cid, counts in lexemes.items()
        for lexeme, tf in counts.items()
    }
    assert len(postings) == len(set(postings)), "a (lexeme, chunk) posting is stored twice"
    assert set(postings) == expected
    # Every chunk is in exactly one block, none is left pending, and the forward index holds
    # each chunk's lexemes.
    in_blocks = [chunk_id for _, chunk_id in blocks]
    assert sorted(in_blocks) == sorted(lexemes) and pending == (0,)
    assert {
        cid: dict(zip(lex.split(), map(int, tfs.split()), strict=True))
        for cid, lex, tfs, _ in forward
    } == lexemes
    assert {cid: length for cid, _, _, length in forward} == lengths
    assert stats is not None and stats[0] == len(lexemes)
    assert stats[1] == pytest.approx(sum(lengths.values()) / len(lexemes))


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def doc(i: int, version: int = 0) -> dict[str, str]:
    return {
        "id": f"d{i}",
        "title": f"Sheet {i}",
        "text": f"Part {i} v{version}: {sample_text(i, 12)}",
    }


def test_reingest_deletes_and_failures_keep_the_index_exact(
    worker: object, tmp_path: Path, collection_name: str, wait_job: Callable
) -> None:
    rows = [doc(i) for i in range(300)]
    first = wait_job(
        pipeline.submit(write_jsonl(tmp_path / "a.jsonl", rows), collection_name, create=True).id
    )
    assert (first.state, first.docs_done) == ("done", 300)
    collection = get_collection(collection_name)
    assert_lexical_index_exact(collection)

    # Every fifth document changes and every seventh is gone, so blocks lose some of their
    # chunks and must be rebuilt from the rest; a bad new entry fails alone.
    changed = [doc(i, 1) if i % 5 == 0 else r for i, r in enumerate(rows) if i % 7]
    source = write_jsonl(tmp_path / "b.jsonl", [*changed, {"id": "bad", "text": " "}])
    second = wait_job(pipeline.submit(source, collection_name, delete_missing=True).id)
    assert second.state == "done"
    assert second.docs_deleted == len(rows) - len(changed)
    assert second.docs_done == sum(1 for i in range(300) if i % 5 == 0 and i % 7)
    assert second.docs_failed == 1
    assert_lexical_index_exact(collection)
    top = retrieve(collection, "Part 10 v1", k=1, mode="lexical").passages[0]
    assert top.external_id == "d10"


def test_four_embed_processes_on_one_collection_stay_exact(
    own_broker: None, tmp_path: Path, collection_name: str, wait_job: Callable
) -> None:
    """Four embed processes load and re-load one collection at once, in small batches whose
    blocks they share: no deadlock, no lost counter update, an exact lexical index."""
    from tests.conftest import Worker

    home = Path(os.environ["PGRAG_HOME"])
    env = {"PGRAG_INGEST_BATCH_DOCS": "8"}
    workers = [
        Worker(home, "ingest", "lex-ingest", env),
        Worker(home, "embed", "lex-embed", env, concurrency=4),
    ]
    try:
        rows = [doc(i) for i in range(400)]
        first = wait_job(
            pipeline.submit(
                write_jsonl(tmp_path / "a.jsonl", rows), collection_name, create=True
            ).id
        )
        changed = [doc(i, 1) if i % 3 == 0 else r for i, r in enumerate(rows) if i % 11]
        second = wait_job(
            pipeline.submit(
                write_jsonl(tmp_path / "b.jsonl", changed), collection_name, delete_missing=True
            ).id
        )
    finally:
        for w in workers:
            w.stop()
    logs = "".join(w.log.read_text() for w in workers)
    assert "deadlock" not in logs.lower()
    assert (first.state, first.docs_done) == ("done", 400)
    assert (second.state, second.docs_done) == (
        "done",
        sum(1 for i in range(400) if i % 3 == 0 and i % 11),
    )
    collection = get_collection(collection_name)
    with db.connect() as conn:
        stored = conn.execute(
            "SELECT count(*) FROM pgrag.chunks WHERE collection_id = %s", (collection.id,)
        ).fetchone()
    assert stored is not None and stored[0] == len(changed)
    assert first.chunks_done == 400
    assert_lexical_index_exact(collection)
    top = retrieve(collection, "Part 3 v1", k=1, mode="lexical").passages
    assert [p.external_id for p in top] == ["d3"]


def test_block_build_reads_forward_rows_by_key_whatever_the_statistics(
    worker: object, tmp_path: Path, collection_name: str, wait_job: Callable
) -> None:
    """Statistics taken while chunk_lexemes was nearly empty (a collection dropped, then a bulk
    load before autovacuum comes back) must not make the block build scan the whole table
    once per chunk: it did, 13 s a block at 50,000 chunks."""
    job = wait_job(
        pipeline.submit(
            write_jsonl(tmp_path / "a.jsonl", [doc(i) for i in range(200)]),
            collection_name,
            create=True,
        ).id
    )
    collection = get_collection(collection_name)
    c = {"c": collection.id}
    with db.connect() as conn:
        # The collection's index undone: its chunks pending again, as a load leaves them.
        conn.execute("DELETE FROM pgrag.postings WHERE collection_id = %(c)s", c)
        conn.execute("DELETE FROM pgrag.lexical_blocks WHERE collection_id = %(c)s", c)
        conn.execute(
            "INSERT INTO pgrag.lexical_pending SELECT collection_id, chunk_id"
            " FROM pgrag.chunk_lexemes WHERE collection_id = %(c)s",
            c,
        )
        # The statistics of a bulk load's start: forward rows none, pending rows many.
        for table, rows in (("chunk_lexemes", 0), ("lexical_pending", 100_000)):
            conn.execute(
                "SELECT pg_restore_relation_stats('schemaname', 'pgrag', 'relname', %s::text,"
                " 'relpages', (pg_relation_size(%s::regclass) / 8192)::integer,"
                " 'reltuples', %s::real)",
                (table, f"pgrag.{table}", rows),
            )
        try:
            with conn.transaction(force_rollback=True):  # EXPLAIN ANALYZE runs the statement
                plan = conn.execute(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + lexical.BUILD_BLOCK,
                    c | {"b": 0, "n": 4096, "least": 1},
                ).fetchone()[0]  # type: ignore[index]
            loops = {  # of each scan, by relation or CTE
                node.get("Relation Name") or node.get("CTE Name"): node["Actual Loops"]
                for node in plan_nodes(plan[0]["Plan"])
                if "Scan" in node["Node Type"]
            }
            assert loops["picked"] == 1, loops  # read once, each chunk's forward row by key
            assert loops["chunk_lexemes"] == job.chunks_done, loops
            assert lexical.index_pending(conn, collection.id) == job.chunks_done
        finally:
            conn.execute("ANALYZE pgrag.chunk_lexemes, pgrag.lexical_pending")
    assert_lexical_index_exact(collection)


def test_whole_blocks_are_indexed_while_the_job_loads(
    own_broker: None,
    tmp_path: Path,
    collection_name: str,
    wait_job: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each time a job's loaded chunks fill a lexical block, the ingest worker builds it while
    the job still loads; the job's end builds the rest, and the index is exact."""
    from pgrag.ingest import jobs, loading
    from pgrag.runtime import queue
    from pgrag.runtime.settings import get_settings
    from tests.conftest import Worker

    home = Path(os.environ["PGRAG_HOME"])
    env = {"PGRAG_LEXICAL_BLOCK_CHUNKS": "16", "PGRAG_INGEST_BATCH_DOCS": "8"}
    workers = [Worker(home, "ingest", "blocks-ingest", env)]
    try:
        with monkeypatch.context() as m:  # this process embeds part of the job itself
            for name, value in env.items():
                m.setenv(name, value)
            get_settings.cache_clear()
            try:
                source = write_jsonl(tmp_path / "a.jsonl", [doc(i) for i in range(100)])
                job_id = pipeline.submit(source, collection_name, create=True).id
                batches = wait_for(
                    lambda: jobs.get_job(job_id).source_done and embed_batches(job_id)
                )
                assert len(batches) == 13  # of 8 documents; no embed worker runs yet
                for ids in batches[:5]:
                    loading.embed_documents(job_id, ids)
            finally:
                m.undo()
                get_settings.cache_clear()  # the later tests' settings
        loaded = jobs.get_job(job_id).chunks_done
        assert loaded >= 40
        collection = get_collection(collection_name)
        sizes = wait_for(lambda: (s := block_sizes(collection.id)) and len(s) == loaded // 16 and s)
        assert sizes == [16] * (loaded // 16)  # whole blocks only
        assert jobs.get_job(job_id).state == "running"  # 60 documents still to embed
        with db.connect() as conn:
            asked = conn.execute(
                "SELECT count(*) FROM pgrag.work WHERE job_id = %s AND task = %s",
                (job_id, queue.INDEX_BLOCK),
            ).fetchone()
        assert asked == (loaded // 16,)  # once per block filled

        workers.append(Worker(home, "embed", "blocks-embed", env))
        done = wait_job(job_id)
    finally:
        for w in workers:
            w.stop()
    assert (done.state, done.docs_done) == ("done", 100)
    assert_lexical_index_exact(collection)


def wait_for(probe: Callable[[], object], timeout: float = 60) -> Any:
    """Poll `probe` until it returns something true; returns that."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def embed_batches(job_id: int) -> list[list[int]]:
    """The document ids of each embed task queued for the job, in order."""
    from pgrag.runtime import queue

    with db.connect() as conn:
        rows = conn.execute(
            "SELECT args FROM pgrag.work WHERE job_id = %s AND task = %s ORDER BY id",
            (job_id, queue.EMBED_DOCUMENTS),
        ).fetchall()
    return [args[1] for (args,) in rows]


def block_sizes(collection_id: int) -> list[int]:
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT chunks FROM pgrag.lexical_blocks WHERE collection_id = %s ORDER BY id",
            (collection_id,),
        ).fetchall()
    return [n for (n,) in rows]
