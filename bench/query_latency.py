"""Query latency: p50/p95 of each answering stage over N queued questions, and questions/s
with 1 and 2 query workers.

    python bench/query_latency.py [--questions 200] [--workers 1,2] [--generator extractive]
                                  [--rerank] [--backend torch,auto] [--corpus examples/corpus]
                                  [--out PATH] [--keep]

A fresh embedded PostgreSQL + Redis (bench/common.py) gets the sample corpus ingested by real
ingest/embed workers; then, for each count W, one Celery query worker answering W questions
at once (`pgrag up`'s argv, `-c W`: W threads sharing its warm models) is started,
warmed with 2W questions, and handed N questions (examples/questions.txt, cycled) queued at
once through `pgrag.query.answering.submit`. The stage timings each worker stored in
`pgrag.queries.timings` give the per-stage percentiles:

    queue        created -> picked up by a worker (grows with the backlog)
    embed        the question's embedding
    recall       dense HNSW + BM25 recall and fusion, in SQL
    rerank       the cross-encoder over the fused top N (--rerank)
    generate     the generator, first piece to last
    first_token  picked up -> first piece of the answer streamed
    total        picked up -> done (service time)

and questions/s = N / (last finished_at - first created_at). `--backend` takes one or more
`PGRAG_INFERENCE_BACKEND` settings (default auto: OpenVINO on a CPU): each gets a collection
of its own, ingested and then queried by workers with that setting, in the same run, so the
backends compare side by side. `--rerank` reranks with the configured cross-encoder
(PGRAG_RERANK_MODEL: by default the packaged ms-marco-MiniLM-L-12-v2, at the device's default
depth unless PGRAG_RERANK_TOP_N is set). With `--generator local`, the GGUF->safetensors load
(first use) and the cached load are timed in fresh processes, and the decode rate (answer
tokens / time after the first token) is reported.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import (
    ROOT,
    CpuMeter,
    Home,
    Worker,
    default_out,
    pgrag_home,
    print_table,
    write_json,
)

STAGES = ("queue", "embed", "recall", "rerank", "generate", "first_token", "total")
QUESTIONS = [
    line.split("\t")[0] for line in (ROOT / "examples" / "questions.txt").read_text().splitlines()
]


def use_backend(setting: str) -> None:
    """Workers started from now on (and this process) use this inference backend setting."""
    from pgrag.runtime.settings import get_settings

    os.environ["PGRAG_INFERENCE_BACKEND"] = setting
    get_settings.cache_clear()


def ingest(home: Home, corpus: Path, name: str) -> str:
    from pgrag.ingest import pipeline as ingesting
    from pgrag.ingest.jobs import get_job

    workers = [Worker(home, "ingest"), Worker(home, "embed")]
    try:
        for w in workers:
            w.wait_ready()
        job = ingesting.submit(corpus, name, create=True)
        while not (job := get_job(job.id)).finished:
            time.sleep(0.5)
        if job.state != "done":
            raise RuntimeError(f"ingest job {job.id} {job.state}: {job.error}")
        print(f"ingested {job.docs_done} documents, {job.chunks_done} chunks", file=sys.stderr)
    finally:
        for w in workers:
            w.stop()
    return name


def wait_answered(ids: list[Any], timeout: float) -> list[dict[str, Any]]:
    """The rows of `ids` once all are done or failed."""
    from pgrag.runtime import db

    deadline = time.monotonic() + timeout
    while True:
        with db.connect() as conn:
            rows = conn.execute(
                "SELECT id, state, timings, answer, error, created_at, finished_at"
                " FROM pgrag.queries WHERE id = ANY(%s) AND state IN ('done', 'failed')",
                (ids,),
            ).fetchall()
        if len(rows) == len(ids):
            keys = ("id", "state", "timings", "answer", "error", "created_at", "finished_at")
            return [dict(zip(keys, r, strict=True)) for r in rows]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - len(rows)} of {len(ids)} questions unanswered")
        time.sleep(0.5)


def percentiles(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for stage in STAGES:
        values = [r["timings"][stage] for r in rows if stage in (r["timings"] or {})]
        if values:
            p50, p95 = np.percentile(values, [50, 95])
            out[stage] = {"p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1)}
    return out


def decode_rates(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Answer tokens per second after the first one (local model's tokenizer)."""
    from pgrag.query.generation.local import LocalGenerator

    gen = LocalGenerator()
    rates = []
    for r in rows:
        t = r["timings"]
        seconds = (t["total"] - t["first_token"]) / 1000
        tokens = gen.count_tokens(r["answer"] or "")
        if tokens > 1 and seconds > 0:
            rates.append((tokens - 1) / seconds)
    if not rates:
        return {}
    return {
        "decode_tokens_per_s_p50": round(float(np.median(rates)), 1),
        "answer_tokens_mean": round(
            float(np.mean([gen.count_tokens(r["answer"] or "") for r in rows])), 1
        ),
    }


