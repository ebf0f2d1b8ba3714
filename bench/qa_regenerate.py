"""A local model's answers generated again over the passages a `qa_eval.py` run recorded,
with another prompt or context margin: prompt tuning without services or retrieval.

    python bench/qa_regenerate.py bench/results/qa-eval-<time>.json --folder ../shared/data/xquad-en
        [--generator extractive] [--questions 80] [--model Qwen/Qwen2.5-Coder-1.5B-Instruct]
        [--margin 4] [--system "You answer questions ..."]

Each recorded question is answered by the `local` generator in this process (the model of
`--model`, else PGRAG_LOCAL_MODEL's) over the passages that `--generator`'s answer had,
reranked again with the configured cross-encoder to cut them at `--margin` as a query
worker does (`pgrag.query.answering.in_context`; `--margin 0`: all of them), with the
system prompt of `--system` (default: pgrag's). Answers go through the repetition guard and
are cited, shortened and scored as `qa_eval.py` does. Prints one row and writes a JSON file
in `qa_eval.py`'s layout (default bench/results/qa-regenerate-<time>.json), which
`qa_rescore.py` reads too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import default_out, print_table, write_json
from bench.qa_rescore import rescore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a qa_eval.py JSON file")
    parser.add_argument("--folder", type=Path, required=True, help="its BEIR-layout QA folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--generator", default="extractive", help="whose passages to use")
    parser.add_argument("--questions", type=int, help="the first N recorded questions")
    parser.add_argument("--model", help="PGRAG_LOCAL_MODEL")
    parser.add_argument("--margin", type=float, help="PGRAG_CONTEXT_MARGIN")
    parser.add_argument("--system", help="the system prompt (default: pgrag's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.model:
        os.environ["PGRAG_LOCAL_MODEL"] = args.model
    if args.margin is not None:
        os.environ["PGRAG_CONTEXT_MARGIN"] = str(args.margin)

    from types import SimpleNamespace

    from pgrag.evaluation import ranking
    from pgrag.inference.rerank import rerank_scores
    from pgrag.query.answering import in_context
    from pgrag.query.generation import Request, prompt
    from pgrag.query.generation.guard import RepetitionGuard
    from pgrag.query.generation.local import LocalGenerator
    from pgrag.runtime.settings import get_settings

    if args.system:
        prompt.SYSTEM = args.system
    data = ranking.load_beir(args.folder, args.split)
    recorded = json.loads(args.results.read_text())["generators"][args.generator]["records"]
    recorded = [r for r in recorded if r["event"] == "done"][: args.questions]
    generator = LocalGenerator()
    generator.load()
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    for r in recorded:
        found = [SimpleNamespace(**{**p, "scores": {}}) for p in r["passages"]]
        for p, score in zip(found, rerank_scores(r["question"], found), strict=True):
            p.scores["rerank"] = float(score)
        context = in_context(sorted(found, key=lambda p: -p.scores["rerank"]))
        request = Request(r["question"], context, deadline=time.monotonic() + 600)
        answer = "".join(RepetitionGuard(generator.stream(request))).strip()
        passages = [  # numbered as the prompt numbers them
            {"n": n, "external_id": p.external_id, "title": p.title, "text": p.text}
            for n, p in enumerate(context, 1)
        ]
        record = {f: r[f] for f in ("id", "question", "golds")}
        record |= {"event": "done", "answer": answer, "passages": passages}
        records.append(record | rescore(record, data.relevant(r["id"])))
    seconds = time.perf_counter() - started

    def share(measure: Any) -> float:
        return sum(measure(r) for r in records) / len(records)

    summary = {
        "questions": len(records),
        "passages_read": share(lambda r: len(r["passages"])),
        "contains": share(lambda r: r["scores"]["answer"]["contains"]),
        "short_f1": share(lambda r: r["scores"]["short_answer"]["f1"]),
        "cites_gold": share(lambda r: r["scores"]["answer"]["cites_gold"]),
        "cites_none": share(lambda r: not r["citations"]),
        "cites_no_number": share(lambda r: all(c.get("inferred") for c in r["citations"])),
        "words_p50": statistics.median(r["scores"]["answer"]["words"] for r in records),
        "seconds": seconds,
    }
    print_table(
        f"{args.results.name}: {generator.model_name} over {args.generator}'s passages",
        [[f"{v:.3f}" if isinstance(v, float) else v for v in summary.values()]],
        list(summary),
    )
    out = write_json(
        args.out or default_out("qa-regenerate"),
        "qa_regenerate",
        {
            "source": str(args.results),
            "system": prompt.SYSTEM,
            "margin": get_settings().context_margin,
            "generators": {
                "local": {"model": generator.model_name, "summary": summary, "records": records}
            },
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
