"""Answers scored end to end: questions asked through the query worker, answers against gold.

    python bench/qa_eval.py --folder ../shared/data/xquad-en [--questions 200] [--seed 0]
        [--generators extractive,local,openai] [--rerank-model M] [--collection NAME]

The folder is a BEIR-layout QA set (corpus.jsonl, queries.jsonl, qrels/test.tsv) with
`answers.jsonl` (gold answer strings per question). In a fresh temporary PGRAG_HOME (or the
configured services with `--collection`), the corpus goes through the pipeline (ingest and
embed workers), then a sample of `--questions` questions (fixed by `--seed`) is asked one at
a time with `pgrag.client.ask` and answered by a real query worker, once per generator:

- extractive: always; local: the packaged small model (its first answer, which loads the
  model, is asked once before the timed ones); openai: only when PGRAG_OPENAI_BASE_URL is set.

Each answer is scored twice, as the sentences pgrag answers with ("answer") and as its short
answer ("short": the phrase of the first cited sentence that answers the question, in the
same `done` event), with `pgrag.evaluation.answers`: the share containing a gold answer (SQuAD
normalization), token F1 against the best gold answer, the share whose citations include
the gold paragraph, the answer's words (median), and latency from asking to the `done`
event (p50, p95). For runaway generation, the share of answers that repeat a sentence
(`pgrag.query.generation.guard`'s comparison), that the guard stopped at a repeat (its
`status` event), and, for `local`, that reached PGRAG_MAX_NEW_TOKENS (the answer's tokens
counted again with the model's tokenizer). `--rerank-model` reranks with that
cross-encoder; when it cannot be loaded, the run says why and answers without rerank.

Prints a table and writes JSON (default bench/results/qa-eval-<time>.json) with every
question's answers and scores.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import default_out, print_table, services, write_json
from bench.retrieval_eval import ingest_progress

FORMS = ("answer", "short_answer")  # the sentence answer and the short answer


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def ask_one(question: str, collection: str, generator: str, rerank: bool) -> dict[str, Any]:
    """The `done` (or `error`) event's data of one question, with the seconds it took."""
    from pgrag.client import ask

    started = time.perf_counter()
    final: dict[str, Any] = {}
    stopped = None
    for event in ask(question, collection, generator=generator, rerank=rerank, timeout_s=600):
        if event.type == "status" and event.data.get("state") == "stopped":
            stopped = event.data.get("reason")
        if event.type in ("done", "error"):
            final = {"event": event.type, **event.data}
    final["stopped"] = stopped
    final["latency_ms"] = (time.perf_counter() - started) * 1000
    return final


def score(result: dict[str, Any], golds: list[str], relevant: set[str]) -> dict[str, Any]:
    from pgrag.evaluation.answers import score_answer

    cited = [c["external_id"] for c in result.get("citations") or []]
    return {form: score_answer(result.get(form) or "", golds, cited, relevant) for form in FORMS}


def runaway(result: dict[str, Any], count_tokens: Any) -> dict[str, Any]:
    """Whether the answer repeats a sentence, was stopped at one by the guard, and (with a
    token counter) reached the token limit."""
    from pgrag.query.generation.guard import RepetitionGuard
    from pgrag.runtime.settings import get_settings

    answer = result.get("answer") or ""
    guard = RepetitionGuard([answer])
    list(guard)
    tokens = count_tokens(answer) if count_tokens else None
    return {
        "repeats": guard.repeated is not None,
        "stopped": result.get("stopped") is not None,
        "at_limit": tokens >= get_settings().max_new_tokens if tokens is not None else None,
    }


def token_counter(generator: str) -> Any:
    """Counts an answer's tokens with the local model's tokenizer; None for other generators."""
    if generator != "local":
        return None
    from transformers import AutoTokenizer

    from pgrag.query.generation.local import model_path
    from pgrag.runtime.settings import get_settings

    tokenizer = AutoTokenizer.from_pretrained(model_path(get_settings().local_model))
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def summary(records: list[dict[str, Any]], form: str) -> dict[str, float]:
    done = [r for r in records if r["event"] == "done"]
    scored = [r["scores"][form] for r in done]
    latency = [r["latency_ms"] for r in done]
    limits = [r["runaway"]["at_limit"] for r in done if r["runaway"]["at_limit"] is not None]
    n = len(records)
    return {
        "repeats": sum(r["runaway"]["repeats"] for r in done) / n,
        "stopped_at_repeat": sum(r["runaway"]["stopped"] for r in done) / n,
        "at_token_limit": sum(limits) / n if limits else None,
        "questions": n,
        "failed": n - len(scored),
        # Over every question asked: a failed one counts as 0.
        "contains": sum(s["contains"] for s in scored) / n,
        "f1": sum(s["f1"] for s in scored) / n,
        "cites_gold": sum(s["cites_gold"] for s in scored) / n,
        "words_p50": statistics.median(s["words"] for s in scored) if scored else 0.0,
        "latency_p50_ms": percentile(latency, 0.5),
        "latency_p95_ms": percentile(latency, 0.95),
    }


