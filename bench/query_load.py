"""Query load: questions/s and latency of one query worker at 1, 8, 64 and 256 concurrent
questions, against a simulated batching LLM server.

    python bench/query_load.py [--levels 1,8,64,256] [--generator openai,extractive]
                               [--via client|api] [--baseline] [--rerank-model NAME]
                               [--ttft-s 0.5 --tokens 40 --pace-s 0.02] [--out PATH]

A fresh embedded PostgreSQL + Redis (bench/common.py) gets the sample corpus ingested; one
query worker as `pgrag up` starts it (threads, PGRAG_QUERY_CONCURRENCY at once) answers. At
each level C, C asyncio clients in this process each ask questions one after another
(`pgrag.client.aask`: straight to PostgreSQL and Redis, or with `--via api` through the
HTTP API and its server-sent events, like any remote caller) until 2C (at least 20) are
answered. The `openai` generator talks to `bench/llm_server.py`, which streams every
answer at the same pace however many are in flight (1.3 s by default: first token after
0.5 s, then 39 more 20 ms apart), like a batching server.

Reported per level: questions/s, p50/p95/p99 latency (asked -> done) and time to the first
token (asked -> first token event), the server's peak of concurrent requests, the mean
and largest number of questions the worker embedded (and reranked) in one forward pass, the
worker's CPU milliseconds per question, and the share of the machine other processes took.
`--baseline` adds a row for one question at a time (a prefork worker with one process: the
query worker before it held many questions), at level 20. `--rerank-model` reranks with that
cross-encoder (its cost bounds the rate on a CPU).
"""

from __future__ import annotations

import argparse
import asyncio
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
    exit_on_sigterm,
    free_port,
    machine_info,
    pgrag_home,
    print_table,
    wait_until_serving,
    write_json,
)
from bench.llm_server import SimulatedLLM
from bench.query_latency import QUESTIONS, ingest


def query_worker(home: Home, env: dict[str, str], one_at_a_time: bool = False) -> Worker:
    """The query worker `pgrag up` starts (or, for the baseline, a one-process prefork one),
    ready with its models loaded."""
    from pgrag.runtime.settings import get_settings

    if one_at_a_time:
        worker = Worker(home, "query", 1, pool="prefork", env=env)
    else:
        worker = Worker(home, "query", get_settings().query_concurrency, env=env)
    worker.wait_ready(timeout=300)
    return worker


class Api:
    """`uvicorn pgrag.api.app:app` with an admin key, unlimited asks; this process's client
    (`pgrag.client`) goes through it while it runs."""

    def __init__(self, home: Home) -> None:
        from pgrag.runtime.settings import get_settings
        from pgrag.store import keys

        _, token = keys.create_key("bench-query-load", ["admin"])
        port = free_port()
        env = {**os.environ, **home.env, "PGRAG_RATE_ASK_PER_MIN": "0"}
        argv = [sys.executable, "-m", "uvicorn", "pgrag.api.app:app", "--port", str(port)]
        argv += ["--log-level", "warning", "--backlog", "4096"]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
        self.saved = {k: os.environ.get(k) for k in ("PGRAG_API_URL", "PGRAG_API_KEY")}
        os.environ.update(PGRAG_API_URL=f"http://127.0.0.1:{port}", PGRAG_API_KEY=token)
        get_settings.cache_clear()
        wait_until_serving(self.proc, f"http://127.0.0.1:{port}/healthz", "API", 60)

    def stop(self) -> None:
        from pgrag.runtime.settings import get_settings

        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        self.proc.terminate()
        self.proc.wait(30)


async def one_client(
    collection: str, todo: list[int], out: list[dict[str, Any]], rerank: bool
) -> None:
    from pgrag.client import aask

    while todo:
        i = todo.pop()
        asked, first, last = time.perf_counter(), None, None
        query_id = None
        try:
            async for event in aask(QUESTIONS[i % len(QUESTIONS)], collection, rerank=rerank):
                query_id = query_id or event.data.get("id")
                if event.type == "token" and first is None:
                    first = time.perf_counter()
                last = event
        except Exception as e:  # counted as an error of this level
            out.append({"error": f"{type(e).__name__}: {e}"})
            continue
        done = time.perf_counter()
        ok = last is not None and last.type == "done"
        out.append(
            {
                "id": query_id,
                "latency_s": done - asked,
                "ttft_s": None if first is None else first - asked,
                "error": None if ok else (last.data if last else "no event"),
            }
        )


def level(collection: str, clients: int, n: int, rerank: bool) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    todo = list(range(n))

    async def main() -> None:
        await asyncio.gather(*(one_client(collection, todo, out, rerank) for _ in range(clients)))

    started = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - started
    ok = [r for r in out if not r["error"]]
    lat = [r["latency_s"] for r in ok]
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    return {
        "clients": clients,
        "questions": n,
        "errors": len(out) - len(ok),
        "error_examples": sorted({str(r["error"]) for r in out if r["error"]})[:3],
        "questions_per_s": round(len(ok) / wall, 2),
        **{f"latency_p{p}_s": _pct(lat, p) for p in (50, 95, 99)},
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p95_s": _pct(ttft, 95),
        **batch_sizes([r["id"] for r in ok]),
    }


