"""The extractive answer in-process, for tuning it: every question of a QA set in seconds.

    python bench/extractive_tuning.py --folder ../shared/data/xquad-en [--half tune|check|all]
        [--k 5] [--set KEEP_RATIO=0.6 --set MAX_SENTENCES=3]

No services: the corpus's paragraphs are ranked for each question by the collection's
default embedder alone (dense, top `--k`), and `ExtractiveGenerator` answers from them with
every sentence's vector computed once. Answers are scored as `qa_eval.py` scores them
(`score_answer`: gold answer inside, token F1, citations of the gold paragraph, words, for
the answer and for its short answer). Questions are split by
article (the number before the dash of a paragraph id): even articles to tune (`tune`), odd
ones to check that a change holds (`check`). `--set NAME=VALUE` overrides a module constant
of `pgrag.query.generation.extractive` for the run, to compare settings before changing one.

The figures differ from the pipeline's (`qa_eval.py`: hybrid retrieval through the query
worker, 200 questions), but a change that helps here helps there.

The table also has the short answer's ceiling for its half: `spans.short_answer` given the
oracle sentence (the gold paragraph's first sentence that holds a gold answer), by the kind
of answer the question asks for: what the phrase heuristic scores when the sentence is right.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import default_out, print_table, write_json
from pgrag.evaluation.answers import contains, load_answers, score_answer, token_f1
from pgrag.evaluation.ranking import load_beir
from pgrag.inference.embedding import load_embedder
from pgrag.query.answering import cite
from pgrag.query.generation import Request, extractive
from pgrag.query.generation.spans import answer_kind, concise, short_answer
from pgrag.runtime.settings import get_settings

METRICS = {  # score_answer's fields, as the table heads them
    "contains": "gold in answer",
    "f1": "token F1",
    "cites_gold": "cites gold",
    "words": "words (mean)",
}


@dataclass(frozen=True)
class Paragraph:
    external_id: str
    title: str | None
    text: str


def override(assignments: list[str]) -> dict[str, Any]:
    """Set the extractive module's constants NAME=VALUE (typed as the constant is)."""
    done: dict[str, Any] = {}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        current = getattr(extractive, name)  # AttributeError: no such constant
        done[name] = type(current)(value)
        setattr(extractive, name, done[name])
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="BEIR-layout QA folder")
    parser.add_argument("--half", choices=("tune", "check", "all"), default="tune")
    parser.add_argument("--k", type=int, default=5, help="paragraphs given to the generator")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = override(args.set)

    data = load_beir(args.folder)
    golds = load_answers(args.folder)
    with (data.folder / "corpus.jsonl").open() as f:
        rows = [json.loads(line) for line in f if line.strip()]
    paragraphs = [Paragraph(str(r["_id"]), r.get("title"), r["text"]) for r in rows]

    def wanted(query_id: str) -> bool:
        article = int(next(iter(data.qrels[query_id])).split("-")[0])
        return args.half == "all" or (article % 2 == 0) == (args.half == "tune")

    questions = sorted(q for q in data.queries if wanted(q))

    embedder = load_embedder(get_settings().embed_model, "cpu", "torch")
    vectors: dict[str, np.ndarray] = {}

    def embed(texts: Any) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in vectors]
        if new:
            vectors.update(zip(new, embedder.encode(new), strict=True))
        return np.stack([vectors[t] for t in texts])

    started = time.perf_counter()
    embed([s for p in paragraphs for s in extractive.sentences(p.text)])
    documents = embed([f"{p.title}\n{p.text}" if p.title else p.text for p in paragraphs])
    generator = extractive.ExtractiveGenerator()
    scored: dict[str, list[dict[str, float]]] = {"answer": [], "short_answer": []}
    for q in questions:
        question = data.queries[q]
        vector = embed(embedder.queries([question]))[0]
        given = [paragraphs[i] for i in np.argsort(-(documents @ vector))[: args.k]]
        request = Request(question, given, time.monotonic() + 60, embed, vector)
        answer = "".join(generator.stream(request))
        numbered = [  # as the query worker numbers its passages (no chunk rows here)
            {"n": n, "chunk_id": None, "document_id": None, **asdict(p)}
            for n, p in enumerate(given, 1)
        ]
        cited = [c["external_id"] for c in cite(answer, numbered)]
        for form, text in (("answer", answer), ("short_answer", concise(question, answer))):
            scored[form].append(score_answer(text, golds[q], cited, data.qrels[q]))

    oracle = oracle_short_answers(data.queries, questions, data.qrels, golds, paragraphs)
    results = {
        "folder": str(data.folder),
        "half": args.half,
        "k": args.k,
        "settings": settings,
        "questions": len(questions),
        "seconds": time.perf_counter() - started,
        **{
            form: {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}
            for form, rows in scored.items()
        },
        "oracle_sentence_short_f1": {kind: float(np.mean(f)) for kind, f in oracle.items()},
    }
    print_table(
        f"{data.folder.name}, {args.half} half, dense top {args.k}, extractive"
        + (f" with {settings}" if settings else ""),
        [[form, len(questions), *(results[form][m] for m in METRICS)] for form in scored],
        ["answer", "questions", *METRICS.values()],
    )
    print_table(
        "short answer from the oracle sentence (token F1)",
        [[kind, len(f), float(np.mean(f))] for kind, f in oracle.items()],
        ["kind asked", "questions", "token F1"],
    )
    path = write_json(args.out or default_out("extractive-tuning"), "extractive_tuning", results)
    print(f"\nwrote {path}")


def oracle_short_answers(
    texts: dict[str, str],
    questions: list[str],
    qrels: dict[str, dict[str, int]],
    golds: dict[str, list[str]],
    paragraphs: list[Paragraph],
) -> dict[str, list[float]]:
    """Token F1 of `short_answer` on each question's oracle sentence, by kind and "all"
    (questions whose gold paragraph has no sentence holding a gold answer are left out)."""
    text_of = {p.external_id: p.text for p in paragraphs}
    f1s: dict[str, list[float]] = {"all": []}
    for q in questions:
        sentences = [
            s
            for relevant in qrels[q]
            for s in extractive.sentences(text_of[relevant])
            if contains(s, golds[q])
        ]
        if sentences:
            f1 = token_f1(short_answer(texts[q], sentences[0]), golds[q])
            f1s["all"].append(f1)
            f1s.setdefault(answer_kind(texts[q]), []).append(f1)
    return f1s


if __name__ == "__main__":
    main()
