"""The psql inspection layer (migration 0003) on a real ingested collection.

The collection is the sample corpus (examples/corpus) plus two planted pairs of documents
whose texts differ by one character and one file the reader rejects, ingested once for the
module by the real Celery worker. Expected answers come from the stored embeddings with
numpy, never from the functions under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgrag.ingest import jobs, pipeline
from pgrag.query.retrieval import embed_query
from pgrag.runtime import db
from pgrag.store.collections import get_collection
from pgrag.store.schema import Collection

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "corpus"
NAME = "inspect_kb"
CAFETERIA = (
    "The staff cafeteria on the fifth floor serves a hot lunch every weekday from noon "
    "until two, and vegetarian dishes are always on the menu."
)
BIKES = (
    "Bicycles can be parked in the basement garage, which opens at seven in the morning; "
    "showers and lockers are next to the garage entrance."
)
PLANTED = [
    {"id": "cafe-a", "title": "Cafeteria", "text": CAFETERIA},
    {"id": "cafe-b", "title": "Cafeteria", "text": CAFETERIA.replace("menu.", "menu,")},
    {"id": "bikes-a", "title": "Bicycles", "text": BIKES},
    {"id": "bikes-b", "title": "Bicycles", "text": BIKES.replace(", which", "; which")},
]
DUPLICATE_PAIRS = {
    ("planted.jsonl#cafe-a", "planted.jsonl#cafe-b"),
    ("planted.jsonl#bikes-a", "planted.jsonl#bikes-b"),
}


def wait_done(job_id: int, timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.get_job(job_id)
        if job.finished:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {jobs.get_job(job_id).state} after {timeout}s")


@pytest.fixture(scope="module")
def kb(worker: object, tmp_path_factory: pytest.TempPathFactory) -> Collection:
    root = tmp_path_factory.mktemp("inspection") / "corpus"
    shutil.copytree(EXAMPLES, root)
    (root / "planted.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PLANTED))
    (root / "broken.txt").write_bytes(b"\x00\x01 not text \x00")
    job = wait_done(pipeline.submit(root, NAME, create=True).id)
    assert (job.state, job.docs_failed) == ("done", 1)
    return get_collection(NAME)


@pytest.fixture
def conn(services: Path) -> Iterator[psycopg.Connection]:
    """An autocommit connection: every statement sees the latest data and time."""
    with db.connect(autocommit=True) as c:
        yield c


def rows(conn: psycopg.Connection, query: str, *params: Any) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute(query, params).fetchall()


def scalar(conn: psycopg.Connection, query: str, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def embeddings(conn: psycopg.Connection, collection: Collection) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids, unit embeddings) of a collection, from the table."""
    found = conn.execute(
        "SELECT id, embedding FROM pgrag.chunks WHERE collection_id = %s ORDER BY id",
        (collection.id,),
    ).fetchall()
    ids = np.array([r[0] for r in found])
    vectors = np.stack([r[1].to_numpy().astype(np.float64) for r in found])
    return ids, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force(
    ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int, leave_out: int | None = None
) -> tuple[list[int], np.ndarray]:
    """The exact k nearest chunks by cosine distance, in numpy."""
    query = query / np.linalg.norm(query)
    distances = 1.0 - vectors @ query
    order = [i for i in np.argsort(distances, kind="stable") if ids[i] != leave_out][:k]
    return [int(ids[i]) for i in order], distances[order]


def index_scans(conn: psycopg.Connection, collection: Collection) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT idx_scan FROM pg_stat_user_indexes"
        " WHERE schemaname = 'pgrag' AND indexrelname = %s",
        (collection.index_name,),
    ).fetchone()
    assert row is not None
    return int(row[0])


