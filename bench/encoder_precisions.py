"""The encoders' backends side by side on real text: speed, agreement with fp32, ranking.

    python bench/encoder_precisions.py --beir ../shared/data/scifact [--texts 512]
        [--queries 100] [--backends torch-fp32,openvino-fp32,openvino-bf16,openvino-int8]
        [--rerank-queries 50 --depth 20] [--rerank-model PATH]

In this process, no services. A corpus of `--texts` documents (title and text, as pgrag
embeds them): the relevant documents of `--queries` judged queries drawn at random (seed 0),
then the corpus's others in file order. Each backend's `Embedder.encode` embeds it in turns
over 8 slices, so that other work on a shared machine weighs on every backend alike; texts/s
in wall time and per CPU-second of this process, the cosine of each vector to its torch fp32
twin (min, p1, mean) and dense nDCG@10 of the drawn queries over this small corpus.

Then the cross-encoder (a sentence-transformers one: `--rerank-model`, default the
transformers copy of the packaged ms-marco-MiniLM-L-12-v2, `pgrag.inference.onnx_torch`)
reranks the torch fp32 dense top `--depth` of `--rerank-queries` queries in each backend:
pairs/s, the correlation of each query's scores with torch fp32's, and nDCG@10. bf16 is
skipped on a CPU without native bf16. Prints tables and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_model, default_out, print_table, write_json
from pgrag.evaluation import ranking
from pgrag.inference.embedding import Embedder, load_embedder
from pgrag.inference.openvino import best_precision
from pgrag.inference.quantization import agreement
from pgrag.inference.rerank import Reranker, load_reranker
from pgrag.runtime.settings import DEFAULT_EMBED_MODEL, DEFAULT_RERANK_MODEL

REFERENCE = "torch-fp32"
SLICES = 8


def corpus(data: ranking.BeirData, texts: int) -> dict[str, str]:
    """The judged queries' relevant documents, then others, up to `texts` documents."""
    wanted = {d for docs in data.qrels.values() for d in docs}
    chosen: dict[str, str] = {}
    others: dict[str, str] = {}
    with data.corpus_path.open() as f:
        for line in f:
            row = json.loads(line)
            text = f"{row.get('title') or ''}\n{row['text']}".strip()
            (chosen if row["_id"] in wanted else others)[str(row["_id"])] = text
    for doc, text in others.items():
        if len(chosen) >= texts:
            break
        chosen[doc] = text
    return chosen


def timed_turns(
    calls: dict[str, Any], items: list[Any], slices: int = SLICES
) -> tuple[dict[str, list[Any]], dict[str, float], dict[str, float]]:
    """Each call over every slice of `items`, the calls taking turns per slice: outputs, wall
    seconds and CPU seconds of this process per call."""
    out: dict[str, list[Any]] = {k: [] for k in calls}
    wall = dict.fromkeys(calls, 0.0)
    cpu = dict.fromkeys(calls, 0.0)
    bounds = np.linspace(0, len(items), slices + 1).astype(int)
    for a, b in itertools.pairwise(bounds):
        for name, call in calls.items():
            t, c = time.perf_counter(), time.process_time()
            out[name].append(call(items[a:b]))
            wall[name] += time.perf_counter() - t
            cpu[name] += time.process_time() - c
    return out, wall, cpu


