"""ANN quality: recall@10 of the HNSW index against exact search, at the default ef_search.

    python bench/ann_recall.py [--n 1000000] [--queries 100] [--per-cluster 1000]
                               [--intrinsic-dim 0] [--ef-sweep 100,200]
    python bench/ann_recall.py --collection NAME [--query-texts queries.jsonl] --n 0

Two corpora:

- synthetic (unless --n 0): N clustered unit vectors of 384 dimensions (N/--per-cluster
  random unit centres, each point = centre + a random direction of the same length,
  normalised: cosine ~0.7 to its centre, ~0.5 to its cluster mates). With the directions
  drawn from all 384 dimensions the points of a cluster are all about equally far apart, a
  worst case for any ANN index; --intrinsic-dim D draws them from one random D-dimensional
  subspace instead, closer to real embeddings, whose variance sits in far fewer dimensions
  than they have. The vectors are loaded with binary COPY
  into a scratch table `pgrag_bench.ann_vectors`, indexed with pgrag's HNSW settings
  (m 16, ef_construction 64, cosine) and queried with fresh points of the same distribution;
- a collection (--collection, with the configured services: `pgrag up` first): its chunks,
  queried with the embedded lines of a BEIR queries.jsonl (--query-texts) or, without one,
  with stored chunk embeddings (each query then finds itself in both searches).

For each query: the HNSW top 10 (`ORDER BY embedding <=> q LIMIT 10`, index scan) and the
exact top 10 (the same statement with `SET enable_indexscan = off`); recall@10 is the mean
overlap / 10. It is measured at pgvector's default ef_search (40, single pass) and at the one
pgrag sets for k = 10 (`indexing.ef_search_for(10)`, with the iterative scan on).

The synthetic part runs in a fresh temporary PGRAG_HOME (embedded PostgreSQL) unless
--collection is given, in which case both use the configured database.
Prints a table and writes JSON (default bench/results/ann-recall-<time>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import default_out, pgrag_home, postgres_settings, print_table, write_json

DIM = 384
K = 10
PGVECTOR_DEFAULT_EF = 40


def clustered(
    rng: np.random.Generator, centres: np.ndarray, n: int, basis: np.ndarray | None = None
) -> np.ndarray:
    """n unit vectors around random centres: centre + a random unit direction, normalised.
    With `basis` (rows: an orthonormal basis of a subspace) the directions lie in that
    subspace, so the points have fewer intrinsic dimensions than the space."""
    dims = centres.shape[1] if basis is None else basis.shape[0]
    noise = rng.standard_normal((n, dims), dtype=np.float32)
    if basis is not None:
        noise = noise @ basis
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    points = centres[rng.integers(0, len(centres), n)] + noise
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def search_settings(conn: Any, mode: str) -> None:
    """Session settings (`conn` is in autocommit mode) for one way of searching.

    'exact': no index scan at all; 'pgvector': ef_search 40, single pass; 'pgrag': what
    retrieval sets for k = 10. Both HNSW modes hold the planner to the index (no sequential
    scan, no sort), which on a small table might otherwise scan it exactly.
    """
    from pgrag.store import indexing

    conn.execute("RESET ALL")
    if mode == "exact":
        conn.execute("SET enable_indexscan = off")
        return
    for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
        conn.execute(f"SET {setting} = off")
    if mode.startswith("ef="):
        conn.execute(f"SET hnsw.ef_search = {int(mode[3:])}")
    elif mode == "pgvector":
        conn.execute(f"SET hnsw.ef_search = {PGVECTOR_DEFAULT_EF}")
        conn.execute("SET hnsw.iterative_scan = off")
    else:
        conn.execute(f"SET hnsw.ef_search = {indexing.ef_search_for(K)}")
        conn.execute("SET hnsw.iterative_scan = relaxed_order")


def recall(conn: Any, sql: str, queries: np.ndarray, sweep: Sequence[int] = ()) -> dict[str, Any]:
    """recall@10 and mean latency of HNSW at both ef_search settings against exact search,
    and at each ef_search of `sweep` (single pass)."""
    from pgrag.store import indexing

    found: dict[str, list[list[int]]] = {}
    ms: dict[str, float] = {}
    modes = ["exact", "pgvector", "pgrag", *(f"ef={ef}" for ef in sweep)]
    for mode in modes:
        search_settings(conn, mode)
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, {"q": queries[0], "k": K}))
        if ("hnsw" in plan) == (mode == "exact"):
            raise RuntimeError(f"unexpected plan for the {mode} search:\n{plan}")
        start = time.perf_counter()
        found[mode] = [[r[0] for r in conn.execute(sql, {"q": q, "k": K})] for q in queries]
        ms[mode] = (time.perf_counter() - start) * 1000 / len(queries)
    conn.execute("RESET ALL")
    out: dict[str, Any] = {"queries": len(queries), "ms_per_query": ms}
    for mode in modes[1:]:
        hits = [len(set(a) & set(e)) / K for a, e in zip(found[mode], found["exact"], strict=True)]
        out[f"recall@10_{mode}"] = float(np.mean(hits))
        out[f"queries_below_0.9_{mode}"] = int(sum(h < 0.9 for h in hits))
    out["ef_search"] = {"pgvector": PGVECTOR_DEFAULT_EF, "pgrag": indexing.ef_search_for(K)}
    return out


# ---------------------------------------------------------------------------- synthetic

SYNTHETIC_SQL = (
    "SELECT id FROM pgrag_bench.ann_vectors ORDER BY embedding <=> %(q)s::vector(384) LIMIT %(k)s"
)


def synthetic(args: argparse.Namespace) -> dict[str, Any]:
    from pgrag.runtime import db

    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((max(1, args.n // args.per_cluster), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = None
    if args.intrinsic_dim:
        q, _ = np.linalg.qr(rng.standard_normal((DIM, args.intrinsic_dim)))
        basis = q.T.astype(np.float32)
    result: dict[str, Any] = {
        "n": args.n,
        "clusters": len(centres),
        "dim": DIM,
        "noise_dims": args.intrinsic_dim or DIM,
    }
    with db.connect(autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS pgrag_bench CASCADE")
        conn.execute("CREATE SCHEMA pgrag_bench")
        conn.execute("CREATE TABLE pgrag_bench.ann_vectors (id integer, embedding vector(384))")
        start = time.perf_counter()
        with conn.cursor().copy(
            "COPY pgrag_bench.ann_vectors (id, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "vector"])
            for lo in range(0, args.n, 50_000):
                batch = clustered(rng, centres, min(50_000, args.n - lo), basis)
                for i, v in enumerate(batch, lo):
                    copy.write_row((i, v))
        result["copy_s"] = time.perf_counter() - start
        workers = max(1, min(8, (os.cpu_count() or 2) - 1))
        conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
        conn.execute(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'")
        start = time.perf_counter()
        conn.execute(
            "CREATE INDEX ann_vectors_hnsw ON pgrag_bench.ann_vectors"
            " USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
        )
        result["index_build_s"] = time.perf_counter() - start
        result["parallel_maintenance_workers"] = workers
        conn.execute("ANALYZE pgrag_bench.ann_vectors")
        size = conn.execute("SELECT pg_relation_size('pgrag_bench.ann_vectors_hnsw')").fetchone()
        result["index_mb"] = round(size[0] / 2**20, 1) if size else None
        queries = clustered(rng, centres, args.queries, basis)
        result |= recall(conn, SYNTHETIC_SQL, queries, args.ef_sweep)
        if not args.keep:
            conn.execute("DROP SCHEMA pgrag_bench CASCADE")
    return result


# ---------------------------------------------------------------------------- collection


def collection_recall(args: argparse.Namespace) -> dict[str, Any]:
    from pgrag.query.retrieval import dense_sql, embed_query
    from pgrag.runtime import db
    from pgrag.store.collections import get_collection

    collection = get_collection(args.collection)
    # The dense statement of retrieval, chunk ids first.
    sql = f"SELECT id FROM ({dense_sql(collection)}) found"
    if args.query_texts:
        lines = Path(args.query_texts).read_text().splitlines()
        texts = [json.loads(line)["text"] for line in lines if line.strip()][: args.queries]
        queries = np.stack([embed_query(collection, t) for t in texts])
        source = f"{len(texts)} query texts from {args.query_texts}"
    else:
        with db.connect() as conn:
            rows = conn.execute(
                "SELECT embedding FROM pgrag.chunks WHERE collection_id = %s"
                " ORDER BY random() LIMIT %s",
                (collection.id, args.queries),
            ).fetchall()
        queries = np.stack([r[0].to_numpy() for r in rows])
        source = f"{len(rows)} stored chunk embeddings"
    with db.connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pgrag.chunks WHERE collection_id = %s", (collection.id,)
        ).fetchone()
        result = {"collection": collection.name, "chunks": row[0] if row else 0}
        result |= {"queries_from": source} | recall(conn, sql, queries, args.ef_sweep)
    return result


@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[None]:
    if args.collection:
        yield
    else:
        with pgrag_home():
            yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic vectors (0: none)")
    parser.add_argument("--per-cluster", type=int, default=1000, help="vectors per cluster")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--intrinsic-dim",
        type=int,
        default=0,
        help="synthetic: spread points along this many dimensions (0: all 384)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--maintenance-work-mem", default="4GB")
    parser.add_argument("--collection", help="also measure this collection (configured services)")
    parser.add_argument(
        "--query-texts", help="BEIR queries.jsonl to embed as the collection's queries"
    )
    parser.add_argument(
        "--ef-sweep",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[100, 200],
        help="also measure these ef_search values (comma-separated)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the synthetic table")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    results: dict[str, Any] = {}
    with database(args):
        results["postgres"] = postgres_settings()
        if args.collection:
            results["collection"] = collection_recall(args)
        if args.n > 0:
            results["synthetic"] = synthetic(args)
    from pgrag.store.indexing import ef_search_for

    rows = []
    for name, r in results.items():
        if name == "postgres":
            continue
        size = r.get("n") or r.get("chunks")
        rows.append(
            [
                f"{name} ({size:,} vectors"
                + (f", noise in {r['noise_dims']} dims)" if "noise_dims" in r else ")"),
                r["queries"],
                f"{r['recall@10_pgvector']:.3f}",
                f"{r['recall@10_pgrag']:.3f}",
                round(r["ms_per_query"]["pgrag"], 2),
                round(r["ms_per_query"]["exact"], 1),
                round(r.get("index_build_s", float("nan")), 1),
            ]
        )
    for name, r in results.items():
        if name != "postgres":
            sweep = ", ".join(
                f"ef {k[13:]}: {v:.3f}" for k, v in r.items() if k.startswith("recall@10_ef=")
            )
            print(f"{name} ef_search sweep (single pass) recall@10: {sweep}")
    print_table(
        "HNSW recall@10 against exact search (m 16, ef_construction 64, cosine)",
        rows,
        [
            "corpus",
            "queries",
            f"ef {PGVECTOR_DEFAULT_EF} (pgvector)",
            f"ef {ef_search_for(K)} (pgrag)",
            "ms hnsw",
            "ms exact",
            "build s",
        ],
    )
    out = write_json(args.out or default_out("ann-recall"), "ann_recall", results)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