def flush_stats(conn: psycopg.Connection) -> None:
    """Make this backend publish its index counters now rather than within a second or so."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


# ---------------------------------------------------------------------------- schema


def test_every_object_of_the_schema_has_a_comment(kb: Collection, conn: psycopg.Connection) -> None:
    relations = rows(
        conn,
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'pgrag'::regnamespace"
        " AND c.relkind IN ('r', 'v', 'm') AND obj_description(c.oid, 'pg_class') IS NULL",
    )
    columns = rows(
        conn,
        "SELECT c.relname, a.attname FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid"
        " WHERE c.relnamespace = 'pgrag'::regnamespace AND c.relkind IN ('r', 'v', 'm')"
        " AND a.attnum > 0 AND NOT a.attisdropped AND col_description(c.oid, a.attnum) IS NULL",
    )
    functions = rows(
        conn,
        "SELECT p.oid::regprocedure::text AS f FROM pg_proc p"
        " WHERE p.pronamespace = 'pgrag'::regnamespace"
        " AND obj_description(p.oid, 'pg_proc') IS NULL",
    )
    assert (relations, columns, functions) == ([], [], [])
    views = {
        r["relname"]
        for r in rows(
            conn,
            "SELECT relname FROM pg_class WHERE relkind = 'v'"
            " AND relnamespace = 'pgrag'::regnamespace",
        )
    }
    assert views >= {"collection_stats", "job_progress", "ingest_error_log", "query_log"}


# ---------------------------------------------------------------------------- views


def test_collection_stats(kb: Collection, conn: psycopg.Connection) -> None:
    (stats,) = rows(conn, "SELECT * FROM pgrag.collection_stats WHERE collection = %s", NAME)
    chunks = scalar(conn, "SELECT count(*) FROM pgrag.chunks WHERE collection_id = %s", kb.id)
    documents = sum(1 for p in EXAMPLES.rglob("*") if p.is_file() and p.suffix != ".jsonl")
    documents += sum(1 for _ in (EXAMPLES / "faq.jsonl").open()) + len(PLANTED)
    assert stats["documents"] == stats["embedded"] == documents
    assert (stats["pending"], stats["failed"]) == (0, 0)
    assert stats["chunks"] == chunks > documents
    assert (stats["model"], stats["dim"]) == (kb.model, 384)
    assert (stats["index_name"], stats["index_valid"]) == (kb.index_name, True)
    assert stats["index_bytes"] > 0 and stats["index_size"].endswith("kB")
    # ~384 float4 + text per chunk: the estimate is of the right size.
    assert stats["chunks"] * 1536 < stats["chunks_bytes"] < stats["chunks"] * 8000
    assert stats["documents_bytes"] > 0
    last_job = max(j.id for j in jobs.list_jobs(limit=1000) if j.collection_id == kb.id)
    assert (stats["last_job_id"], stats["last_job_state"]) == (last_job, "done")


def test_ingest_errors_by_job_and_error_log(kb: Collection, conn: psycopg.Connection) -> None:
    (stats,) = rows(
        conn, "SELECT last_job_id FROM pgrag.collection_stats WHERE collection = %s", NAME
    )
    job_id = stats["last_job_id"]
    errors = rows(conn, "SELECT * FROM pgrag.ingest_errors WHERE job_id = %s", job_id)
    assert [e["ref"] for e in errors] == ["broken.txt"]
    (logged,) = rows(conn, "SELECT * FROM pgrag.ingest_error_log WHERE job_id = %s", job_id)
    assert (logged["collection"], logged["ref"], logged["error_id"]) == (
        NAME,
        "broken.txt",
        errors[0]["id"],
    )
    assert logged["source"].endswith("corpus") and "NUL" in logged["reason"]


def test_job_progress_moves_while_a_job_runs(
    kb: Collection, conn: psycopg.Connection, tmp_path: Path
) -> None:
    total = 600
    lines = [
        json.dumps(
            {
                "id": f"n{i}",
                "text": f"Note {i}: the weekly report of team {i % 17} lists "
                f"{i} open tickets, {i % 5} incidents and {i % 11} releases this week.",
            }
        )
        for i in range(total)
    ]
    (tmp_path / "notes.jsonl").write_text("\n".join(lines) + "\n")
    job = pipeline.submit(tmp_path / "notes.jsonl", NAME + "_progress", create=True)
    samples = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        (row,) = rows(conn, "SELECT * FROM pgrag.job_progress WHERE job_id = %s", job.id)
        samples.append(row)
        if row["state"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.05)
    final = samples[-1]
    assert final["state"] == "done"
    running = [s for s in samples if s["state"] == "running"]
    seen = sorted({s["docs_processed"] for s in running})
    assert len([n for n in seen if 0 < n < total]) >= 1, seen  # caught mid-way
    assert len(seen) >= 2, seen
    processed = [s["docs_processed"] for s in samples]
    assert processed == sorted(processed)  # it only moves forward
    midway = next(s for s in running if 0 < s["docs_processed"] < total)
    assert midway["docs_total"] == total
    assert 0 < midway["percent"] < 100 and midway["eta"] is not None
    assert midway["docs_per_s"] > 0 and midway["chunks_per_s"] > 0
    assert (final["docs_processed"], final["docs_total"], final["percent"]) == (total, total, 100)
    assert final["eta"] is None and final["errors"] == 0 and final["docs_per_s"] > 0
    assert final["elapsed"].total_seconds() > 0


def test_query_log_reads_timings_and_scores(kb: Collection, conn: psycopg.Connection) -> None:
    good, bad = uuid.uuid4(), uuid.uuid4()
    passages = [
        {
            "chunk_id": 7,
            "external_id": "policies/key-rotation.md",
            "scores": {"dense": 0.71, "lexical": 12.5, "fused": 0.032, "rerank": 8.25},
        },
        {"chunk_id": 9, "external_id": "x", "scores": {"dense": 0.5}},
    ]
    timings = {
        "embed": 4.5,
        "recall": 3.25,
        "rerank": 40.0,
        "generate": 120.0,
        "first_token": 15.0,
        "total": 170.5,
    }
    conn.execute(
        "INSERT INTO pgrag.queries (id, collection, collection_id, question, state, passages,"
        " timings, created_at, started_at) VALUES"
        " (%s, %s, %s, 'How often are keys rotated?', 'done', %s, %s, now() - interval '2 s',"
        "  now() - interval '1.5 s'),"
        " (%s, %s, %s, 'odd row', 'failed', '\"not a list\"', '{\"embed\": \"fast\"}',"
        "  now(), NULL)",
        (good, NAME, kb.id, Jsonb(passages), Jsonb(timings), bad, NAME, kb.id),
    )
    try:
        log = {
            r["id"]: r
            for r in rows(
                conn,
                "SELECT * FROM pgrag.query_log WHERE id IN (%s, %s) ORDER BY created_at DESC",
                good,
                bad,
            )
        }
        row = log[good]
        assert (row["state"], row["passages"], row["top_chunk_id"]) == ("done", 2, 7)
        assert [
            row[f"{t}_ms"]
            for t in ("embed", "recall", "rerank", "generate", "first_token", "total")
        ] == [4.5, 3.25, 40.0, 120.0, 15.0, 170.5]
        assert (row["top_dense"], row["top_lexical"], row["top_fused"], row["top_rerank"]) == (
            0.71,
            12.5,
            0.032,
            8.25,
        )
        assert row["top_external_id"] == "policies/key-rotation.md"
        assert 400 < row["queued_ms"] < 600 and row["has_embedding"] is False
        odd = log[bad]  # malformed JSON gives NULLs, never an error
        assert (odd["embed_ms"], odd["passages"], odd["top_dense"], odd["queued_ms"]) == (None,) * 4
    finally:
        conn.execute("DELETE FROM pgrag.queries WHERE id IN (%s, %s)", (good, bad))


# ---------------------------------------------------------------------------- k-NN


def test_neighbors_equal_brute_force_for_every_chunk(
    kb: Collection, conn: psycopg.Connection
) -> None:
    ids, vectors = embeddings(conn, kb)
    k = 10
    before = index_scans(conn, kb)
    for chunk_id, vector in zip(ids, vectors, strict=True):
        got = rows(conn, "SELECT * FROM pgrag.neighbors(chunk_id => %s, k => %s)", int(chunk_id), k)
        want_ids, want_distances = brute_force(ids, vectors, vector, k + 1, leave_out=int(chunk_id))
        assert [r["rank"] for r in got] == list(range(1, k + 1))
        np.testing.assert_allclose([r["distance"] for r in got], want_distances[:k], atol=1e-5)
        # The same chunks in the same order, except where distances tie to float precision.
        for rank, row in enumerate(got):
            gaps = np.abs(want_distances - want_distances[rank])
            if np.sum(gaps < 1e-5) == 1:
                assert row["neighbor_id"] == want_ids[rank], (chunk_id, rank)
    flush_stats(conn)
    assert index_scans(conn, kb) >= before + len(ids)  # every call went through the index

    first = rows(conn, "SELECT * FROM pgrag.neighbors(%s)", int(ids[0]))
    assert len(first) == 10 and first[0]["external_id"] and first[0]["text"]
    conn.execute("BEGIN")
    try:
        many = rows(conn, "SELECT count(*) AS n FROM pgrag.neighbors(%s, k => 1000)", int(ids[0]))
        # ef_search is raised (and past 1000 an iterative scan used) to fit k, then put back.
        assert many[0]["n"] == len(ids) - 1
        assert conn.execute("SHOW hnsw.ef_search").fetchone() == ("40",)
        assert conn.execute("SHOW hnsw.iterative_scan").fetchone() == ("off",)
        assert conn.execute("SHOW enable_sort").fetchone() == ("on",)
    finally:
        conn.execute("ROLLBACK")


def test_neighbors_statement_plan_uses_the_hnsw_index(
    kb: Collection, conn: psycopg.Connection
) -> None:
    """EXPLAIN of the very statement nearest_chunks runs, under the function's own settings."""
    statement = scalar(conn, "SELECT pgrag.knn_sql(%s)", kb.id)
    config = scalar(
        conn,
        "SELECT proconfig FROM pg_proc"
        " WHERE oid = 'pgrag.nearest_chunks(integer, vector, integer, bigint)'::regprocedure",
    )
    assert config == ["enable_sort=off"]
    conn.execute("BEGIN")
    try:
        for setting in config:
            name, value = setting.split("=")
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        conn.execute(
            sql.SQL("PREPARE knn(vector, integer, bigint) AS {}").format(sql.SQL(statement))
        )
        vector = scalar(
            conn, "SELECT embedding::text FROM pgrag.chunks WHERE collection_id = %s LIMIT 1", kb.id
        )
        explain = sql.SQL("EXPLAIN EXECUTE knn({}, 10, NULL)").format(sql.Literal(vector))
        plan = "\n".join(r[0] for r in conn.execute(explain))
    finally:
        conn.execute("ROLLBACK")
        conn.execute("DEALLOCATE knn")  # prepared statements outlive the transaction
    assert f"Index Scan using {kb.index_name}" in plan, plan


