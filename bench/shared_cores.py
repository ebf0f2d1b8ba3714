"""Embed processes side by side on one box: does a second one slow the job down?

    python bench/shared_cores.py [--beir ../shared/data/scifact] [--docs 1000] [--rounds 2]
        [--backend auto] [--setups NAME,NAME]

In a fresh PGRAG_HOME (embedded PostgreSQL + Redis) with one ingest worker, the first
`--docs` documents of the corpus go through the real pipeline into a fresh collection once
per setup, the setups taking turns for `--rounds` rounds:

- one process: one embed worker, one pool process running a thread per core;
- two, sharing: two embed workers, a thread per core each, whose model calls take turns on
  the cores (`pgrag.runtime.cpu.cores`, PGRAG_SHARE_CORES on: the default);
- two, not sharing: the same with PGRAG_SHARE_CORES=0, each running its threads at will
  (what every release before the shared cores did);
- one worker, -c 2: one embed worker with two pool processes of half the cores' threads.

Each job is timed from submit to `done`, the time it spent indexing (the HNSW build at the
end, the same for every setup) reported apart, with the CPU seconds of the embed workers.
The workers start, and load their model, before the clock does. `--backend` sets the
workers' PGRAG_INFERENCE_BACKEND (torch: OpenMP threads, which wait for work by spinning).

Prints a table and writes JSON (default bench/results/shared-cores-<time>.json).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Home,
    Worker,
    default_out,
    exit_on_sigterm,
    pgrag_home,
    print_table,
    tree_cpu_seconds,
    write_json,
)

# name -> the embed workers it starts: (pool processes, PGRAG_SHARE_CORES) each.
SETUPS: dict[str, list[tuple[int, str]]] = {
    "one process": [(1, "1")],
    "two sharing the cores": [(1, "1"), (1, "1")],
    "two not sharing": [(1, "0"), (1, "0")],
    "one worker -c 2": [(2, "1")],
}


def ingest(home: Home, setup: str, corpus: Path, collection: str, backend: str) -> dict[str, Any]:
    """One job of `corpus` into a new `collection` with the embed workers of `setup`."""
    from pgrag.ingest import jobs, pipeline
    from pgrag.store.collections import create_collection

    workers = [
        Worker(
            home,
            "embed",
            c,
            env={"PGRAG_SHARE_CORES": share, "PGRAG_INFERENCE_BACKEND": backend},
            name=f"embed{i}",
        )
        for i, (c, share) in enumerate(SETUPS[setup])
    ]
    try:
        for w in workers:
            w.wait_ready()
        create_collection(collection)
        cpu_before = sum(tree_cpu_seconds(w.pid) for w in workers)
        started = time.perf_counter()
        job = pipeline.submit(corpus, collection)
        indexing_at = None
        while not (state := jobs.get_job(job.id)).finished:
            if state.state == "indexing" and indexing_at is None:
                indexing_at = time.perf_counter()
            time.sleep(0.1)
        finished = time.perf_counter()
        cpu = sum(tree_cpu_seconds(w.pid) for w in workers) - cpu_before
    finally:
        for w in workers:
            w.stop()
    if state.state != "done":
        raise RuntimeError(f"{setup}: job {job.id} ended {state.state}: {state.error}")
    return {
        "seconds": finished - started,
        "indexing_s": finished - (indexing_at or finished),
        "chunks": state.chunks_done,
        "docs": state.docs_done,
        "embed_workers_cpu_s": cpu,
    }


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beir", type=Path, default=Path("../shared/data/scifact"))
    parser.add_argument("--docs", type=int, default=1000, help="first N documents of the corpus")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", default="auto", help="the embed workers' backend setting")
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    setups = [s.strip() for s in args.setups.split(",")]

    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in setups}
    with tempfile.TemporaryDirectory() as tmp, pgrag_home() as home:
        corpus = Path(tmp) / "corpus.jsonl"
        with (args.beir / "corpus.jsonl").open() as source:
            corpus.write_text("".join(itertools.islice(source, args.docs)))
        reader = Worker(home, "ingest")
        try:
            reader.wait_ready()
            for r, setup in itertools.product(range(args.rounds), setups):
                name = f"cores-{setups.index(setup)}-{r}"
                runs[setup].append(run := ingest(home, setup, corpus, name, args.backend))
                print(f"  round {r + 1}, {setup}: {run['seconds']:.1f} s", file=sys.stderr)
        finally:
            reader.stop()

    base = statistics.median(r["seconds"] for r in runs[setups[0]])
    rows, summary = [], {}
    for setup in setups:
        seconds = statistics.median(r["seconds"] for r in runs[setup])
        indexing = statistics.median(r["indexing_s"] for r in runs[setup])
        cpu = statistics.median(r["embed_workers_cpu_s"] for r in runs[setup])
        chunks = runs[setup][0]["chunks"]
        summary[setup] = {"seconds": seconds, "indexing_s": indexing, "cpu_s": cpu}
        rows.append([setup, seconds, indexing, chunks / seconds, cpu, f"{base / seconds:.2f}x"])
    print_table(
        f"{args.docs} documents of {args.beir.name}, backend {args.backend}, median of "
        f"{args.rounds} rounds",
        rows,
        ["embed workers", "job s", "indexing s", "chunks/s", "embed CPU s", f"vs {setups[0]}"],
    )
    out = write_json(
        args.out or default_out("shared-cores"),
        "shared_cores",
        {
            "corpus": str(args.beir),
            "docs": args.docs,
            "backend": args.backend,
            "summary": summary,
            "runs": runs,
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
