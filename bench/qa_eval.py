"""Answers scored end to end: questions asked through the query worker, answers against gold.

    python bench/qa_eval.py --folder ../shared/data/xquad-en [--questions 200] [--seed 0]
        [--generators extractive,local,openai] [--local-models M1,M2] [--rerank-model M]
        [--no-rerank]
        [--collection NAME]

The folder is a BEIR-layout QA set (corpus.jsonl, queries.jsonl, qrels/test.tsv) with
`answers.jsonl` (gold answer strings per question). In a fresh temporary PGRAG_HOME (or the
configured services with `--collection`), the corpus goes through the pipeline (ingest and
embed workers), then a sample of `--questions` questions (fixed by `--seed`) is asked one at
a time with `pgrag.client.ask` and answered by a real query worker, once per generator:

- extractive: always; openai: only when PGRAG_OPENAI_BASE_URL is set;
- local: once per local model, `--local-models` or else every packaged model installed
  (`pgrag.inference.gguf`), one after the other, each in a query worker of its own that
  loads the model before the first question and frees it after the last (with
  `--collection`: the configured worker's model). A first question is asked once untimed.

Each answer is scored twice, as the sentences pgrag answers with ("answer") and as its short
answer ("short": the phrase of the first cited sentence that answers the question, in the
same `done` event), with `pgrag.evaluation.answers`: the share containing a gold answer (SQuAD
normalization), token F1 against the best gold answer, the share whose citations include
the gold paragraph, the shares of answers citing no passage and citing none by its number
(their citations traced back from their words), the answer's words (median), its tokens per
second of the generation stage (prompt reading included; local models, the answer's tokens
counted with the model's tokenizer) and latency from asking to the `done` event (p50, p95).
For runaway generation, the share of answers that repeat a sentence
(`pgrag.query.generation.guard`'s comparison), that the guard stopped at a repeat (its
`status` event), and, for a local model, that reached PGRAG_MAX_NEW_TOKENS.
Questions are reranked as a user's are by default: when the reranker loads (its package is
installed; `--rerank-model` names another cross-encoder); when it cannot be loaded, the run
says why and answers without rerank. `--no-rerank` answers without it.

Prints a table and writes JSON (default bench/results/qa-eval-<time>.json) with every
question's answers, scores and passages (so that citing and short answers can be rescored).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    Home,
    Worker,
    default_out,
    exit_on_sigterm,
    print_table,
    services,
    write_json,
)
from bench.retrieval_eval import ingest_progress

FORMS = ("answer", "short_answer")  # the sentence answer and the short answer


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def ask_one(question: str, collection: str, generator: str, rerank: bool) -> dict[str, Any]:
    """The `done` (or `error`) event's data of one question, with the seconds it took."""
    from pgrag.client import ask
    from pgrag.runtime.streaming import StreamTimeout

    started = time.perf_counter()
    final: dict[str, Any] = {}
    states: dict[str, str] = {}  # "stopped", "uncited": the status events' reasons
    passages: list[dict[str, Any]] = []
    try:
        for event in ask(question, collection, generator=generator, rerank=rerank, timeout_s=600):
            if event.type == "passages":  # kept so that citing can be rescored offline
                passages = [
                    {f: p[f] for f in ("n", "external_id", "title", "text", "scores")}
                    for p in event.data["passages"]
                ]
            if event.type == "status":
                states[event.data.get("state", "")] = event.data.get("reason", "")
            if event.type in ("done", "error"):
                final = {"event": event.type, **event.data}
    except StreamTimeout as e:  # counted as a failed question; the run goes on
        final = {"event": "error", "reason": str(e)}
    final["stopped"] = states.get("stopped")
    final["uncited"] = states.get("uncited")
    final["passages"] = passages
    final["latency_ms"] = (time.perf_counter() - started) * 1000
    return final


def score(result: dict[str, Any], golds: list[str], relevant: set[str]) -> dict[str, Any]:
    from pgrag.evaluation.answers import score_answer

    cited = [c["external_id"] for c in result.get("citations") or []]
    return {form: score_answer(result.get(form) or "", golds, cited, relevant) for form in FORMS}


def runaway(result: dict[str, Any], count_tokens: Any) -> dict[str, Any]:
    """Whether the answer repeats a sentence, was stopped at one by the guard, and (with a
    token counter) its tokens, whether they reached the token limit, and their rate over the
    generation stage."""
    from pgrag.query.generation.guard import RepetitionGuard
    from pgrag.runtime.settings import get_settings

    answer = result.get("answer") or ""
    guard = RepetitionGuard([answer])
    list(guard)
    tokens = count_tokens(answer) if count_tokens else None
    generate_s = (result.get("timings") or {}).get("generate", 0) / 1000
    return {
        "repeats": guard.repeated is not None,
        "stopped": result.get("stopped") is not None,
        "tokens": tokens,
        "at_limit": tokens >= get_settings().max_new_tokens if tokens is not None else None,
        "tokens_per_s": tokens / generate_s if tokens is not None and generate_s else None,
    }