def test_similar_to_query_recalls_through_the_index(
    kb: Collection, conn: psycopg.Connection
) -> None:
    question = "How often are KMS keys rotated?"
    vector = embed_query(kb, question)
    ids, vectors = embeddings(conn, kb)
    want_ids, want_distances = brute_force(ids, vectors, vector.astype(np.float64), 5)
    asked, unembedded = uuid.uuid4(), uuid.uuid4()
    conn.execute(
        "INSERT INTO pgrag.queries (id, collection, collection_id, question, state,"
        " question_embedding, passages) VALUES (%s, %s, %s, %s, 'done', %s, %s),"
        " (%s, %s, %s, 'still waiting', 'queued', NULL, NULL)",
        (
            asked,
            NAME,
            kb.id,
            question,
            vector,
            Jsonb([{"chunk_id": want_ids[1]}]),
            unembedded,
            NAME,
            kb.id,
        ),
    )
    try:
        got = rows(conn, "SELECT * FROM pgrag.similar_to_query(%s, k => 5)", asked)
        assert [r["chunk_id"] for r in got] == want_ids
        np.testing.assert_allclose([r["distance"] for r in got], want_distances, atol=1e-5)
        assert got[0]["external_id"] == "policies/key-rotation.md"
        assert [r["in_passages"] for r in got] == [False, True, False, False, False]
        with pytest.raises(psycopg.errors.NoDataFound, match="has no stored embedding"):
            conn.execute("SELECT * FROM pgrag.similar_to_query(%s)", (unembedded,))
        with pytest.raises(psycopg.errors.NoDataFound, match="does not exist"):
            conn.execute("SELECT * FROM pgrag.similar_to_query(%s)", (uuid.uuid4(),))
    finally:
        conn.execute("DELETE FROM pgrag.queries WHERE id IN (%s, %s)", (asked, unembedded))


