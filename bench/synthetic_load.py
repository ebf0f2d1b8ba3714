"""Loader and HNSW build at scale, with synthetic vectors (no model).

    python bench/synthetic_load.py [--rows 1000000] [--dim 384] [--out PATH]
    python bench/synthetic_load.py --rows 100000,300000      # several sizes, then extrapolate

For each size, in a fresh embedded PostgreSQL + pgvector: a collection with minimal document
rows, then N normalised vectors drawn around random cluster centres are loaded through
pgrag's own loader path, batch by batch as the embed worker writes them
(`pgrag.ingest.loading.replace_chunks`: DELETE + binary COPY + lexeme counts, then the documents'
status update and the commit, one transaction per `ingest_batch_docs` documents). Chunk texts
are empty, so no chunk has a lexeme: the figure is the vector loader's.
Then the collection's HNSW index is built with `pgrag.store.indexing.build_index` (what
`finalize_job` runs), with its progress phases and any pgvector notice (such as the graph
outgrowing maintenance_work_mem) recorded.

Prints a table (and, with several sizes, a power-law extrapolation to --extrapolate rows)
and writes JSON (default bench/results/synthetic_load-<time>.json).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import (
    CpuMeter,
    Home,
    ResourceSampler,
    default_out,
    exit_on_sigterm,
    pgrag_home,
    postgres_settings,
    print_table,
    rate,
    scalar,
    write_json,
)


def clustered_vectors(
    rng: np.random.Generator, centres: np.ndarray, n: int, spread: float
) -> np.ndarray:
    """`n` unit vectors, each a centre plus gaussian noise of `spread` per dimension."""
    labels = rng.integers(len(centres), size=n)
    x = centres[labels] + spread * rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_collection(name: str, dim: int) -> Any:
    """A collection row for synthetic vectors; no model is loaded."""
    from pgrag.runtime import db
    from pgrag.runtime.settings import get_settings
    from pgrag.store.schema import Collection

    s = get_settings()
    collection = Collection(
        name=name,
        model="synthetic",
        dim=dim,
        chunk_size=s.chunk_size,
        chunk_overlap=s.chunk_overlap,
        prepend_title=False,
        text_config="english",
    )
    with db.session() as session:
        session.add(collection)
        session.commit()
    return collection


def make_documents(collection_id: int, count: int) -> list[int]:
    """`count` minimal `pending` document rows, as the ingest worker leaves them."""
    from pgrag.runtime import db

    with db.connect() as conn:
        ids = [
            row[0]
            for row in conn.execute(
                "INSERT INTO pgrag.documents"
                " (collection_id, external_id, content_hash, text, status)"
                " SELECT %s, 'syn-' || g, '\\x', '', 'pending' FROM generate_series(1, %s) g"
                " RETURNING id",
                (collection_id, count),
            )
        ]
    return sorted(ids)


def checkpoints() -> int:
    from pgrag.runtime import db

    with db.connect() as conn:
        row = conn.execute("SELECT num_timed + num_requested FROM pg_stat_checkpointer").fetchone()
    return int(row[0]) if row else -1


def load(
    collection: Any,
    doc_ids: list[int],
    rows: int,
    per_doc: int,
    batch_docs: int,
    seed: int,
    home: Home,
) -> dict[str, Any]:
    """Load `rows` vectors through replace_chunks, one transaction per `batch_docs` docs."""
    from pgrag.ingest.chunking import Chunk
    from pgrag.ingest.loading import DocumentChunks, chunk_lexemes, mark_embedded, replace_chunks
    from pgrag.runtime import db

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((100, int(collection.dim)), dtype=np.float32)
    template = [Chunk(j, "", 0, 0, 0) for j in range(per_doc)]
    generate_s = connect_s = replace_s = status_s = commit_s = 0.0
    written = 0
    next_report = 0.1
    ckpt0 = checkpoints()
    meter = CpuMeter({"postgres": home.postmaster_pid}, {"bench": os.getpid()}).start()
    started = time.perf_counter()
    for first in range(0, len(doc_ids), batch_docs):
        ids = doc_ids[first : first + batch_docs]
        loads = []
        for i, doc_id in enumerate(ids):
            n = min(per_doc, rows - (first + i) * per_doc)
            loads.append(DocumentChunks(doc_id, None, {}, template[:n]))
        count = sum(len(d.chunks) for d in loads)
        t = time.perf_counter()
        vectors = clustered_vectors(rng, centres, count, spread=0.35)
        t1 = time.perf_counter()
        generate_s += t1 - t
        # As embed_documents: its own connection, replace_chunks, the status update, commit.
        with db.connect() as conn:
            t2 = time.perf_counter()
            lexemes = chunk_lexemes(collection, loads)  # none: the texts are empty
            written += replace_chunks(conn, collection, loads, vectors, lexemes)
            t3 = time.perf_counter()
            mark_embedded(conn, loads)
            t4 = time.perf_counter()
            conn.commit()
            t5 = time.perf_counter()
        connect_s += t2 - t1
        replace_s += t3 - t2
        status_s += t4 - t3
        commit_s += t5 - t4 + (time.perf_counter() - t5)  # commit and close
        if written >= next_report * rows:
            elapsed = time.perf_counter() - started
            print(
                f"  loaded {written:,} rows in {elapsed:.0f}s"
                f" ({rate(written, elapsed - generate_s):,.0f} rows/s without generation)",
                file=sys.stderr,
            )
            next_report += 0.1
    wall = time.perf_counter() - started
    cpu = meter.stop()
    loader_s = wall - generate_s
    return {
        "rows": written,
        "documents": len(doc_ids),
        "transactions": math.ceil(len(doc_ids) / batch_docs),
        "rows_per_transaction": batch_docs * per_doc,
        "seconds_wall": round(wall, 2),
        "seconds_generating_vectors": round(generate_s, 2),
        "seconds_loader": round(loader_s, 2),
        "loader_rows_per_s": round(rate(written, loader_s), 1),
        "loader_mib_per_s": round(rate(written * int(collection.dim) * 4 / 2**20, loader_s), 2),
        "breakdown_s": {
            "connect": round(connect_s, 2),
            "replace_chunks": round(replace_s, 2),
            "status_update": round(status_s, 2),
            "commit_and_close": round(commit_s, 2),
        },
        "checkpoints_during_load": checkpoints() - ckpt0 if ckpt0 >= 0 else None,
        "cpu": cpu.as_dict(),
    }


PROGRESS = """
SELECT phase, blocks_total, blocks_done, tuples_total, tuples_done
FROM pg_stat_progress_create_index WHERE relid = 'pgrag.chunks'::regclass
"""


class BuildProgress(threading.Thread):
    """Polls pg_stat_progress_create_index; keeps when each phase was first seen."""

    def __init__(self, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.phases: dict[str, float] = {}
        self.last: tuple[Any, ...] | None = None
        self.parallel_workers = 0  # most parallel workers seen at once
        self._stop_event = threading.Event()
        self.t0 = time.perf_counter()

    def run(self) -> None:
        from pgrag.runtime import db

        with db.connect(autocommit=True) as conn:
            while not self._stop_event.is_set():
                row = conn.execute(PROGRESS).fetchone()
                if row is not None:
                    self.last = tuple(row)
                    self.phases.setdefault(row[0], round(time.perf_counter() - self.t0, 1))
                workers = scalar(
                    conn,
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'parallel worker'",
                )
                self.parallel_workers = max(self.parallel_workers, int(workers))
                self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def build(collection: Any, home: Home, memory: str | None = None) -> dict[str, Any]:
    """`pgrag.store.indexing.build_index`, timed, with its progress phases and notices; with
    `memory`, it runs with that maintenance_work_mem instead of PGRAG_INDEX_BUILD_MEMORY."""
    from pgrag.runtime import db
    from pgrag.runtime.settings import get_settings
    from pgrag.store import indexing

    if memory:
        os.environ["PGRAG_INDEX_BUILD_MEMORY"] = memory
        get_settings.cache_clear()

    notices: list[tuple[float, str]] = []
    progress = BuildProgress()
    sampler = ResourceSampler({"postgres": home.postmaster_pid or 0}, interval=1.0)
    with db.connect(autocommit=True) as conn:
        t0 = time.perf_counter()
        conn.add_notice_handler(
            lambda d: notices.append((round(time.perf_counter() - t0, 1), str(d.message_primary)))
        )
        progress.t0 = t0
        progress.start()
        sampler.start()
        meter = CpuMeter({"postgres": home.postmaster_pid}).start()
        indexing.build_index(conn, collection)
        seconds = time.perf_counter() - t0
        cpu = meter.stop()
        progress.stop()
        sampler.stop()
        session = {
            name: str(scalar(conn, f"SHOW {name}"))
            for name in ("maintenance_work_mem", "max_parallel_maintenance_workers")
        }
        size = scalar(
            conn, "SELECT pg_relation_size(%s::regclass)", (f"pgrag.{collection.index_name}",)
        )
        used = scalar(
            conn,
            "EXPLAIN (FORMAT JSON) SELECT id FROM pgrag.chunks WHERE collection_id = %s"
            f" ORDER BY {indexing.vector_expr(collection)} <=> %s::vector LIMIT 10",
            (collection.id, "[" + ",".join(["0.1"] * int(collection.dim)) + "]"),
        )
    return {
        "seconds": round(seconds, 2),
        "index_mib": round(size / 2**20, 1),
        "settings_of_the_build_session": session,
        "parallel_workers_seen": progress.parallel_workers,
        "phases_first_seen_s": progress.phases,
        "notices": notices,
        "graph_fit_in_maintenance_work_mem": not any(
            "maintenance_work_mem" in m for _, m in notices
        ),
        "plan_uses_index": collection.index_name in str(used),
        "postgres_peak_rss_tree_mib": sampler.as_dict()["postgres"]["peak_rss_tree_mib"],
        "cpu": cpu.as_dict(),
    }


def one_size(rows: int, args: argparse.Namespace) -> dict[str, Any]:
    with pgrag_home(keep=args.keep) as home:
        from pgrag.runtime import db
        from pgrag.runtime.settings import get_settings

        batch_docs = args.batch_docs or get_settings().ingest_batch_docs
        collection = make_collection(f"synthetic_{rows}", args.dim)
        t = time.perf_counter()
        doc_ids = make_documents(collection.id, math.ceil(rows / args.chunks_per_doc))
        docs_s = time.perf_counter() - t
        print(
            f"{rows:,} rows: {len(doc_ids):,} documents in {docs_s:.1f}s; loading", file=sys.stderr
        )
        result: dict[str, Any] = {"rows": rows, "postgres": postgres_settings()}
        result["documents_seconds"] = round(docs_s, 2)
        result["load"] = load(
            collection, doc_ids, rows, args.chunks_per_doc, batch_docs, args.seed, home
        )
        with db.connect() as conn:
            result["table_mib"] = round(
                scalar(conn, "SELECT pg_total_relation_size('pgrag.chunks')") / 2**20,
                1,
            )
        if not args.no_index:
            print(f"{rows:,} rows: building the HNSW index", file=sys.stderr)
            result["hnsw"] = build(collection, home, args.maintenance_work_mem)
            result["hnsw"]["maintenance_work_mem_overridden"] = bool(args.maintenance_work_mem)
        return result


def extrapolate(results: list[dict[str, Any]], target: int) -> dict[str, Any] | None:
    """Power-law fits t = a * n^b through the two largest sizes, evaluated at `target`."""
    if len(results) < 2:
        return None
    r1, r2 = sorted(results, key=lambda r: r["rows"])[-2:]
    n1, n2 = r1["rows"], r2["rows"]
    out: dict[str, Any] = {"from_rows": [n1, n2], "to_rows": target}
    for key, get in [
        ("load_seconds", lambda r: r["load"]["seconds_loader"]),
        ("hnsw_seconds", lambda r: r.get("hnsw", {}).get("seconds")),
    ]:
        t1, t2 = get(r1), get(r2)
        if not t1 or not t2:
            continue
        b = math.log(t2 / t1) / math.log(n2 / n1)
        out[key] = {"exponent": round(b, 3), "predicted": round(t2 * (target / n2) ** b, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rows", default="1000000", help="vectors to load; a comma list runs several sizes"
    )
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunks-per-doc", type=int, default=8)
    parser.add_argument(
        "--batch-docs",
        type=int,
        default=None,
        help="documents per transaction; default: settings.ingest_batch_docs (one embed task)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--no-index", action="store_true", help="load only")
    parser.add_argument(
        "--maintenance-work-mem",
        default=None,
        metavar="SIZE",
        help="what-if: run build_index with this maintenance_work_mem (e.g. 3GB) instead of"
        " the value it sets; the table title says so",
    )
    parser.add_argument(
        "--extrapolate",
        type=int,
        default=1_000_000,
        help="rows to extrapolate to when several sizes ran",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    parser.add_argument("--keep", action="store_true", help="keep the temporary PGRAG_HOME")
    args = parser.parse_args()
    exit_on_sigterm()

    sizes = [int(s.replace("_", "")) for s in args.rows.split(",")]
    results = [one_size(n, args) for n in sizes]
    rows = []
    for r in results:
        ld, h = r["load"], r.get("hnsw", {})
        rows.append(
            [
                r["rows"],
                ld["seconds_loader"],
                ld["loader_rows_per_s"],
                ld["loader_mib_per_s"],
                ld["checkpoints_during_load"],
                r["table_mib"],
                h.get("seconds"),
                round(rate(r["rows"], h["seconds"]), 0) if h else None,
                h.get("index_mib"),
                ("yes" if h.get("graph_fit_in_maintenance_work_mem") else "NO") if h else None,
            ]
        )
    built = next((r["hnsw"] for r in results if "hnsw" in r), None)
    setup = (
        ", build_index session: maintenance_work_mem {maintenance_work_mem}{how},"
        " max_parallel_maintenance_workers {max_parallel_maintenance_workers}".format(
            **built["settings_of_the_build_session"],
            how=" (OVERRIDDEN by --maintenance-work-mem)" if args.maintenance_work_mem else "",
        )
        if built
        else ""
    )
    print_table(
        f"synthetic load: {args.dim}-d clustered unit vectors, pgrag loader + build_index{setup}",
        rows,
        [
            "rows",
            "load s",
            "rows/s",
            "MiB/s",
            "ckpts",
            "table MiB",
            "HNSW s",
            "rows/s",
            "index MiB",
            "graph in mwm",
        ],
    )
    for r in results:
        if "hnsw" in r:
            print(
                f"\n{r['rows']:,} rows: build phases first seen at (s):"
                f" {r['hnsw']['phases_first_seen_s']};"
                f" parallel workers seen: {r['hnsw']['parallel_workers_seen']}"
            )
            for t, m in r["hnsw"]["notices"]:
                print(f"  notice at {t}s: {m}")
    extra = extrapolate(results, args.extrapolate)
    if extra:
        print(
            f"\nextrapolation to {args.extrapolate:,} rows (power law through"
            f" {extra['from_rows'][0]:,} and {extra['from_rows'][1]:,} rows):"
        )
        for key in ("load_seconds", "hnsw_seconds"):
            if key in extra:
                print(f"  {key}: {extra[key]['predicted']:,} s (exponent {extra[key]['exponent']})")
    path = write_json(
        args.out or default_out("synthetic_load"),
        "synthetic_load",
        {
            "dim": args.dim,
            "chunks_per_doc": args.chunks_per_doc,
            "sizes": results,
            "extrapolation": extra,
        },
    )
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
