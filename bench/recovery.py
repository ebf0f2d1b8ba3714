"""What a fault costs a job: seconds from the fault to `done`, beyond the undisturbed time.

    python bench/recovery.py [--chunks 3000] [--seed 0]

One job of SciFact text (about `--chunks` chunks) runs through real workers (the bench
embedder of `bench/bench_embed_worker.py`, so the figure is recovery, not the model), first
undisturbed, then once per fault at a random point of its load phase:

- embed: SIGKILL of the embed worker's process group, a new one started at once;
- ingest: SIGKILL of the ingest worker (the reader) mid-read, a new one started at once;
- broker: Redis stopped and started again empty, on the same port (every message lost);
- postgres: the PostgreSQL server restarted (fast shutdown, start).

Then questions: a query worker SIGKILLed (its process group) with `--questions` in flight,
each streaming from `bench/llm_server.py` (answers of about 3 s), and a new one started at
once: the seconds from the kill to the last answer, how many readers were told `restarted`,
and that each question ended done, stored once.

Reported per fault: seconds from the fault to `done`; the seconds the replacement worker
took to start (a process start, not recovery); the extra time over the undisturbed run; the
work recovered and why; the chunk and duplicate counts. The broker's visibility timeout
stays at its default (an hour): only pgrag's sweeper recovers. Goal: every recovery adds at
most the lease (PGRAG_LEASE_S, 15 s) plus the lost batch's work.

Prints a table and writes JSON (default bench/results/recovery-<time>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    ROOT,
    Home,
    Worker,
    default_out,
    exit_on_sigterm,
    pgrag_home,
    print_table,
    write_json,
)
from bench.pipeline import SCIFACT, bench_embed_worker, write_source

FAULTS = ("none", "embed", "ingest", "broker", "postgres")
HEADERS = ["fault", "state", "job s", "fault->done s", "new worker start s", "extra s"]
HEADERS += ["chunks", "dups", "recov", "why"]
QUESTION_COLUMNS = ["questions", "kill_to_last_answer_s", "done", "told_restarted", "stored_done"]


def restart_postgres(home: Home) -> None:
    from pgrag.runtime import services
    from pgrag.runtime.settings import get_settings

    pid = home.postmaster_pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)  # fast shutdown: connections are cut
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    services.start_postgres(get_settings())


def restart_redis_empty(home: Home) -> None:
    """Stop the embedded Redis, delete its data, start it again on the same port."""
    from pgrag.runtime import services
    from pgrag.runtime.settings import get_settings

    settings = get_settings()
    port = services.redis_url(settings).rsplit(":", 1)[1].split("/")[0]
    services.stop_redis(settings)
    folder = home.path / "redis"
    for path in folder.glob("appendonly*"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", port, "--daemonize", "yes"]
    argv += ["--appendonly", "yes", "--dir", str(folder), "--pidfile", str(folder / "redis.pid")]
    subprocess.run(argv, check=True)
    (folder / "port").write_text(port)


def counts(collection: str) -> dict[str, int]:
    from pgrag.runtime import db
    from pgrag.store.collections import get_collection

    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*), count(*) - count(DISTINCT (document_id, ord)) FROM pgrag.chunks"
            " WHERE collection_id = %s",
            (get_collection(collection).id,),
        ).fetchone()
    assert row is not None
    return {"chunks": int(row[0]), "duplicates": int(row[1])}


def run(home: Home, source: Path, fault: str, at: float, collection: str) -> dict[str, Any]:
    """The job with `fault` injected `at` (0-1) of the way through its documents."""
    from pgrag.ingest import jobs, pipeline

    reader, embedder = Worker(home, "ingest"), bench_embed_worker(home, 1)
    workers = [reader, embedder]
    try:
        for w in workers:
            w.wait_ready()
        t0 = time.perf_counter()
        job = pipeline.submit(source, collection, create=True)
        total = source.read_text().count("\n")
        fault_t = start_s = None
        while not (state := jobs.get_job(job.id)).finished:
            # The reader is hit mid-read, the others mid-load.
            progress = state.docs_read if fault == "ingest" else state.docs_processed
            if fault_t is None and fault != "none" and progress >= at * total:
                fault_t = time.perf_counter()
                new = None
                if fault == "embed":
                    os.killpg(embedder.pid, signal.SIGKILL)
                    new = bench_embed_worker(home, 1)
                elif fault == "ingest":
                    os.killpg(reader.pid, signal.SIGKILL)
                    new = Worker(home, "ingest")
                elif fault == "broker":
                    restart_redis_empty(home)
                elif fault == "postgres":
                    restart_postgres(home)
                if new is not None:  # how long the replacement takes to start is not recovery
                    workers.append(new)
                    new.wait_ready()
                    start_s = time.perf_counter() - fault_t
            time.sleep(0.05)
        end = time.perf_counter()
    finally:
        for w in workers:
            w.stop()
    done = jobs.get_job(job.id)
    recoveries = jobs.job_recoveries(job.id)
    return {
        "fault": fault,
        "state": done.state,
        "total_s": end - t0,
        "fault_at_s": None if fault_t is None else fault_t - t0,
        "after_fault_s": None if fault_t is None else end - fault_t,
        "new_worker_start_s": start_s,
        "documents": done.docs_done,
        "recovered": sum(recoveries.values()),
        "recoveries": recoveries,
        **counts(collection),
    }


def kill_query_worker(home: Home, n: int) -> dict[str, Any]:
    """A query worker killed with `n` questions in flight; another answers them."""
    from bench.llm_server import SimulatedLLM
    from bench.query_latency import QUESTIONS, ingest
    from bench.query_load import query_worker
    from pgrag import client
    from pgrag.query import answering
    from pgrag.runtime import db

    collection = ingest(home, ROOT / "examples" / "corpus", "recovery-questions")
    server = SimulatedLLM(ttft_s=1.0, tokens=40, pace_s=0.05)
    env = {
        "PGRAG_GENERATOR": "openai",
        "PGRAG_OPENAI_BASE_URL": server.url,
        "PGRAG_OPENAI_MODEL": "simulated",
    }
    workers = [query_worker(home, env)]
    try:
        ids = [answering.submit(QUESTIONS[i % len(QUESTIONS)], collection) for i in range(n)]
        while server.stats()["in_flight"] < n:
            time.sleep(0.02)
        os.killpg(workers[0].pid, signal.SIGKILL)
        killed = time.perf_counter()
        workers.append(query_worker(home, env))

        async def follow_all() -> list[list[Any]]:
            async def one(query_id: Any) -> list[Any]:
                return [e async for e in client.afollow(query_id, timeout_s=600)]

            return await asyncio.gather(*(one(i) for i in ids))

        followed = asyncio.run(follow_all())
        last_answer_s = time.perf_counter() - killed
    finally:
        for w in workers:
            w.stop()
        server.stop()
    with db.connect() as conn:
        stored = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'done'), count(DISTINCT id)"
            " FROM pgrag.queries WHERE id = ANY(%s)",
            (ids,),
        ).fetchone()
    assert stored is not None
    return {
        "questions": n,
        "kill_to_last_answer_s": round(last_answer_s, 2),
        "answer_s": server.answer_s,
        "done": sum(events[-1].type == "done" for events in followed),
        "told_restarted": sum(
            any(e.data.get("state") == "restarted" for e in events) for events in followed
        ),
        "stored_done": int(stored[0]),
        "rows": int(stored[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions", type=int, default=48, help="in flight at the kill")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    exit_on_sigterm()
    rng = random.Random(args.seed)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, pgrag_home() as home:
        source = Path(tmp) / "source.jsonl"
        write_source(source, args.chunks)
        for i, fault in enumerate(FAULTS):
            print(f"job with fault: {fault}", file=sys.stderr)
            results.append(run(home, source, fault, rng.uniform(0.2, 0.7), f"rec{i}"))
        print("questions, query worker killed", file=sys.stderr)
        questions = kill_query_worker(home, args.questions)
    base = results[0]
    rows = []
    for r in results:
        extra = None
        if r["fault_at_s"] is not None:
            extra = r["total_s"] - base["total_s"]
        rows.append(
            [
                r["fault"],
                r["state"],
                r["total_s"],
                r["after_fault_s"],
                r["new_worker_start_s"],
                extra,
                r["chunks"],
                r["duplicates"],
                r["recovered"],
                ", ".join(f"{k}: {v}" for k, v in sorted(r["recoveries"].items())),
            ]
        )
    print_table(
        f"Recovery ({SCIFACT.name} text, {base['chunks']:,} chunks a job)",
        rows,
        HEADERS,
    )
    print_table(
        f"A query worker killed with {questions['questions']} questions in flight"
        f" (answers of {questions['answer_s']:.2f} s)",
        [[questions[k] for k in QUESTION_COLUMNS]],
        QUESTION_COLUMNS,
    )
    results_json = {"runs": results, "query_worker_killed": questions}
    path = write_json(args.out or default_out("recovery"), "recovery", results_json)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
