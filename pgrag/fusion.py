"""Fusion of the dense and lexical rankings into one (the "fused" stage of a hybrid search).

    fuse({"dense": [...], "lexical": [...]})                  # the default: z-score, 0.5 / 0.5
    fuse(lists, Fusion("rrf"))                                # reciprocal rank fusion
    fuse(lists, Fusion("zscore", dense_weight=0.7))           # a collection's own setting

- "zscore" (default): each list's scores are standardised for this query (minus their mean,
  over their standard deviation), and a chunk's fused score is the weighted sum
  `dense_weight * z_dense + (1 - dense_weight) * z_lexical`; a chunk missing from a list
  gets that list's lowest z-score (it scored at most that). A list whose best hit stands
  far above the rest thus outweighs a list that cannot tell its hits apart, query by query.
- "rrf": reciprocal rank fusion, `weight / (60 + rank)` summed over the lists, weights
  `dense_weight` and `1 - dense_weight` scaled so that 0.5 gives the plain RRF of Cormack et
  al. Ranks only: a far better first hit counts no more than a barely better one.

How the default was chosen (docs/quality.md has the tables): on half of xquad-en's
questions (even-numbered articles), the z-score combination beat min-max normalisation
and RRF at every dense weight from 0.3 to 0.7, and equal weights were within 0.002 of the
best; the other half and BEIR SciFact, not looked at while choosing, confirmed that it
scores above both dense and lexical alone, where RRF fell below lexical on xquad-en.
Collections with their own judgments can set another method or weight
(`pgrag collections set-fusion`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

METHODS = ("zscore", "rrf")
RRF_K = 60  # the constant of Cormack et al.: 1 / (60 + rank)


class Ranked(Protocol):
    """What fusion reads and writes of a passage (`pgrag.retrieval.Passage` is one)."""

    chunk_id: int
    scores: dict[str, float]
    ranks: dict[str, int]


@dataclass(frozen=True)
class Fusion:
    method: str = "zscore"
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

    def weights(self) -> dict[str, float]:
        return {"dense": self.dense_weight, "lexical": 1.0 - self.dense_weight}

    def __str__(self) -> str:
        return f"{self.method}, dense weight {self.dense_weight:g}"


DEFAULT = Fusion()


def zscores(scores: Sequence[float]) -> list[float]:
    """Scores standardised: (score - mean) / standard deviation; all 0 when they are equal."""
    if not scores:
        return []
    mean = sum(scores) / len(scores)
    spread = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return [(s - mean) / spread if spread > 0 else 0.0 for s in scores]


def fused_scores(lists: Mapping[str, Sequence[Ranked]], fusion: Fusion) -> dict[int, float]:
    """Chunk id -> fused score, over every chunk of any list."""
    weights = fusion.weights()
    chunks = {p.chunk_id for passages in lists.values() for p in passages}
    total = dict.fromkeys(chunks, 0.0)
    for stage, passages in lists.items():
        weight = weights.get(stage, 0.5)
        if fusion.method == "rrf":
            # Twice the weight: 0.5 / 0.5 is plain RRF, 1 / (60 + rank) from each list.
            for rank, p in enumerate(passages, 1):
                total[p.chunk_id] += 2 * weight / (RRF_K + rank)
            continue
        standard = zscores([p.scores[stage] for p in passages])
        z = {p.chunk_id: value for p, value in zip(passages, standard, strict=True)}
        floor = min(z.values(), default=0.0)
        for chunk in chunks:
            total[chunk] += weight * z.get(chunk, floor)
    return total


def fuse(lists: Mapping[str, Sequence[Ranked]], fusion: Fusion = DEFAULT) -> list[Any]:
    """One ranking of the passages of `lists` (stage name -> passages best first), each
    passage scored and ranked "fused". A chunk found by several lists becomes one passage
    carrying every list's score and rank. Ties keep the order of first appearance (lists in
    the given order)."""
    merged: dict[int, Ranked] = {}
    for passages in lists.values():
        for p in passages:
            seen = merged.setdefault(p.chunk_id, p)
            if seen is not p:
                seen.scores.update(p.scores)
                seen.ranks.update(p.ranks)
    total = fused_scores(lists, fusion)
    fused = sorted(merged.values(), key=lambda p: -total[p.chunk_id])
    for rank, p in enumerate(fused, 1):
        p.scores["fused"] = total[p.chunk_id]
        p.ranks["fused"] = rank
    return fused
