"""Fusion of dense and lexical rankings, on hand-built rankings (no services)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from pgrag.query.fusion import DEFAULT, RRF_K, Fusion, agreement, fuse, zscores


@dataclass
class Hit:
    chunk_id: int
    scores: dict[str, float] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)


def ranking(stage: str, scored: list[tuple[int, float]]) -> list[Hit]:
    """Hits of one list, best first: (chunk id, score)."""
    return [Hit(c, {stage: s}, {stage: r}) for r, (c, s) in enumerate(scored, 1)]


def lists(dense: list[tuple[int, float]], lexical: list[tuple[int, float]]) -> dict[str, list[Hit]]:
    return {"dense": ranking("dense", dense), "lexical": ranking("lexical", lexical)}


ZSCORE = Fusion("zscore")  # equal weights, the default of issues #11 to #20


def ids(hits: list[Hit]) -> list[int]:
    return [h.chunk_id for h in hits]


@pytest.mark.parametrize("fusion", [DEFAULT, Fusion("rrf")])
def test_a_chunk_in_both_lists_is_one_passage_with_every_score_and_rank(fusion: Fusion) -> None:
    fused = fuse(lists([(1, 0.9), (2, 0.8), (5, 0.1)], [(2, 12.0), (3, 4.0)]), fusion)
    assert sorted(ids(fused)) == [1, 2, 3, 5]
    two = fused[0]  # found by both lists, near the top of each
    assert two.chunk_id == 2
    assert two.scores.keys() == {"dense", "lexical", "fused"}
    assert two.ranks == {"dense": 2, "lexical": 1, "fused": 1}
    assert [h.ranks["fused"] for h in fused] == [1, 2, 3, 4]
    assert [h.scores["fused"] for h in fused] == sorted(
        (h.scores["fused"] for h in fused), reverse=True
    )


@pytest.mark.parametrize("fusion", [DEFAULT, Fusion("rrf")])
def test_one_empty_side_keeps_the_other_sides_order(fusion: Fusion) -> None:
    dense = [(4, 0.7), (9, 0.6), (2, 0.5)]
    assert ids(fuse(lists(dense, []), fusion)) == [4, 9, 2]
    assert ids(fuse(lists([], dense), fusion)) == [4, 9, 2]
    assert fuse(lists([], []), fusion) == []


def test_disjoint_lists_interleave_by_their_standardised_scores() -> None:
    # Lexical's first hit stands far above its others; dense's hits are evenly spread. The
    # z-score fusion puts that clear lexical winner first, then interleaves the rest.
    dense = [(c, 0.7 - c / 100) for c in range(1, 11)]
    lexical = [(100, 30.0)] + [(c, 5.0 - c / 100) for c in range(101, 110)]
    fused = fuse(lists(dense, lexical))
    assert ids(fused)[:2] == [100, 1]
    assert sorted(ids(fused)) == sorted(c for c, _ in dense + lexical)
    # Plain RRF looks at ranks only: each list's first hit ties, dense's first was seen first.
    assert ids(fuse(lists(dense, lexical), Fusion("rrf")))[:2] == [1, 100]


def test_a_short_lexical_lists_winner_counts_the_chunks_it_does_not_hold_as_zeros() -> None:
    # The product-code case: dense ranks 50 look-alike sheets nearly level (the wrong one
    # slightly first); BM25 found only 4 chunks sharing a word, the exact code far ahead.
    dense = [(2, 0.88), (1, 0.84)] + [(c, 0.80 - c / 10000) for c in range(10, 58)]
    lexical = [(1, 12.0), (10, 2.0), (11, 2.0), (12, 2.0)]
    assert ids(fuse(lists(dense, lexical), ZSCORE, depth=50))[0] == 1
    # Without the depth, four z-scores cannot exceed sqrt(3), and the dense margin wins.
    assert ids(fuse(lists(dense, lexical), ZSCORE))[0] == 2
    fused = {h.chunk_id: h.scores["fused"] for h in fuse(lists(dense, lexical), ZSCORE, depth=50)}
    z_lexical = zscores([12.0, 2.0, 2.0, 2.0], absent=46)
    assert fused[2] == pytest.approx(0.5 * zscores([s for _, s in dense])[0] + 0.5 * z_lexical[-1])
    # The default weighs BM25 more here (all of its hits are among dense's, 4 of dense's
    # first 10 among BM25's): the exact code wins with or without the depth.
    assert ids(fuse(lists(dense, lexical), depth=50))[0] == ids(fuse(lists(dense, lexical)))[0] == 1


def test_ties_keep_the_order_of_first_appearance() -> None:
    # Mirror-image lists: every chunk gets the same fused score by either method.
    for fusion in (DEFAULT, Fusion("rrf")):
        fused = fuse(lists([(1, 0.9), (2, 0.5)], [(2, 9.0), (1, 5.0)]), fusion)
        assert fused[0].scores["fused"] == pytest.approx(fused[1].scores["fused"])
        assert ids(fused) == [1, 2]
    equal = fuse(lists([(5, 0.5), (6, 0.5), (7, 0.5)], []))  # no spread: all z-scores 0
    assert ids(equal) == [5, 6, 7] and {h.scores["fused"] for h in equal} == {0.0}


def test_k_larger_than_either_list_returns_every_chunk_once() -> None:
    fused = fuse(lists([(1, 0.9), (2, 0.8)], [(2, 3.0), (3, 2.0), (4, 1.0)]))
    top = fused[:50]  # what retrieve() keeps for k = 50
    assert sorted(ids(top)) == [1, 2, 3, 4]
    assert len(set(ids(top))) == len(top)


def test_rrf_at_equal_weights_is_the_classic_formula() -> None:
    fused = fuse(lists([(1, 0.9), (2, 0.8)], [(2, 3.0), (1, 2.0)]), Fusion("rrf"))
    for h in fused:
        expected = sum(1 / (RRF_K + rank) for rank in (h.ranks["dense"], h.ranks["lexical"]))
        assert h.scores["fused"] == pytest.approx(expected)


def test_a_chunk_missing_from_a_list_gets_that_lists_lowest_z_score() -> None:
    dense = [(1, 0.9), (2, 0.5), (3, 0.1)]
    lexical = [(1, 10.0), (4, 2.0)]
    fused = {h.chunk_id: h.scores["fused"] for h in fuse(lists(dense, lexical), ZSCORE)}
    z_dense = dict(zip([1, 2, 3], zscores([0.9, 0.5, 0.1]), strict=True))
    z_lexical = dict(zip([1, 4], zscores([10.0, 2.0]), strict=True))
    assert fused[3] == pytest.approx(0.5 * z_dense[3] + 0.5 * min(z_lexical.values()))
    assert fused[4] == pytest.approx(0.5 * min(z_dense.values()) + 0.5 * z_lexical[4])


def test_the_dense_weight_moves_the_balance() -> None:
    dense, lexical = [(1, 0.9), (2, 0.1)], [(2, 9.0), (1, 1.0)]
    assert ids(fuse(lists(dense, lexical), Fusion(dense_weight=0.8)))[0] == 1
    assert ids(fuse(lists(dense, lexical), Fusion(dense_weight=0.2)))[0] == 2


def test_settings_are_checked_and_round_trip_as_json() -> None:
    with pytest.raises(ValueError, match="unknown fusion method"):
        Fusion("max")
    with pytest.raises(ValueError, match="between 0 and 1"):
        Fusion(dense_weight=1.5)
    assert Fusion.from_json(None) == DEFAULT
    assert Fusion.from_json(Fusion("rrf", 0.3).to_json()) == Fusion("rrf", 0.3)


def test_agreement_weighs_each_list_by_how_many_of_its_first_hits_the_other_found() -> None:
    # Dense's first 10 include 4 chunks that BM25 also found; BM25's first 10, 8 that dense did.
    dense = [(c, 0.9 - c / 100) for c in range(1, 21)]
    lexical = [(c, 20.0 - c) for c in (1, 2, 3, 4, 5, 6, 7, 8, 50, 51)]
    found = lists(dense, lexical)
    assert agreement(found, "dense") == pytest.approx(0.8)  # 1-8 of its first 10
    assert agreement(found, "lexical") == pytest.approx(0.8)
    found = lists(dense, lexical[:4] + [(c, 1.0) for c in range(60, 66)])
    assert agreement(found, "dense") == pytest.approx(0.4)
    assert agreement(found, "lexical") == pytest.approx(0.4)
    weights = Fusion("agreement").weights(lists(dense[:10], [(1, 9.0), (70, 8.0)]))
    assert weights == pytest.approx({"dense": 0.1 / 0.6, "lexical": 0.5 / 0.6})


def test_a_weak_side_whose_first_hits_the_other_never_found_does_not_outvote_it() -> None:
    # BM25's first ten are look-alikes sharing a rare word with the query, one far ahead:
    # dense found none of them. Dense's first hits are among BM25's later ones.
    dense = [(c, 0.80 - c / 200) for c in range(1, 51)]
    lexical = [(100, 40.0)] + [(c, 12.0 - c / 100) for c in range(101, 110)]
    lexical += [(c, 6.0 - c / 10) for c in range(1, 6)]
    weak = lists(dense, lexical)
    # z-scores let the outlier win; agreement gives BM25 no say here, so dense's order stands.
    assert ids(fuse(weak, ZSCORE))[0] == 100
    assert Fusion("agreement").weights(weak) == {"dense": 1.0, "lexical": 0.0}
    assert ids(fuse(weak, Fusion("agreement")))[:10] == list(range(1, 11))


def test_agreement_falls_back_to_the_set_weights_when_neither_list_confirms_the_other() -> None:
    dense, lexical = [(1, 0.9), (2, 0.1)], [(3, 9.0), (4, 1.0)]
    assert Fusion("agreement", 0.7).weights(lists(dense, lexical)) == pytest.approx(
        {"dense": 0.7, "lexical": 0.3}
    )
    assert ids(fuse(lists(dense, []), Fusion("agreement"))) == [1, 2]