def test_duplicates_finds_the_planted_pairs_and_nothing_else(
    kb: Collection, conn: psycopg.Connection
) -> None:
    ids, vectors = embeddings(conn, kb)
    before = index_scans(conn, kb)
    found = rows(
        conn, "SELECT * FROM pgrag.duplicates(collection => %s, max_distance => 0.02)", NAME
    )
    flush_stats(conn)
    assert {(r["external_id_a"], r["external_id_b"]) for r in found} == DUPLICATE_PAIRS
    assert len(found) == len(DUPLICATE_PAIRS)
    assert all(r["chunk_a"] < r["chunk_b"] and 0 <= r["distance"] <= 0.02 for r in found)
    assert [r["distance"] for r in found] == sorted(r["distance"] for r in found)
    # The same pairs by brute force over every pair.
    distances = 1.0 - vectors @ vectors.T
    close = {
        (int(ids[i]), int(ids[j]))
        for i, j in zip(*np.nonzero(distances <= 0.02), strict=True)
        if i < j
    }
    assert {(r["chunk_a"], r["chunk_b"]) for r in found} == close
    # One index probe per chunk (a LATERAL k-NN), not a scan per pair.
    assert index_scans(conn, kb) >= before + len(ids)
    wider = rows(conn, "SELECT * FROM pgrag.duplicates(%s, 0.2)", NAME)
    assert len(wider) > len(found)