def token_counter(model: str | None) -> Any:
    """Counts an answer's tokens with the local `model`'s tokenizer; None for no model."""
    if model is None:
        return None
    from transformers import AutoTokenizer

    from pgrag.query.generation.local import model_path

    tokenizer = AutoTokenizer.from_pretrained(model_path(model))
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def summary(records: list[dict[str, Any]], form: str) -> dict[str, float]:
    done = [r for r in records if r["event"] == "done"]
    scored = [r["scores"][form] for r in done]
    latency = [r["latency_ms"] for r in done]
    limits = [r["runaway"]["at_limit"] for r in done if r["runaway"]["at_limit"] is not None]
    rates = [r["runaway"]["tokens_per_s"] for r in done if r["runaway"]["tokens_per_s"]]
    n = len(records)
    return {
        "repeats": sum(r["runaway"]["repeats"] for r in done) / n,
        "stopped_at_repeat": sum(r["runaway"]["stopped"] for r in done) / n,
        "at_token_limit": sum(limits) / n if limits else None,
        "cites_none": sum(not r.get("citations") for r in done) / n,
        # No [n] written: the citations, if any, were traced back from the answer's words.
        "cites_no_number": sum(r.get("uncited") is not None for r in done) / n,
        "tokens_per_s_p50": statistics.median(rates) if rates else None,
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


class Run(NamedTuple):
    label: str  # its rows' name in the table and the JSON
    generator: str
    model: str | None  # the local model


def runs(asked: list[str], models: str, configured: bool) -> tuple[list[Run], dict[str, str]]:
    """What to run: each generator, `local` once per local model (`models`, or every
    packaged model installed; with `configured` services, the worker's own, as this
    process's settings name it), and why the others are skipped."""
    from pgrag.inference.gguf import PACKAGED_GGUF, installed
    from pgrag.query.generation.local import LocalGenerator

    skipped = {}
    if "openai" in asked and not os.environ.get("PGRAG_OPENAI_BASE_URL"):
        skipped["openai"] = "no endpoint configured (set PGRAG_OPENAI_BASE_URL)"
    found: list[Run] = []
    for g in asked:
        if g == "local" and configured:  # the worker's model, as its settings name it
            found.append(Run(g, g, LocalGenerator(device="cpu").model_name))
        elif g == "local":
            names = [m.strip() for m in models.split(",") if m.strip()]
            for m in names or [m for m in PACKAGED_GGUF if installed(m)]:
                found.append(Run(f"local {m.split('/')[-1]}", g, m))
        elif g not in skipped:
            found.append(Run(g, g, None))
    return found, skipped


@contextlib.contextmanager
def query_worker(home: Home | None, model: str | None) -> Iterator[None]:
    """A query worker of its own in `home` (with the local `model` loaded before it takes a
    question; stopping it frees the model's memory), or the configured one (`home` None)."""
    if home is None:
        yield
        return
    env = {"PGRAG_GENERATOR": "local", "PGRAG_LOCAL_MODEL": model} if model else {}
    worker = Worker(home, "query", env=env)
    try:
        worker.wait_ready(timeout=3600)  # a packaged model's first load converts it
        yield
    finally:
        worker.stop()


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
    parser.add_argument(
        "--local-models", default="", help="PGRAG_LOCAL_MODEL values (default: all installed)"
    )
    parser.add_argument("--rerank-model", help="cross-encoder (sets PGRAG_RERANK_MODEL)")
    parser.add_argument("--no-rerank", action="store_true", help="answer without rerank")
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
    todo, skipped = runs(
        [g.strip() for g in args.generators.split(",") if g.strip()],
        args.local_models,
        bool(args.collection),
    )
    collection = args.collection or f"qa-{args.folder.resolve().name}"

    results: dict[str, Any] = {}
    interrupted = False
    exit_on_sigterm()
    with services(bool(args.collection), ["ingest", "embed"]) as home:
        started = time.perf_counter()
        ranking.ingest_beir(data, collection, progress=ingest_progress)
        ingest_s = time.perf_counter() - started
        print(file=sys.stderr)
        rerank, why = (False, "") if args.no_rerank else rerank_ready()
        if why:
            print(f"answering without rerank: {why}", file=sys.stderr)
        for run in todo:
            with query_worker(home, run.model):
                ask_one(data.queries[sample[0]], collection, run.generator, rerank)  # untimed
                count_tokens = token_counter(run.model)
                records: list[dict[str, Any]] = []
                try:
                    for i, q in enumerate(sample, 1):
                        result = ask_one(data.queries[q], collection, run.generator, rerank)
                        result["scores"] = (
                            score(result, golds[q], data.relevant(q)) if "answer" in result else {}
                        )
                        result["runaway"] = runaway(result, count_tokens)
                        records.append(
                            {"id": q, "question": data.queries[q], "golds": golds[q], **result}
                        )
                        if i % 20 == 0 or i == len(sample):
                            print(f"  {run.label}: {i}/{len(sample)}", file=sys.stderr)
                except (KeyboardInterrupt, SystemExit):
                    # Stopped (Ctrl-C, SIGTERM): the questions answered so far are reported,
                    # as the first len(records) of the sample.
                    print(f"  {run.label}: stopped after {len(records)}", file=sys.stderr)
                    interrupted = True
            if records:
                results[run.label] = {
                    "model": run.model,
                    "summary": {form: summary(records, form) for form in FORMS},
                    "records": records,
                }
            if interrupted:
                break
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
                    f"{s['cites_none']:.3f}",
                    f"{s['cites_no_number']:.3f}",
                    "-" if s["tokens_per_s_p50"] is None else f"{s['tokens_per_s_p50']:.1f}",
                    f"{s['repeats']:.3f}",
                    f"{s['stopped_at_repeat']:.3f}",
                    "-" if s["at_token_limit"] is None else f"{s['at_token_limit']:.3f}",
                ]
            )
    for generator, reason in skipped.items():
        rows.append([generator, "skipped", *["-"] * 13, reason])
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
            "cites none",
            "no [n]",
            "tokens/s p50",
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