def _pct(values: list[float], p: int) -> float | None:
    return round(float(np.percentile(values, p)), 3) if values else None


def batch_sizes(ids: list[str]) -> dict[str, Any]:
    """Mean and largest number of questions per embed (and rerank) forward pass."""
    from pgrag.runtime import db

    with db.connect() as conn:
        rows = conn.execute(
            "SELECT options->'batches' FROM pgrag.queries WHERE id = ANY(%s::uuid[])", (ids,)
        ).fetchall()
    out: dict[str, Any] = {}
    for stage in ("embed", "rerank"):
        sizes = [r[0][stage] for r in rows if r[0] and stage in r[0]]
        if sizes:
            out[f"{stage}_batch_mean"] = round(float(np.mean(sizes)), 1)
            out[f"{stage}_batch_max"] = int(max(sizes))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,8,64,256")
    parser.add_argument("--generator", default="openai,extractive")
    parser.add_argument("--via", choices=["client", "api"], default="client")
    parser.add_argument("--baseline", action="store_true", help="add one-at-a-time at 20")
    parser.add_argument("--rerank-model", default="", help="rerank with this cross-encoder")
    parser.add_argument("--ttft-s", type=float, default=0.5)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--pace-s", type=float, default=0.02)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    exit_on_sigterm()

    env = {"PGRAG_RERANK_MODEL": args.rerank_model} if args.rerank_model else {}
    rerank = bool(args.rerank_model)
    server = SimulatedLLM(args.ttft_s, args.tokens, args.pace_s)
    runs: list[dict[str, Any]] = []
    try:
        with pgrag_home(env=env) as home:
            collection = ingest(home, ROOT / "examples" / "corpus", "bench-load")
            api = Api(home) if args.via == "api" else None
            try:
                for generator in args.generator.split(","):
                    worker_env = {
                        "PGRAG_GENERATOR": generator,
                        "PGRAG_OPENAI_BASE_URL": server.url,
                        "PGRAG_OPENAI_MODEL": "simulated",
                    }
                    plans = [(c, False) for c in map(int, args.levels.split(","))]
                    if args.baseline:
                        plans.insert(0, (20, True))
                    for clients, one_at_a_time in plans:
                        worker = query_worker(home, worker_env, one_at_a_time)
                        try:
                            level(collection, 4, 8, rerank)  # warm: the first answers
                            server.reset()
                            print(f"{generator}: {clients} clients...", file=sys.stderr)
                            n = max(20, 2 * clients)
                            meter = CpuMeter(
                                {
                                    "query_worker": worker.proc.pid,
                                    "postgres": home.postmaster_pid,
                                    "redis": home.redis_pid,
                                    "llm_server": server.proc.pid,
                                },
                                {"clients": os.getpid()},
                            ).start()
                            row = level(collection, clients, n, rerank)
                            row["cpu"] = meter.stop().as_dict()
                        finally:
                            worker.stop()
                        row |= {
                            "generator": generator,
                            "worker": "one at a time" if one_at_a_time else "concurrent",
                            "server_peak": server.stats()["peak"]
                            if generator == "openai"
                            else None,
                        }
                        runs.append(row)
            finally:
                if api:
                    api.stop()
    finally:
        server.stop()

    headers = ["generator", "worker", "clients", "q/s", "p50 s", "p95 s", "p99 s", "ttft p50"]
    headers += ["server peak", "embed batch mean/max", "rerank batch mean/max", "errors"]
    headers += ["worker CPU ms/q", "others' CPU share"]
    rows = [
        [
            r["generator"],
            r["worker"],
            r["clients"],
            r["questions_per_s"],
            r["latency_p50_s"],
            r["latency_p95_s"],
            r["latency_p99_s"],
            r["ttft_p50_s"],
            r["server_peak"],
            f"{r.get('embed_batch_mean', '-')}/{r.get('embed_batch_max', '-')}",
            f"{r.get('rerank_batch_mean', '-')}/{r.get('rerank_batch_max', '-')}",
            r["errors"],
            round(1000 * r["cpu"]["cpu_s"]["query_worker"] / r["questions"], 1),
            r["cpu"]["other_share_of_machine"],
        ]
        for r in runs
    ]
    answer_s = args.ttft_s + (args.tokens - 1) * args.pace_s
    print_table(
        f"One query worker via {args.via}, simulated answers of {answer_s:.2f} s"
        f"{', rerank ' + args.rerank_model if rerank else ''}",
        rows,
        headers,
    )
    results = {"via": args.via, "answer_s": answer_s, "machine": machine_info(), "runs": runs}
    path = write_json(args.out or default_out("query_load"), "query_load", results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