# ---------------------------------------------------------------------------- audits


def test_recall_audit_exact_is_one_and_index_at_most_one(
    kb: Collection, conn: psycopg.Connection
) -> None:
    n = scalar(conn, "SELECT count(*) FROM pgrag.chunks WHERE collection_id = %s", kb.id)
    (audit,) = rows(
        conn, "SELECT * FROM pgrag.recall_audit(collection => %s, sample => 50, k => 10)", NAME
    )
    assert 0 < audit["recall"] <= 1 and audit["index_used"] is True
    assert (audit["sample_size"], audit["ef_search"], audit["iterative_scan"]) == (50, 40, "off")
    assert audit["index_ms"] > 0 and audit["exact_ms"] > 0

    conn.execute("BEGIN")
    try:
        # Index scans off: the "index" side is an exact scan too, so recall must be exactly 1.
        conn.execute("SET LOCAL enable_indexscan = off")
        (exact,) = rows(conn, "SELECT * FROM pgrag.recall_audit(%s, sample => 1000, k => 10)", NAME)
        assert (exact["recall"], exact["index_used"], exact["sample_size"]) == (1.0, False, n)
        # ef_search 5 gives at most 5 candidates for 10 neighbours: recall <= 0.5.
        conn.execute("SET LOCAL enable_indexscan = on")
        conn.execute("SET LOCAL hnsw.ef_search = 5")
        (starved,) = rows(
            conn, "SELECT * FROM pgrag.recall_audit(%s, sample => 1000, k => 10)", NAME
        )
        assert starved["index_used"] and starved["ef_search"] == 5
        assert 0 < starved["recall"] <= 0.5
    finally:
        conn.execute("ROLLBACK")


def test_embedding_health_finds_a_planted_zero_vector(
    kb: Collection, conn: psycopg.Connection
) -> None:
    def health() -> dict[str, dict[str, Any]]:
        return {
            r["metric"]: r for r in rows(conn, "SELECT * FROM pgrag.embedding_health(%s)", NAME)
        }

    clean = health()
    assert all(r["ok"] for r in clean.values()), clean
    assert clean["chunks"]["value"] > 0 and abs(clean["norm_mean"]["value"] - 1) < 1e-3
    victim = scalar(conn, "SELECT max(id) FROM pgrag.chunks WHERE collection_id = %s", kb.id)
    conn.execute("BEGIN")  # planted, checked and rolled back
    try:
        conn.execute(
            "UPDATE pgrag.chunks SET embedding = array_fill(0, ARRAY[%s])::real[]::vector"
            " WHERE id = %s",
            (kb.dim, victim),
        )
        planted = health()
    finally:
        conn.execute("ROLLBACK")
    assert (planted["zero_vectors"]["value"], planted["zero_vectors"]["ok"]) == (1, False)
    assert planted["zero_vectors"]["chunk_ids"] == [victim]
    assert planted["norm_outliers"]["chunk_ids"] == [victim] and not planted["norm_outliers"]["ok"]
    assert planted["not_normalised"]["chunk_ids"] == [victim]
    assert planted["norm_min"]["value"] == 0 and not planted["norm_min"]["ok"]
    assert planted["dim_mismatches"]["ok"] and planted["nan_vectors"]["ok"]
    assert health()["zero_vectors"]["value"] == 0


