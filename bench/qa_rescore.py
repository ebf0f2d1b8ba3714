"""The answers of a `qa_eval.py` run, cited and shortened again by the code as it is now.

    python bench/qa_rescore.py bench/results/qa-eval-<time>.json --folder ../shared/data/xquad-en

Citing (`pgrag.query.answering.cite`) and the short answer (`concise`) are functions of the
question, the answer's text and the passages its generator read, which `qa_eval.py` records
for every question (all k passages, with their scores: those read are cut from them again
with `in_context`, at the PGRAG_CONTEXT_MARGIN of this process). So a change to either is
measured on the very answers it is meant to improve, without generating them again
(generation is the slow part: minutes to hours for a local model on a CPU). Prints, per
generator, the recorded scores against the rescored ones, and writes JSON (default
bench/results/qa-rescore-<time>.json) with every changed answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import default_out, print_table, write_json
from bench.qa_eval import score

MEASURES = ("cites_gold", "short_contains", "short_f1", "cites_none")


def measures(scores: dict[str, Any], citations: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "cites_gold": scores["answer"]["cites_gold"],
        "short_contains": scores["short_answer"]["contains"],
        "short_f1": scores["short_answer"]["f1"],
        "cites_none": float(not citations),
    }


def rescore(record: dict[str, Any], relevant: set[str]) -> dict[str, Any]:
    """The record's citations, short answer and scores, from the code as it is now."""
    from pgrag.query.answering import cite, in_context
    from pgrag.query.generation.spans import concise

    answer = record["answer"]
    # Recorded passages keep what citing reads; their row ids are not needed here. The
    # generator read those its query worker kept (`in_context`, from their rerank scores).
    found = [SimpleNamespace(scores=p.get("scores") or {}) for p in record["passages"]]
    read = record["passages"][: len(in_context(found))]  # type: ignore[arg-type]
    passages = [{"chunk_id": None, "document_id": None, **p} for p in read]
    citations = cite(answer, passages, record["question"])
    short = concise(record["question"], answer) if record["passages"] else None
    new = {"answer": answer, "short_answer": short, "citations": citations}
    return {
        "citations": citations,
        "short_answer": short,
        "scores": score(new, record["golds"], relevant),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a qa_eval.py JSON file")
    parser.add_argument("--folder", type=Path, required=True, help="its BEIR-layout QA folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from pgrag.evaluation import ranking

    data = ranking.load_beir(args.folder, args.split)
    recorded = json.loads(args.results.read_text())
    rows: list[list[Any]] = []
    changed: dict[str, list[dict[str, Any]]] = {}
    for generator, found in recorded["generators"].items():
        done = [r for r in found["records"] if r["event"] == "done"]
        before = {m: 0.0 for m in MEASURES}
        after = {m: 0.0 for m in MEASURES}
        changed[generator] = []
        for r in done:
            new = rescore(r, data.relevant(r["id"]))
            old = measures(r["scores"], r["citations"])
            now = measures(new["scores"], new["citations"])
            for m in MEASURES:  # over every question asked: a failed one counts as 0
                before[m] += old[m] / len(found["records"])
                after[m] += now[m] / len(found["records"])
            if old != now:
                keep = ("id", "question", "answer", "golds")
                changed[generator].append(
                    {**{f: r[f] for f in keep}, "before": old, "after": now, **new}
                )
        rows.append(
            [generator, len(found["records"]), len(changed[generator])]
            + [f"{before[m]:.3f} -> {after[m]:.3f}" for m in MEASURES]
        )
    print_table(
        f"{args.results.name}: recorded -> rescored",
        rows,
        [
            "generator",
            "questions",
            "changed",
            "cites gold",
            "short: gold inside",
            "short F1",
            "cites none",
        ],
    )
    out = write_json(
        args.out or default_out("qa-rescore"),
        "qa_rescore",
        {"source": str(args.results), "changed": changed},
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