def local_load_times(home: Home) -> dict[str, float]:
    """Seconds to load the local model in a fresh process: from the GGUF file (first use:
    de-quantise and write the safetensors copy) and then from that copy."""
    code = (
        "import time; from pgrag.query.generation.local import LocalGenerator as G; g = G();"
        " t = time.perf_counter(); g.load(); print(time.perf_counter() - t)"
    )
    times = {}
    for name in ("from_gguf_s", "cached_s"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, **home.env},
            capture_output=True,
            text=True,
            check=True,
        )
        times[name] = round(float(out.stdout.strip().splitlines()[-1]), 2)
    return times


def run(
    home: Home, collection: str, workers: int, n: int, generator: str, rerank: bool
) -> dict[str, Any]:
    from pgrag.query.answering import submit

    def ask(count: int) -> list[Any]:
        return [
            submit(QUESTIONS[i % len(QUESTIONS)], collection, generator=generator, rerank=rerank)
            for i in range(count)
        ]

    worker = Worker(home, "query", workers)
    try:
        worker.wait_ready()
        wait_answered(ask(2 * workers), timeout=600)  # every pool process loads its models
        meter = CpuMeter(
            {
                "query_worker": worker.proc.pid,
                "postgres": home.postmaster_pid,
                "redis": home.redis_pid,
            },
            {"bench": os.getpid()},
        ).start()
        ids = ask(n)
        rows = wait_answered(ids, timeout=max(600, 60 * n))
        usage = meter.stop()
    finally:
        worker.stop()
    failed = [r["error"] for r in rows if r["state"] != "done"]
    done = [r for r in rows if r["state"] == "done"]
    span = max(r["finished_at"] for r in rows) - min(r["created_at"] for r in rows)
    result = {
        "backend": os.environ.get("PGRAG_INFERENCE_BACKEND", "auto"),
        "workers": workers,
        "questions": n,
        "failed": len(failed),
        "errors": sorted(set(failed))[:5],
        "questions_per_s": round(n / span.total_seconds(), 2),
        "stages": percentiles(done),
        "cpu": usage.as_dict(),
    }
    if generator == "local":
        result |= decode_rates(done)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--workers", default="1,2", help="query worker processes, e.g. 1,2")
    parser.add_argument("--generator", default="extractive", choices=["extractive", "local"])
    parser.add_argument("--rerank", action="store_true", help="rerank (configured model)")
    parser.add_argument(
        "--backend",
        default="auto",
        help="inference backend settings to compare, e.g. torch,auto (auto: OpenVINO on a CPU)",
    )
    parser.add_argument("--corpus", type=Path, default=ROOT / "examples" / "corpus")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary PGRAG_HOME")
    args = parser.parse_args()

    env: dict[str, str] = {}
    results: dict[str, Any] = {"generator": args.generator, "rerank": args.rerank, "runs": []}
    with pgrag_home(keep=args.keep, env=env) as home:
        if args.generator == "local":
            results["local_model_load"] = local_load_times(home)
        for backend in args.backend.split(","):
            use_backend(backend)
            collection = ingest(home, args.corpus, f"bench-{backend}")
            for workers in (int(w) for w in args.workers.split(",")):
                print(
                    f"{args.questions} questions, backend {backend}, {workers} query worker(s)...",
                    file=sys.stderr,
                )
                results["runs"].append(
                    run(home, collection, workers, args.questions, args.generator, args.rerank)
                )

    headers = ["stage (ms)"] + [
        f"{r['backend']} {r['workers']}w {p}" for r in results["runs"] for p in ("p50", "p95")
    ]
    rows: list[list[Any]] = []
    for stage in STAGES:
        if any(stage in r["stages"] for r in results["runs"]):
            rows.append(
                [stage]
                + [
                    r["stages"].get(stage, {}).get(f"{p}_ms")
                    for r in results["runs"]
                    for p in ("p50", "p95")
                ]
            )
    rows.append(
        ["questions/s"] + [x for r in results["runs"] for x in (r["questions_per_s"], None)]
    )
    rows.append(["failed"] + [x for r in results["runs"] for x in (r["failed"], None)])
    rows.append(
        ["others' CPU share"]
        + [x for r in results["runs"] for x in (r["cpu"]["other_share_of_machine"], None)]
    )
    title = (
        f"{args.questions} queued questions, generator {args.generator}"
        f"{', rerank' if args.rerank else ''}"
    )
    print_table(title, rows, headers)
    if "local_model_load" in results:
        print(f"local model load: {results['local_model_load']}")
    for r in results["runs"]:
        if "decode_tokens_per_s_p50" in r:
            print(
                f"{r['backend']}, {r['workers']} worker(s):"
                f" decode {r['decode_tokens_per_s_p50']} tokens/s p50"
            )
    path = write_json(args.out or default_out("query_latency"), "query_latency", results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
