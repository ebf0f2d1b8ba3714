"""Rerank speed: one question's passages scored by the cross-encoder, by runtime, by the
length pairs are cut to, and padded to the longest pair of a batch or to a fixed length.

    python bench/rerank_speed.py --beir ../shared/data/scifact [--questions 10 --depth 50]
        [--runtimes onnxruntime,openvino] [--max-tokens 256,512] [--model M]

Each question (judged queries drawn at random, seed 0) is paired with `--depth` documents
of the corpus: the ones judged relevant to it, then others drawn at random; a passage is
the document's title and text, as a chunk is. Whole abstracts are longer than pgrag's
chunks (200 tokens by default), so cutting at 256 matters more here than in a search. For
each runtime and limit, every question's pairs are scored in one call, as a search does,
and timed (p50 and p95 per question); "fixed" rows pad every batch to the limit, as the
tokenizer file's own setting (512) would. Each row also says how many pairs the limit cut,
and how far its scores are from the same runtime's at the longest limit (mean absolute
difference, and the share of questions whose top 10 stays the same set).

No services are needed: the model runs in this process. Prints a table and writes JSON
(default bench/results/rerank-speed-<time>.json).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import default_out, print_table, write_json


def question_pairs(folder: Path, questions: int, depth: int) -> list[list[tuple[str, str]]]:
    """Per question, its (question, passage) pairs: relevant documents first."""
    from pgrag.evaluation import ranking

    data = ranking.sample_queries(ranking.load_beir(folder), questions)
    texts: dict[str, str] = {}
    with data.corpus_path.open() as f:
        for line in f:
            doc = json.loads(line)
            texts[str(doc["_id"])] = f"{doc.get('title') or ''}\n{doc['text']}".strip()
    ids = sorted(texts)
    rng = random.Random(0)
    out = []
    for q, question in data.queries.items():
        chosen = [d for d in data.qrels[q] if d in texts][:depth]
        while len(chosen) < depth:
            if (d := rng.choice(ids)) not in chosen:
                chosen.append(d)
        out.append([(question, texts[d]) for d in chosen])
    return out


def run(reranker: Any, pairs: list[list[tuple[str, str]]], limit: int, fixed: bool) -> dict:
    """Scores and per-question milliseconds of every question's pairs."""
    times, scores = [], []
    for one in pairs:
        started = time.perf_counter()
        if fixed:
            row = np.zeros(len(one), dtype=np.float32)
            for rows, features in reranker.batches(one, max_tokens=limit):
                width = limit - features["input_ids"].shape[1]
                padded = {k: np.pad(v, ((0, 0), (0, width))) for k, v in features.items()}
                row[rows] = reranker.model.logits(padded)
        else:
            row = reranker.score_pairs(one, max_tokens=limit)
        times.append((time.perf_counter() - started) * 1000)
        scores.append(row)
    return {"ms": times, "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beir", type=Path, required=True, help="BEIR folder")
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--depth", type=int, default=50, help="passages per question")
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    parser.add_argument("--max-tokens", default="256,512", help="pair lengths to cut at")
    parser.add_argument("--model", help="cross-encoder (default: PGRAG_RERANK_MODEL)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from pgrag.inference.rerank import load_reranker

    pairs = question_pairs(args.beir, args.questions, args.depth)
    limits = sorted(int(x) for x in args.max_tokens.split(","))
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    for runtime in [r.strip() for r in args.runtimes.split(",") if r.strip()]:
        backend = "openvino" if runtime == "openvino" else "auto"
        reranker = load_reranker(args.model, "cpu", backend)
        run(reranker, pairs[:1], limits[0], False)  # warm up
        lengths = [
            len(ids)
            for one in pairs
            for ids in reranker.model.tokenizer([q for q, _ in one], [p for _, p in one])[
                "input_ids"
            ]
        ]
        reference = run(reranker, pairs, limits[-1], False)
        for limit, fixed in [(limits[-1], True), *((n, False) for n in reversed(limits))]:
            found = (
                reference
                if (limit == limits[-1] and not fixed)
                else run(reranker, pairs, limit, fixed)
            )
            diff = np.concatenate(
                [np.abs(a - b) for a, b in zip(found["scores"], reference["scores"], strict=True)]
            )
            same_top = statistics.mean(
                set(np.argsort(-a)[:10]) == set(np.argsort(-b)[:10])
                for a, b in zip(found["scores"], reference["scores"], strict=True)
            )
            p50 = statistics.median(found["ms"])
            p95 = statistics.quantiles(found["ms"], n=20, method="inclusive")[18]
            cut = sum(n > limit for n in lengths) / len(lengths)
            padding = f"fixed {limit}" if fixed else "longest pair"
            rows.append(
                [
                    reranker.runtime,
                    limit,
                    padding,
                    round(p50),
                    round(p95),
                    f"{cut:.2f}",
                    f"{diff.mean():.3f}",
                    f"{same_top:.2f}",
                ]
            )
            results.append(
                {
                    "runtime": reranker.runtime,
                    "max_tokens": limit,
                    "padding": padding,
                    "ms_p50": p50,
                    "ms_p95": p95,
                    "pairs_cut": cut,
                    "mean_abs_score_diff": float(diff.mean()),
                    "same_top10": same_top,
                }
            )
    print_table(
        f"{args.beir.name}: {len(pairs)} questions x {args.depth} passages, model {reranker.name}",
        rows,
        [
            "runtime",
            "max tokens",
            "padding",
            "p50 ms",
            "p95 ms",
            "pairs cut",
            f"|score - {limits[-1]}|",
            f"same top 10 as {limits[-1]}",
        ],
    )
    out = write_json(
        args.out or default_out("rerank-speed"),
        "rerank_speed",
        {
            "folder": str(args.beir),
            "questions": len(pairs),
            "depth": args.depth,
            "model": reranker.name,
            "results": results,
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
