"""The pipeline's ceiling: source to searchable rows with the model's forward pass removed.

    python bench/pipeline.py [--chunks 50000] [--procs 1,2,4] [--queries 200]
    python bench/pipeline.py --chunks 1000000 --procs 2       # the million-chunk run

The source is a JSONL file of real text: the SciFact corpus (../shared/data/scifact)
repeated with new ids, each repeat's titles numbered, until it makes `--chunks` chunks.
Everything is real (embedded PostgreSQL + pgvector and Redis, Celery workers, the model's
tokenizer, chunking, binary COPY, the lexical index, the HNSW build) except the embedder's
forward pass, replaced by `bench/bench_embed_worker.py` (deterministic unit vectors at once):
what a GPU box sees when the model costs nothing.

Stages, each alone in this process: reading the source, chunking (the tokenizer), lexical
analysis, writing (`loading.replace_chunks`: chunks and their lexeme counts, one transaction
per embed task's documents) and the lexical block build (`lexical.index_pending`; a job
runs it block by block while it loads), with the CPU microseconds per chunk of this process
and of PostgreSQL. Then end to end through the workers with 1, 2 and 4 embed processes: the
job from submit to `done`, its load phase (until `indexing`) and its index builds after it
(the last lexical block and HNSW), and the CPU seconds of PostgreSQL, the embed and ingest
workers. Then, on the last collection: search latency (dense, lexical, hybrid) and
recall@10 of the HNSW index against exact search for `--queries` SciFact queries, and a
small job that changes 100 documents.

Prints tables and writes JSON (default bench/results/pipeline-<time>.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_embed_worker import bench_encode
from bench.common import (
    ROOT,
    CpuMeter,
    CpuUsage,
    Home,
    Worker,
    default_out,
    exit_on_sigterm,
    pgrag_home,
    print_table,
    rate,
    write_json,
)

SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def bench_embed_worker(home: Home, concurrency: int) -> Worker:
    """The embed worker with the bench embedder (`bench/bench_embed_worker.py`)."""
    program = [sys.executable, str(ROOT / "bench" / "bench_embed_worker.py")]
    return Worker(home, "embed", concurrency, program=program)


def write_source(path: Path, chunks: int) -> int:
    """Write the SciFact corpus, repeated with new ids, until it makes `chunks` chunks at the
    default chunking; returns the documents written. A repeat's titles end with its number,
    so that its chunks' embedded texts, and so their bench vectors, are new: pgvector keeps
    identical vectors in one HNSW element (up to 10 rows each), which would leave the graph of
    a repeated corpus a fraction of its row count."""
    from pgrag.inference.embedding import load_embedder
    from pgrag.ingest.chunking import chunk_texts
    from pgrag.runtime.settings import get_settings

    with open(SCIFACT / "corpus.jsonl") as f:
        docs = [json.loads(line) for line in f]
    settings = get_settings()
    per_doc = [
        len(c)
        for c in chunk_texts(
            [d["text"] for d in docs],
            load_embedder(settings.embed_model, "cpu", "torch").tokenizer,
            chunk_size=settings.chunk_size,
            overlap=settings.chunk_overlap,
        )
    ]
    written = total = 0
    with open(path, "w") as f:
        for rep in itertools.count():
            for doc, n in zip(docs, per_doc, strict=True):
                if total >= chunks:
                    return written
                title = f"{doc['title']} ({rep})" if rep else doc["title"]
                row = {"_id": f"{doc['_id']}-{rep}", "title": title, "text": doc["text"]}
                f.write(json.dumps(row) + "\n")
                written += 1
                total += n
    raise AssertionError("unreachable")


def stages(home: Home, source: Path, collection_name: str) -> dict[str, Any]:
    """Reading, chunking and writing, each alone in this process."""
    from pgrag.inference.embedding import load_embedder
    from pgrag.ingest import jobs
    from pgrag.ingest.chunking import chunk_texts
    from pgrag.ingest.loading import DocumentChunks, chunk_lexemes, embed_inputs, replace_chunks
    from pgrag.ingest.pipeline import BatchPlan, apply_plan
    from pgrag.ingest.sources import SourceDocument, open_source
    from pgrag.runtime import db
    from pgrag.runtime.settings import get_settings
    from pgrag.store import lexical
    from pgrag.store.collections import create_collection

    t = time.perf_counter()
    docs = [
        d for d in open_source(source, max_document_bytes=1 << 26) if isinstance(d, SourceDocument)
    ]
    read_s = time.perf_counter() - t

    collection = create_collection(collection_name)
    embedder = load_embedder(collection.model, "cpu", "torch")
    size = get_settings().ingest_batch_docs
    options = {"chunk_size": collection.chunk_size, "overlap": collection.chunk_overlap}
    t = time.perf_counter()
    chunked = [  # as an embed task does: one call for the task's documents
        c
        for first in range(0, len(docs), size)
        for c in chunk_texts(
            [d.text for d in docs[first : first + size]], embedder.tokenizer, **options
        )
    ]
    chunk_s = time.perf_counter() - t

    # The documents' rows as the reader writes them, and each embed task's vectors, first.
    with db.connect() as conn:
        job_id = jobs.insert_job(conn, collection.id, str(source), {})
    tasks = []
    with db.connect() as conn:
        for first in range(0, len(docs), size):
            part, parts = docs[first : first + size], chunked[first : first + size]
            ids = apply_plan(conn, collection.id, job_id, BatchPlan(load=part))
            loads = [
                DocumentChunks(i, d.title, d.metadata, c)
                for i, d, c in zip(ids, part, parts, strict=True)
            ]
            inputs = [
                x
                for d, c in zip(part, parts, strict=True)
                for x in embed_inputs(collection, embedder, d.title, c)
            ]
            tasks.append((loads, bench_encode(embedder, inputs)))

    t = time.perf_counter()
    lexemes = [chunk_lexemes(collection, loads) for loads, _ in tasks]
    analyse_s = time.perf_counter() - t

    meter = CpuMeter({"postgres": home.postmaster_pid}, {"bench": os.getpid()}).start()
    for (loads, vectors), counts in zip(tasks, lexemes, strict=True):
        with db.connect() as conn:
            replace_chunks(conn, collection, loads, vectors, counts)
    cpu = meter.stop()
    meter = CpuMeter({"postgres": home.postmaster_pid}, {"bench": os.getpid()}).start()
    with db.connect() as conn:
        lexical.index_pending(conn, collection.id)
    index_cpu = meter.stop()
    return {
        "documents": len(docs),
        "chunks": sum(map(len, chunked)),
        "seconds": {
            "read source": read_s,
            "chunk (tokenizer)": chunk_s,
            "lexical analysis": analyse_s,
            "write (chunks + lexeme counts)": cpu.wall_s,
            "lexical index build": index_cpu.wall_s,
        },
        "write_cpu": cpu.as_dict(),
        "index_cpu": index_cpu.as_dict(),
    }


def wait_done(job_id: int, on_loaded: Callable[[], Any] | None = None) -> dict[str, float]:
    """Seconds from now until the job is `indexing` and until it is `done`; `on_loaded` is
    called when it is seen `indexing`."""
    from pgrag.ingest.jobs import get_job

    t0 = time.perf_counter()
    loaded = None
    while True:
        job = get_job(job_id)
        if job.state == "indexing" and loaded is None:
            loaded = time.perf_counter() - t0
            if on_loaded:
                on_loaded()
        if job.finished:
            if job.state != "done":
                raise RuntimeError(f"job {job_id} ended {job.state}: {job.error}")
            total = time.perf_counter() - t0
            return {"load_s": loaded if loaded is not None else total, "total_s": total}
        time.sleep(0.05)


def end_to_end(home: Home, source: Path, procs: int, collection: str) -> dict[str, Any]:
    """The job through real workers: ingest (1 process) and bench embed (`procs`)."""
    from pgrag.ingest import pipeline

    workers = [Worker(home, "ingest"), bench_embed_worker(home, procs)]
    try:
        for w in workers:
            w.wait_ready()
        meter = CpuMeter(
            {"postgres": home.postmaster_pid, "embed": workers[1].pid, "ingest": workers[0].pid}
        ).start()
        job = pipeline.submit(source, collection, create=True)
        at_load_end: list[CpuUsage] = []
        times = wait_done(job.id, on_loaded=lambda: at_load_end.append(meter.stop()))
        cpu = meter.stop()
    finally:
        for w in workers:
            w.stop()
    from pgrag.ingest.jobs import get_job

    done = get_job(job.id)
    return {
        "procs": procs,
        "documents": done.docs_done,
        "chunks": done.chunks_done,
        **times,
        "index_s": times["total_s"] - times["load_s"],
        "cpu": cpu.as_dict(),
        "cpu_load": (at_load_end or [cpu])[0].as_dict(),
    }


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def search_latency(collection_name: str, queries: list[str]) -> dict[str, Any]:
    """p50/p95 ms of dense, lexical and hybrid recall, of lexical recall scoring every posting
    list (no pruning, the same top 10: checked), and HNSW recall@10 against exact."""
    from pgrag.inference.embedding import load_embedder
    from pgrag.query.retrieval import dense_params, dense_sql, retrieve
    from pgrag.runtime import db
    from pgrag.store import indexing
    from pgrag.store.collections import get_collection
    from pgrag.store.lexical import bm25_recall

    collection = get_collection(collection_name)
    embedder = load_embedder(collection.model, "cpu", "torch")
    vectors = bench_encode(embedder, queries)
    out: dict[str, Any] = {"queries": len(queries)}
    for mode in ("dense", "lexical", "hybrid"):
        times = []
        for q, v in zip(queries, vectors, strict=True):
            t = time.perf_counter()
            retrieve(collection, q, k=10, mode=mode, query_vector=v)
            times.append((time.perf_counter() - t) * 1000)
        out[mode] = percentiles(times)
    times, differ = [], 0
    with db.connect() as conn:
        for q in queries:
            t = time.perf_counter()
            full = bm25_recall(conn, collection.id, collection.text_config, q, 10, long_list=2**62)
            times.append((time.perf_counter() - t) * 1000)
            pruned = bm25_recall(conn, collection.id, collection.text_config, q, 10)
            differ += [r[0] for r in full] != [r[0] for r in pruned]
    out["lexical, every list"] = percentiles(times)
    out["pruning changed"] = differ
    # The source repeats each text (and so its vector) about 190 times at a million chunks:
    # an ANN hit counts when it is as near as the exact 10th, whichever copy it is.
    hits = 0
    with db.connect() as conn:
        for v in vectors:
            with conn.transaction():
                indexing.set_search_params(conn, 10)
                ann = [r[-1] for r in conn.execute(dense_sql(collection), dense_params(v, 10))]
            with conn.transaction():
                conn.execute("SET LOCAL enable_indexscan = off")
                exact = [r[-1] for r in conn.execute(dense_sql(collection), dense_params(v, 10))]
            hits += sum(d <= exact[-1] + 1e-6 for d in ann)
    out["recall@10"] = hits / (10 * len(vectors))
    return out


def small_job(home: Home, source: Path, collection: str, folder: Path) -> dict[str, Any]:
    """Change 100 documents of the collection's source and ingest them: seconds to done."""
    from pgrag.ingest import pipeline

    changed = folder / "changed.jsonl"
    with open(source) as f, open(changed, "w") as out:
        for line in itertools.islice(f, 100):
            row = json.loads(line)
            out.write(json.dumps({**row, "text": row["text"] + " Revised."}) + "\n")
    workers = [Worker(home, "ingest"), bench_embed_worker(home, 1)]
    try:
        for w in workers:
            w.wait_ready()
        job = pipeline.submit(changed, collection)
        times = wait_done(job.id)
    finally:
        for w in workers:
            w.stop()
    return {"documents": 100, **times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--procs", default="1,2,4", help="embed processes, comma-separated")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--no-stages", action="store_true", help="skip the stages measured alone (big runs)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    exit_on_sigterm()
    procs = [int(p) for p in args.procs.split(",")]

    with open(SCIFACT / "queries.jsonl") as f:
        queries = [json.loads(line)["text"] for line in f][: args.queries]

    results: dict[str, Any] = {"chunks_asked": args.chunks}
    with tempfile.TemporaryDirectory(prefix="pgrag-pipeline-") as tmp, pgrag_home() as home:
        source = Path(tmp) / "source.jsonl"
        results["source_documents"] = write_source(source, args.chunks)
        print(f"source: {results['source_documents']:,} documents", file=sys.stderr)
        from pgrag.store.collections import drop_collection

        if not args.no_stages:
            results["stages"] = stages(home, source, "stages")
            drop_collection("stages")
        runs = []
        for p in procs:
            print(f"end to end, {p} embed processes", file=sys.stderr)
            runs.append(end_to_end(home, source, p, f"e2e{p}"))
            if p != procs[-1]:
                drop_collection(f"e2e{p}")
        results["end_to_end"] = runs
        last = f"e2e{procs[-1]}"
        results["sizes"] = sizes(last)
        results["search"] = search_latency(last, queries)
        results["small_job"] = small_job(home, source, last, Path(tmp))
    report(results)
    path = write_json(args.out or default_out("pipeline"), "pipeline", results)
    print(f"\nwrote {path}")


def sizes(collection_name: str) -> dict[str, Any]:
    """Bytes on disk of the shared tables (those this schema has) and of the collection's
    HNSW index."""
    from pgrag.runtime import db
    from pgrag.store.collections import get_collection

    collection = get_collection(collection_name)
    names = [
        "pgrag.chunks",
        "pgrag.documents",
        "pgrag.postings",
        "pgrag.lexical_blocks",
        "pgrag.chunk_lexemes",
        f"pgrag.{collection.index_name}",
    ]
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT n, pg_total_relation_size(to_regclass(n)) FROM unnest(%s::text[]) AS n"
            " WHERE to_regclass(n) IS NOT NULL",
            (names,),
        ).fetchall()
    return {name: int(size) for name, size in rows}