def dense_runs(
    embedder: Embedder, docs: dict[str, str], vectors: np.ndarray, queries: dict[str, str]
) -> dict[str, dict[str, float]]:
    ids = list(docs)
    q = embedder.encode(list(queries.values()))
    sims = q @ vectors.T
    return {
        qid: {ids[j]: float(sims[i, j]) for j in np.argsort(-sims[i])[:100]}
        for i, qid in enumerate(queries)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beir", type=Path, required=True)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--backends", default="torch-fp32,openvino-fp32,openvino-bf16,openvino-int8"
    )
    parser.add_argument("--rerank-queries", type=int, default=50, help="0: no rerank")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--rerank-model", help="a sentence-transformers cross-encoder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    data = ranking.sample_queries(ranking.load_beir(args.beir), args.queries)
    docs = corpus(data, args.texts)
    texts = list(docs.values())
    backends = [
        b for b in args.backends.split(",") if b != "openvino-bf16" or best_precision() == "bf16"
    ]
    embedders = {b: load_embedder(DEFAULT_EMBED_MODEL, "cpu", b) for b in backends}
    for e in embedders.values():
        e.encode(texts[:8])  # warm
    out, wall, cpu = timed_turns({b: e.encode for b, e in embedders.items()}, texts)
    vectors = {b: np.concatenate(v) for b, v in out.items()}
    dense = {b: dense_runs(e, docs, vectors[b], data.queries) for b, e in embedders.items()}
    results: dict[str, Any] = {"texts": len(texts), "queries": len(data.queries), "embedder": {}}
    rows = []
    for b, e in embedders.items():
        cos = agreement(vectors[b], vectors[REFERENCE])
        ndcg = ranking.score_run(dense[b], data.qrels)["ndcg@10"]
        r = {
            "runs": e.backend,
            "texts_per_s": len(texts) / wall[b],
            "texts_per_cpu_s": len(texts) / cpu[b],
            "cosine_min": float(cos.min()),
            "cosine_p1": float(np.percentile(cos, 1)),
            "cosine_mean": float(cos.mean()),
            "dense_ndcg@10": ndcg,
        }
        results["embedder"][b] = r
        speed = r["texts_per_s"] / (len(texts) / wall[REFERENCE])
        rows.append(
            [
                b,
                e.backend,
                r["texts_per_s"],
                r["texts_per_cpu_s"],
                f"{speed:.2f}x",
                f"{r['cosine_min']:.4f}",
                f"{r['cosine_p1']:.4f}",
                f"{ndcg:.4f}",
            ]
        )
    cpu_info = cpu_model()
    cpu_name = f"{cpu_info.get('cpu_model')} {cpu_info.get('cpu_flags')}"
    title = f"Embedder.encode, {len(texts)} texts of {args.beir.name}; {cpu_name}"
    print_table(
        title,
        rows,
        ["backend", "runs", "texts/s", "per CPU-s", "vs torch", "cos min", "cos p1", "nDCG@10"],
    )
    if args.rerank_queries:
        results["reranker"] = rerank(args, data, docs, dense[REFERENCE], backends)
    path = write_json(args.out or default_out("encoder-precisions"), "encoder_precisions", results)
    print(f"\nwrote {path}")


def rerank(
    args: argparse.Namespace,
    data: ranking.BeirData,
    docs: dict[str, str],
    dense: dict[str, dict[str, float]],
    backends: list[str],
) -> dict[str, Any]:
    from pgrag.inference.onnx_torch import torch_copy
    from pgrag.inference.weights import resolve_model

    model = args.rerank_model or torch_copy(
        DEFAULT_RERANK_MODEL, resolve_model(DEFAULT_RERANK_MODEL)
    )
    queries = list(data.queries)[: args.rerank_queries]
    candidates = {q: ranking.rank_documents(dense[q])[: args.depth] for q in queries}
    pairs = [(data.queries[q], docs[d]) for q in queries for d in candidates[q]]
    rerankers: dict[str, Reranker] = {b: load_reranker(model, "cpu", b) for b in backends}
    for r in rerankers.values():
        r.score_pairs(pairs[:8])  # warm
    out, wall, cpu = timed_turns({b: r.score_pairs for b, r in rerankers.items()}, pairs)
    scores = {b: np.concatenate(v) for b, v in out.items()}
    results: dict[str, Any] = {"model": model, "pairs": len(pairs), "backends": {}}
    rows = []
    for b, r in rerankers.items():
        runs = {
            q: dict(
                zip(
                    candidates[q],
                    scores[b][i * args.depth : (i + 1) * args.depth].tolist(),
                    strict=True,
                )
            )
            for i, q in enumerate(queries)
        }
        qrels = {q: data.qrels[q] for q in queries}
        ndcg = ranking.score_run(runs, qrels)["ndcg@10"]
        corr = agreement(scores[b], scores[REFERENCE], group=args.depth)
        results["backends"][b] = {
            "runs": r.runtime,
            "pairs_per_s": len(pairs) / wall[b],
            "pairs_per_cpu_s": len(pairs) / cpu[b],
            "correlation_min": float(corr.min()),
            "correlation_mean": float(corr.mean()),
            "ndcg@10": ndcg,
        }
        rows.append(
            [
                b,
                r.runtime,
                len(pairs) / wall[b],
                len(pairs) / cpu[b],
                f"{corr.min():.4f}",
                f"{corr.mean():.4f}",
                f"{ndcg:.4f}",
            ]
        )
    print_table(
        f"rerank of the dense top {args.depth} of {len(queries)} queries ({len(pairs)} pairs)"
        f", {Path(model).name}",
        rows,
        ["backend", "runs", "pairs/s", "per CPU-s", "corr min", "corr mean", "nDCG@10"],
    )
    return results


if __name__ == "__main__":
    main()