def test_embedding_health_finds_a_dimension_mismatch(
    kb: Collection, conn: psycopg.Connection
) -> None:
    victim = scalar(conn, "SELECT min(id) FROM pgrag.chunks WHERE collection_id = %s", kb.id)
    conn.execute("BEGIN")
    try:
        # The index casts to vector(384), so a 3-d vector can only exist without it.
        conn.execute(sql.SQL("DROP INDEX pgrag.{}").format(sql.Identifier(kb.index_name)))
        conn.execute("UPDATE pgrag.chunks SET embedding = '[0.6, 0.8, 0]' WHERE id = %s", (victim,))
        (row,) = rows(
            conn, "SELECT * FROM pgrag.embedding_health(%s) WHERE metric = 'dim_mismatches'", NAME
        )
    finally:
        conn.execute("ROLLBACK")
    assert (row["value"], row["ok"], row["chunk_ids"]) == (1, False, [victim])


def test_unknown_names_and_hostile_input_give_clear_errors(
    kb: Collection, conn: psycopg.Connection
) -> None:
    hostile = "inspect_kb'; DROP TABLE pgrag.chunks; --"
    for call in ("pgrag.duplicates(%s)", "pgrag.embedding_health(%s)", "pgrag.recall_audit(%s)"):
        with pytest.raises(psycopg.errors.NoDataFound, match="does not exist"):
            conn.execute(f"SELECT * FROM {call}", (hostile,))
    assert conn.execute("SELECT to_regclass('pgrag.chunks')").fetchone() == ("pgrag.chunks",)
    with pytest.raises(psycopg.errors.NoDataFound, match="chunk -1 does not exist"):
        conn.execute("SELECT * FROM pgrag.neighbors(-1)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="k must be"):
        conn.execute("SELECT * FROM pgrag.nearest_chunks(%s, '[1,2]', 0)", (kb.id,))
    with pytest.raises(psycopg.errors.DataException, match="has 2 dimensions"):
        conn.execute("SELECT * FROM pgrag.nearest_chunks(%s, '[1,2]', 3)", (kb.id,))


# ---------------------------------------------------------------------------- role and CLI


def test_reader_role_reads_everything_and_writes_nothing(
    kb: Collection, conn: psycopg.Connection
) -> None:
    relations = [
        r["relname"]
        for r in rows(
            conn,
            "SELECT relname FROM pg_class WHERE relnamespace = 'pgrag'::regnamespace"
            " AND relkind IN ('r', 'v') AND relname <> 'api_keys' ORDER BY relname",
        )
    ]
    chunk_id = scalar(conn, "SELECT min(id) FROM pgrag.chunks WHERE collection_id = %s", kb.id)
    asked = uuid.uuid4()
    conn.execute(
        "INSERT INTO pgrag.queries (id, collection, collection_id, question, question_embedding)"
        " SELECT %s, %s, %s, 'q', embedding FROM pgrag.chunks WHERE id = %s",
        (asked, NAME, kb.id, chunk_id),
    )
    try:
        with db.connect() as reader:
            reader.execute("SET ROLE pgrag_reader")
            assert reader.execute("SELECT current_user").fetchone() == ("pgrag_reader",)
            for name in relations:
                reader.execute(
                    sql.SQL("SELECT * FROM pgrag.{} LIMIT 1").format(sql.Identifier(name))
                )
            calls = [
                ("pgrag.neighbors(%s, 3)", (chunk_id,)),
                ("pgrag.similar_to_query(%s, 3)", (asked,)),
                ("pgrag.duplicates(%s)", (NAME,)),
                ("pgrag.recall_audit(%s, 10, 5)", (NAME,)),
                ("pgrag.embedding_health(%s)", (NAME,)),
                ("pgrag.collection_by_name(%s)", (NAME,)),
                ("pgrag.knn_sql(%s)", (kb.id,)),
                ("pgrag.json_number('1')", ()),
            ]
            for call, params in calls:
                assert reader.execute(f"SELECT * FROM {call}", params).fetchall(), call
            assert reader.execute(
                "SELECT * FROM pgrag.nearest_chunks(%s, (SELECT embedding FROM pgrag.chunks"
                " WHERE id = %s), 3)",
                (kb.id, chunk_id),
            ).fetchall()
            # The API keys' hashes are the one thing it may not read.
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute("SELECT hash FROM pgrag.api_keys")
        # And the catalog agrees for everything in the schema, including what later
        # migrations add: read and execute, never write.
        privileges = rows(
            conn,
            "SELECT c.relname, has_table_privilege('pgrag_reader', c.oid, 'SELECT') AS can_read,"
            " has_table_privilege('pgrag_reader', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')"
            " AS can_write FROM pg_class c"
            " WHERE c.relnamespace = 'pgrag'::regnamespace AND c.relkind IN ('r', 'v', 'm')",
        )
        assert {
            (r["relname"] == "api_keys", r["can_read"], r["can_write"]) for r in privileges
        } == {(False, True, False), (True, False, False)}
        assert (
            rows(
                conn,
                "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'pgrag'::regnamespace"
                " AND NOT has_function_privilege('pgrag_reader', p.oid, 'EXECUTE')",
            )
            == []
        )
        assert conn.execute(
            "SELECT has_schema_privilege('pgrag_reader', 'pgrag', 'CREATE')"
        ).fetchone() == (False,)

        writes = [
            "INSERT INTO pgrag.collections (name, model, dim, chunk_size, chunk_overlap)"
            " VALUES ('x', 'm', 3, 10, 1)",
            f"UPDATE pgrag.chunks SET text = 'x' WHERE id = {int(chunk_id)}",
            f"DELETE FROM pgrag.documents WHERE collection_id = {int(kb.id)}",
            "DELETE FROM pgrag.queries",
            "TRUNCATE pgrag.ingest_errors",
            "CREATE TABLE pgrag.mine (id int)",
            "CREATE OR REPLACE VIEW pgrag.job_progress AS SELECT 1",
        ]
        for statement in writes:
            with db.connect() as reader:
                reader.execute("SET ROLE pgrag_reader")
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    reader.execute(statement)
    finally:
        conn.execute("DELETE FROM pgrag.queries WHERE id = %s", (asked,))
    assert scalar(conn, "SELECT count(*) FROM pgrag.documents WHERE collection_id = %s", kb.id)


def test_reader_role_covers_tables_made_later(services: Path) -> None:
    """Default privileges: a table a later migration adds is readable, not writable."""
    with db.connect() as owner:
        owner.execute("CREATE TABLE pgrag.later (id int)")
        owner.execute("SET ROLE pgrag_reader")
        assert owner.execute("SELECT count(*) FROM pgrag.later").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            owner.execute("INSERT INTO pgrag.later VALUES (1)")
        owner.rollback()


def test_cli_sql_runs_psql_on_the_configured_database(kb: Collection) -> None:
    def pgrag(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pgrag", *args], capture_output=True, text=True, timeout=60
        )

    run = pgrag("sql", "-c", "select * from pgrag.collection_stats")
    assert run.returncode == 0, run.stderr
    assert "index_valid" in run.stdout and NAME in run.stdout
    csv = pgrag(
        "sql",
        "--csv",
        "-c",
        f"select collection, chunks from pgrag.collection_stats where collection = '{NAME}'",
    )
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.splitlines()[0] == "collection,chunks"
    assert csv.stdout.splitlines()[1].startswith(f"{NAME},")
    failed = pgrag("sql", "-v", "ON_ERROR_STOP=1", "-c", "select * from pgrag.nope")
    assert failed.returncode != 0 and "pgrag.nope" in failed.stderr


def test_cli_sql_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "PGRAG_HOME": str(tmp_path)}
    env.pop("PGRAG_DATABASE_URL", None)
    run = subprocess.run(
        [sys.executable, "-m", "pgrag", "sql", "-c", "select 1"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode == 1 and "pgrag up" in run.stderr