def generators(asked: list[str]) -> tuple[list[str], dict[str, str]]:
    """The generators to run, and why the others are skipped."""
    skipped = {}
    if "openai" in asked and not os.environ.get("PGRAG_OPENAI_BASE_URL"):
        skipped["openai"] = "no endpoint configured (set PGRAG_OPENAI_BASE_URL)"
    return [g for g in asked if g not in skipped], skipped


def rerank_ready() -> tuple[bool, str]:
    from pgrag.inference.rerank import RerankerUnavailable, load_reranker

    try:
        load_reranker()
    except RerankerUnavailable as e:
        return False, str(e)
    return True, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="BEIR-layout QA folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--questions", type=int, default=200, help="questions asked (sample)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--generators", default="extractive,local,openai")
    parser.add_argument("--rerank-model", help="cross-encoder (sets PGRAG_RERANK_MODEL)")
    parser.add_argument("--collection", help="use this collection of the configured services")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.rerank_model:
        os.environ["PGRAG_RERANK_MODEL"] = args.rerank_model

    from pgrag.evaluation import answers, ranking

    data = ranking.load_beir(args.folder, args.split)
    golds = answers.load_answers(args.folder)
    ids = sorted(q for q in data.queries if q in golds)
    sample = random.Random(args.seed).sample(ids, min(args.questions, len(ids)))
    run, skipped = generators([g.strip() for g in args.generators.split(",") if g.strip()])
    collection = args.collection or f"qa-{args.folder.resolve().name}"

    results: dict[str, Any] = {}
    with services(bool(args.collection), ["ingest", "embed", "query"]):
        started = time.perf_counter()
        ranking.ingest_beir(data, collection, progress=ingest_progress)
        ingest_s = time.perf_counter() - started
        print(file=sys.stderr)
        rerank, why = rerank_ready() if args.rerank_model else (False, "")
        if why:
            print(f"answering without rerank: {why}", file=sys.stderr)
        for generator in run:
            ask_one(data.queries[sample[0]], collection, generator, rerank)  # loads its model
            count_tokens = token_counter(generator)
            records = []
            for i, q in enumerate(sample, 1):
                result = ask_one(data.queries[q], collection, generator, rerank)
                relevant = {d for d, r in data.qrels[q].items() if r > 0}
                result["scores"] = score(result, golds[q], relevant) if "answer" in result else {}
                result["runaway"] = runaway(result, count_tokens)
                records.append({"id": q, "question": data.queries[q], "golds": golds[q], **result})
                if i % 20 == 0 or i == len(sample):
                    print(f"  {generator}: {i}/{len(sample)} questions", file=sys.stderr)
            results[generator] = {
                "summary": {form: summary(records, form) for form in FORMS},
                "records": records,
            }
    report(args, collection, ingest_s, rerank, why, skipped, results)


def report(
    args: argparse.Namespace,
    collection: str,
    ingest_s: float,
    rerank: bool,
    rerank_skipped: str,
    skipped: dict[str, str],
    results: dict[str, Any],
) -> None:
    rows: list[list[Any]] = []
    for generator, found in results.items():
        for form in FORMS:
            s = found["summary"][form]
            rows.append(
                [
                    generator,
                    "sentences" if form == "answer" else "short",
                    s["questions"],
                    f"{s['contains']:.3f}",
                    f"{s['f1']:.3f}",
                    f"{s['cites_gold']:.3f}",
                    s["words_p50"],
                    round(s["latency_p50_ms"]),
                    round(s["latency_p95_ms"]),
                    s["failed"],
                    f"{s['repeats']:.3f}",
                    f"{s['stopped_at_repeat']:.3f}",
                    "-" if s["at_token_limit"] is None else f"{s['at_token_limit']:.3f}",
                ]
            )
    for generator, reason in skipped.items():
        rows.append(
            [generator, "skipped", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", reason]
        )
    print_table(
        f"{args.folder.name}: answers through the query worker, collection {collection}"
        f" (ingested in {ingest_s:.0f} s), rerank {'on' if rerank else 'off'}",
        rows,
        [
            "generator",
            "answer",
            "questions",
            "gold in answer",
            "token F1",
            "cites gold",
            "words p50",
            "p50 ms",
            "p95 ms",
            "failed",
            "repeats a sentence",
            "stopped at a repeat",
            "at token limit",
        ],
    )
    if rerank_skipped:
        print(f"rerank skipped: {rerank_skipped}")
    out = write_json(
        args.out or default_out("qa-eval"),
        "qa_eval",
        {
            "folder": str(args.folder),
            "questions": args.questions,
            "seed": args.seed,
            "collection": collection,
            "ingest_s": ingest_s,
            "rerank": rerank,
            "rerank_skipped": rerank_skipped,
            "skipped": skipped,
            "generators": results,
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
