"""Extractive answers: no LLM, the passages' own sentences that best match the question.

Every sentence of the given passages is scored by its cosine similarity to the question
(with the collection's embedder, when the request carries it) plus the share of the
question's content words it contains, each word weighted by how few of the sentences say it,
with a small preference for better-ranked passages.
The best few are the answer, each followed by the [n] of its passage.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pgrag.query.generation import GeneratorTimeout, Request
from pgrag.query.generation.spans import holds_kind
from pgrag.query.generation.words import content_words, split_sentences

__all__ = ["ExtractiveGenerator", "content_words", "sentences"]

MAX_SENTENCES = 3
KEEP_RATIO = 0.8  # a sentence after the best is kept when it scores this share of the best
MIN_WORDS = 4  # shorter "sentences" are headings or list labels
RANK_PENALTY = 0.02  # per passage rank, so ties go to the better-ranked passage
FRAGMENT_PENALTY = 0.1
CONTEXT_WEIGHT = 0.5  # a question word said only by the sentence before counts this much
KIND_BONUS = 0.2  # a sentence holding a word of the kind of answer asked for (a year for "when")

_BLOCK_START = re.compile(r"^\s*(#|[-*+>|]\s|\d+[.)]\s|\|)")  # heading, list item, quote, row
_MARKUP = re.compile(r"^[\s#>*\-+]+|[*_`]+")


@dataclass
class Sentence:
    n: int  # 1-based passage number
    text: str
    before: str = ""  # the sentence before it in its passage
    score: float = 0.0


def blocks(text: str) -> list[str]:
    """Paragraphs, list items, headings and table rows, wrapped lines joined again."""
    found: list[str] = []
    continues = False
    for line in text.splitlines():
        if not line.strip():
            continues = False
        elif continues and not _BLOCK_START.match(line):
            found[-1] += " " + line.strip()
        else:
            found.append(line.strip())
            continues = not line.lstrip().startswith(("|", "#"))
    return found


def table_row(row: str, header: list[str] | None) -> str:
    """A Markdown table row as text, each cell named by its column when the header is known:
    "Tier: Tier 1; RTO: 4 hours; RPO: 15 minutes"."""
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    if header and len(header) == len(cells):
        return "; ".join(f"{h}: {c}" for h, c in zip(header, cells, strict=True))
    return ", ".join(cells)


def sentences(text: str) -> list[str]:
    """The sentences of a passage, Markdown markup removed; table rows count as sentences."""
    found: list[str] = []
    header: list[str] | None = None
    for block in blocks(text):
        if block.startswith("#"):
            continue  # a heading names a topic; it answers nothing
        if block.startswith("|"):
            if set(block) <= set("|-: "):  # the |---|---| line under a header
                continue
            if header is None:
                header = [c.strip() for c in block.strip().strip("|").split("|")]
                continue
            parts = [table_row(block, header)]
        else:
            header = None
            parts = split_sentences(_MARKUP.sub("", block))
        found += [" ".join(p.split()) for p in parts if len(p.split()) >= MIN_WORDS]
    return found


class ExtractiveGenerator:
    name = "extractive"

    def stream(self, request: Request) -> Iterator[str]:
        # Overlapping chunks repeat sentences: each text counts once, from its best passage.
        seen: set[str] = set()
        candidates = []
        for n, passage in enumerate(request.passages, 1):
            found = sentences(passage.text)
            for before, text in zip(["", *found], found, strict=False):
                if text not in seen:
                    seen.add(text)
                    candidates.append(Sentence(n, text, before))
        if not candidates:
            yield "The passages found contain no sentence to answer with."
            return
        question_words = content_words(request.question)
        said_by = [content_words(c.text) for c in candidates]
        # A question word that many of the candidates say (the topic) tells them apart less
        # than a rare one: each counts by its inverse frequency among the candidates.
        weight = {
            w: math.log(1 + len(candidates) / (1 + sum(w in ws for ws in said_by)))
            for w in question_words
        }
        total = sum(weight.values()) or 1.0
        for c, theirs in zip(candidates, said_by, strict=True):
            said = question_words & theirs
            # What the sentence before says of the question often holds for this one too
            # ("The exchange opened in 1817. ... It was re-established in April 1991.").
            context = question_words & content_words(c.before) - said
            shared = sum(weight[w] for w in said) + CONTEXT_WEIGHT * sum(weight[w] for w in context)
            c.score = shared / total - RANK_PENALTY * (c.n - 1)
            if c.text[0].islower():
                c.score -= FRAGMENT_PENALTY  # the tail of a sentence cut by a chunk boundary
            if holds_kind(request.question, c.text):
                c.score += KIND_BONUS
        if request.embed is not None:
            vectors = request.embed([c.text for c in candidates])
            q = request.question_vector
            if q is None:
                q = request.embed([request.question])[0]
            for c, similarity in zip(candidates, vectors @ np.asarray(q), strict=True):
                c.score += float(similarity)
        if time.monotonic() > request.deadline:
            raise GeneratorTimeout("the extractive answer took longer than its deadline")

        ranked = sorted(candidates, key=lambda c: -c.score)
        best = ranked[0].score
        chosen = [ranked[0]] + [
            c for c in ranked[1:MAX_SENTENCES] if best > 0 and c.score >= KEEP_RATIO * best
        ]
        for i, c in enumerate(chosen):
            words = c.text.split(" ")
            for j, word in enumerate(words):
                yield word if i == j == 0 else " " + word
            yield f" [{c.n}]"