def report(r: dict[str, Any]) -> None:
    if "stages" in r:
        report_stages(r["stages"])
    report_runs(r)


def report_stages(s: dict[str, Any]) -> None:
    pg = s["write_cpu"]["cpu_s"].get("postgres", 0.0)
    busy = max(s["write_cpu"]["machine_busy_s"], 1e-9)
    n, m = s["documents"], s["chunks"]
    print_table(
        f"Stages alone, one process ({n:,} documents, {m:,} chunks)",
        [[k, v, rate(n, v), rate(m, v)] for k, v in s["seconds"].items()],
        ["stage", "seconds", "docs/s", "chunks/s"],
    )
    print(f"PostgreSQL's share of the machine's CPU while writing: {pg / busy:.2f}")
    print_table(
        "CPU per chunk",
        [
            [
                step,
                u["cpu_s"].get("bench", 0.0) / m * 1e6,
                u["cpu_s"].get("postgres", 0.0) / m * 1e6,
            ]
            for step, u in (("write", s["write_cpu"]), ("lexical index build", s["index_cpu"]))
        ],
        ["step", "this process µs", "PostgreSQL µs"],
    )


def report_runs(r: dict[str, Any]) -> None:
    rows = []
    for e in r["end_to_end"]:
        cpu = e["cpu"]["cpu_s"]
        busy = max(e["cpu"]["machine_busy_s"], 1e-9)
        rows.append(
            [
                f"{e['procs']} embed process(es)",
                e["total_s"],
                rate(e["chunks"], e["total_s"]),
                rate(e["chunks"], e["load_s"]),
                e["index_s"],
                cpu.get("postgres", 0.0) / busy,
                cpu.get("embed", 0.0) / busy,
                cpu.get("ingest", 0.0) / busy,
            ]
        )
    print_table(
        "End to end, source to searchable (bench embedder)",
        rows,
        [
            "run",
            "seconds",
            "chunks/s",
            "load chunks/s",
            "index builds s",
            "PG share",
            "embed share",
            "ingest share",
        ],
    )
    rows = []
    for e in r["end_to_end"]:
        whole, load = e["cpu"], e["cpu_load"]
        per_chunk = 1e6 / max(e["chunks"], 1)
        load_pg, pg = load["cpu_s"].get("postgres", 0.0), whole["cpu_s"].get("postgres", 0.0)
        rows.append(
            [
                f"{e['procs']} embed process(es)",
                load_pg * per_chunk,
                load["cpu_s"].get("embed", 0.0) * per_chunk,
                load["cpu_s"].get("ingest", 0.0) * per_chunk,
                (pg - load_pg) * per_chunk,
                whole["machine_busy_s"] * per_chunk,
            ]
        )
    print_table(
        "CPU per chunk, end to end (µs; the index builds are the last lexical block and HNSW)",
        rows,
        ["run", "load: PG", "load: embed", "load: ingest", "index builds: PG", "whole machine"],
    )
    q = r["search"]
    print_table(
        f"Search on {r['end_to_end'][-1]['chunks']:,} chunks ({q['queries']} queries, k=10)",
        [[m, *q[m]] for m in ("dense", "lexical", "hybrid", "lexical, every list")],
        ["mode", "p50 ms", "p95 ms"],
    )
    print(f"queries whose lexical top 10 pruning changed: {q['pruning changed']}")
    print(f"HNSW recall@10 against exact search: {q['recall@10']:.3f}")
    print(f"small job (100 changed documents): {r['small_job']['total_s']:.2f} s to done")
    print_table("Sizes", [[k, v / 2**20] for k, v in r["sizes"].items()], ["relation", "MiB"])


if __name__ == "__main__":
    main()
