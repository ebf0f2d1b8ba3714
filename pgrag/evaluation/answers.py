"""Scoring answers against gold answer strings, as SQuAD does, and against gold passages.

    golds = load_answers("xquad-en")              # question id -> gold answer strings
    score_answer(text, golds[q], cited_ids, relevant_ids)

- `normalize_answer` is SQuAD v1.1's (its official evaluate script): lower case, ASCII
  punctuation removed, the articles a/an/the removed, whitespace collapsed;
- `contains`: some gold answer, normalized, occurs in the normalized answer as whole words;
- `token_f1`: SQuAD's token F1 against the best-matching gold answer;
- `cites_gold`: one of the answer's citations is a relevant (gold) document.

Citation markers ([1], [2, 3]) are removed from an answer before it is scored: they are
pgrag's, not part of what the answer says.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Collection, Iterable
from pathlib import Path

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
_MARKERS = re.compile(r"\s*\[\d+(?:\s*,\s*\d+)*\]")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalization (the official evaluate-v1.1.py, same order of steps)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def strip_citations(text: str) -> str:
    return _MARKERS.sub("", text).strip()


def f1(prediction: str, gold: str) -> float:
    """SQuAD's token F1 of one prediction against one gold answer."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Iterable[str]) -> float:
    """The best F1 over the gold answers (SQuAD's metric_max_over_ground_truths)."""
    return max((f1(prediction, g) for g in golds), default=0.0)


def contains(answer: str, golds: Iterable[str]) -> bool:
    """Whether some gold answer occurs in the answer, both normalized, as whole words."""
    said = f" {normalize_answer(answer)} "
    return any(f" {g} " in said for g in map(normalize_answer, golds) if g)


def score_answer(
    answer: str, golds: Collection[str], cited: Iterable[str], relevant: Iterable[str]
) -> dict[str, float]:
    """contains (0/1), f1, cites_gold (0/1) and words of one answer."""
    text = strip_citations(answer)
    return {
        "contains": float(contains(text, golds)),
        "f1": token_f1(text, golds),
        "cites_gold": float(bool(set(cited) & set(relevant))),
        "words": float(len(text.split())),
    }


def load_answers(folder: str | Path) -> dict[str, list[str]]:
    """`answers.jsonl` of a BEIR-layout QA folder: question id -> gold answer strings."""
    path = Path(folder).expanduser() / "answers.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: a QA folder needs answers.jsonl "
            '({"_id": question id, "answers": [gold answer strings]} per line)'
        )
    answers: dict[str, list[str]] = {}
    with path.open() as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                answers[str(row["_id"])] = [str(a) for a in row["answers"]]
    return answers
