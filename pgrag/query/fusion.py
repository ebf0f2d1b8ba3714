"""Fusion of the dense and lexical rankings into one (the "fused" stage of a hybrid search).

    fuse({"dense": [...], "lexical": [...]})                  # the default: "agreement"
    fuse(lists, Fusion("rrf"))                                # reciprocal rank fusion
    fuse(lists, Fusion("zscore", dense_weight=0.7))           # a collection's own setting

- "zscore": each list's scores are standardised for this query (minus their mean, over
  their standard deviation), and a chunk's fused score is the weighted sum
  `dense_weight * z_dense + (1 - dense_weight) * z_lexical`; a chunk missing from a list
  gets that list's lowest z-score (it scored at most that), or, for a lexical list shorter
  than asked for, the z-score of a BM25 score of 0 (see `fuse`). A list whose best hit
  stands far above the rest thus outweighs a list that cannot tell its hits apart, query by
  query.
- "agreement" (default): "zscore", with each list's weight scaled, for this query, by the
  share of its first 10 hits that the other list also found (`agreement`), the weights then
  summing to 1. A list whose first hits the other list never found (BM25 matching a rare
  word in look-alike documents, far ahead of the rest) no longer outvotes a list whose
  first hits both lists found; a list none of whose first hits the other found gets no say.
  When neither list confirms any of the other's first hits, the weights are the set ones.
- "rrf": reciprocal rank fusion, `weight / (60 + rank)` summed over the lists, weights
  `dense_weight` and `1 - dense_weight` scaled so that 0.5 gives the plain RRF of Cormack et
  al. Ranks only: a far better first hit counts no more than a barely better one.

How the defaults were chosen (docs/quality.md has the tables): in issue #11, on half of
xquad-en's questions (even-numbered articles), the z-score combination beat min-max
normalisation and RRF at every dense weight from 0.3 to 0.7, equal weights within 0.002 of
the best. In issue #20, where dense was far stronger than BM25, equal-weight z-scores fell
below dense alone: "agreement" was chosen on a generated set (seed 1) and the even half of
xquad-en, with no parameter tuned; on the sets not looked at while choosing it scored as the
z-scores or above them (up to +0.002) at the depth of a question (50), and 0.002 to 0.006
below them at 200. That biomedical failure could not be reproduced on the sets at hand.
Collections with their own judgments can set another method or weight
(`pgrag collections set-fusion`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

METHODS = ("agreement", "zscore", "rrf")
# The score of a chunk missing from a list that is shorter than asked for: BM25 scores only
# the chunks that share a word with the query, all others 0. (A dense list is short only
# when the collection has no more chunks.)
ABSENT_SCORES = {"lexical": 0.0}
RRF_K = 60  # the constant of Cormack et al.: 1 / (60 + rank)
# "agreement": how many of a list's first hits are looked up in the other list (the depth
# nDCG@10 judges).
AGREEMENT_TOP = 10


class Ranked(Protocol):
    """What fusion reads and writes of a passage (`pgrag.query.retrieval.Passage` is one)."""

    chunk_id: int
    scores: dict[str, float]
    ranks: dict[str, int]


@dataclass(frozen=True)
class Fusion:
    method: str = "agreement"
    dense_weight: float = 0.5  # the lexical list gets 1 - dense_weight

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown fusion method {self.method!r}: use {', '.join(METHODS)}")
        if not 0.0 <= self.dense_weight <= 1.0:
            raise ValueError(f"the dense weight must be between 0 and 1, not {self.dense_weight}")

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> Fusion:
        """A collection's stored setting; None (not set) is the default."""
        return cls(**value) if value else DEFAULT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def weights(self, lists: Mapping[str, Sequence[Ranked]]) -> dict[str, float]:
        """Each list's weight in the fusion of the query's `lists`."""
        weights = {"dense": self.dense_weight, "lexical": 1.0 - self.dense_weight}
        if self.method != "agreement":
            return weights
        found = {stage: agreement(lists, stage) * weights.get(stage, 0.5) for stage in lists}
        total = sum(found.values())
        return {stage: v / total for stage, v in found.items()} if total > 0 else weights

    def __str__(self) -> str:
        return f"{self.method}, dense weight {self.dense_weight:g}"


DEFAULT = Fusion("agreement")


def agreement(lists: Mapping[str, Sequence[Ranked]], stage: str) -> float:
    """The share of list `stage`'s first `AGREEMENT_TOP` hits that another list also found
    (0 for an empty list)."""
    top = [p.chunk_id for p in lists[stage][:AGREEMENT_TOP]]
    others = {p.chunk_id for name, passages in lists.items() if name != stage for p in passages}
    return sum(c in others for c in top) / len(top) if top else 0.0


def zscores(scores: Sequence[float], absent: int = 0, absent_score: float = 0.0) -> list[float]:
    """Scores standardised: (score - mean) / standard deviation, with `absent` more scores
    of `absent_score` counted in the mean and deviation; the last one returned is that of
    an absent score (when absent > 0). All 0 when every score is equal."""
    every = [*scores, *[absent_score] * absent]
    if not every:
        return []
    mean = sum(every) / len(every)
    spread = math.sqrt(sum((s - mean) ** 2 for s in every) / len(every))
    shown = [*scores, absent_score] if absent else list(scores)
    return [(s - mean) / spread if spread > 0 else 0.0 for s in shown]


def fused_scores(
    lists: Mapping[str, Sequence[Ranked]], fusion: Fusion, depth: int | None = None
) -> dict[int, float]:
    """Chunk id -> fused score, over every chunk of any list (see `fuse`)."""
    weights = fusion.weights(lists)
    chunks = {p.chunk_id for passages in lists.values() for p in passages}
    total = dict.fromkeys(chunks, 0.0)
    for stage, passages in lists.items():
        weight = weights.get(stage, 0.5)
        if fusion.method == "rrf":
            # Twice the weight: 0.5 / 0.5 is plain RRF, 1 / (60 + rank) from each list.
            for rank, p in enumerate(passages, 1):
                total[p.chunk_id] += 2 * weight / (RRF_K + rank)
            continue
        scores = [p.scores[stage] for p in passages]
        absent = max(depth - len(passages), 0) if depth and stage in ABSENT_SCORES else 0
        standard = zscores(scores, absent, ABSENT_SCORES.get(stage, 0.0))
        z = {p.chunk_id: v for p, v in zip(passages, standard[: len(scores)], strict=True)}
        # A chunk the list does not hold scored at most its last one, or the absent score.
        floor = standard[-1] if absent else min(standard, default=0.0)
        for chunk in chunks:
            total[chunk] += weight * z.get(chunk, floor)
    return total


def fuse(
    lists: Mapping[str, Sequence[Ranked]], fusion: Fusion = DEFAULT, depth: int | None = None
) -> list[Any]:
    """One ranking of the passages of `lists` (stage name -> passages best first), each
    passage scored and ranked "fused". A chunk found by several lists becomes one passage
    carrying every list's score and rank. Ties keep the order of first appearance (lists in
    the given order).

    `depth`: how many passages each list was asked for. A lexical list shorter than that
    holds every chunk that shares a word with the query, and every other chunk scores 0:
    the z-scores count those zeros, so that a short list's clear winner stands out as far
    as it really does (without them, z-scores of n values never exceed sqrt(n - 1))."""
    merged: dict[int, Ranked] = {}
    for passages in lists.values():
        for p in passages:
            seen = merged.setdefault(p.chunk_id, p)
            if seen is not p:
                seen.scores.update(p.scores)
                seen.ranks.update(p.ranks)
    total = fused_scores(lists, fusion, depth)
    fused = sorted(merged.values(), key=lambda p: -total[p.chunk_id])
    for rank, p in enumerate(fused, 1):
        p.scores["fused"] = total[p.chunk_id]
        p.ranks["fused"] = rank
    return fused
