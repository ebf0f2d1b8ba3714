"""The evaluation: metric math against hand-computed values, and a run end to end on a small
generated BEIR collection ingested by a real worker."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from pgrag.evaluation import ranking
from pgrag.evaluation.ranking import (
    document_run,
    load_beir,
    ndcg_at,
    rank_documents,
    recall_at,
    score_run,
    write_synthetic_beir,
)
from pgrag.ingest import jobs

# ---------------------------------------------------------------------------- metric math


def test_ndcg_by_hand() -> None:
    judged = {"d1": 1, "d2": 2, "d9": 0}
    # DCG = 0/log2(2) + 1/log2(3) + 2/log2(4); IDCG = 2/log2(2) + 1/log2(3)
    dcg = 1 / math.log2(3) + 2 / 2
    idcg = 2 + 1 / math.log2(3)
    assert ndcg_at(["d3", "d1", "d2"], judged, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at(["d3", "d1", "d2"], judged, 10) == pytest.approx(0.619906, abs=1e-6)
    assert ndcg_at(["d2", "d1"], judged, 10) == pytest.approx(1.0)
    # Cut at k = 1: only d3 counts (gain 0); the ideal list is cut at 1 too.
    assert ndcg_at(["d3", "d1", "d2"], judged, 1) == 0.0
    assert ndcg_at(["d1", "d2"], judged, 1) == pytest.approx(1 / 2)
    assert ndcg_at(["x"], {"d1": 0}, 10) == 0.0  # nothing relevant: 0, not a division error


def test_recall_by_hand() -> None:
    judged = {"d1": 1, "d2": 2, "d3": 0}
    assert recall_at(["d1", "d3", "d4"], judged, 100) == 0.5  # d3 (relevance 0) is not relevant
    assert recall_at(["d4", "d2", "d1"], judged, 2) == 0.5
    assert recall_at(["d4", "d2", "d1"], judged, 3) == 1.0


def test_ranking_follows_trec_eval() -> None:
    # Higher score first; ties by document id, larger first.
    assert rank_documents({"a": 1.0, "b": 1.0, "c": 2.0, "d": 0.5}) == ["c", "b", "a", "d"]
    # A document with the query's own id is left out.
    assert rank_documents({"q1": 3.0, "a": 1.0}, exclude="q1") == ["a"]
    # A document ranks where its best chunk ranks.
    assert document_run(["a", "b", "a", "c"]) == {"a": 1.0, "b": 0.5, "c": 0.25}


def test_mean_over_judged_queries() -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 1}, "q3": {"d4": 0}}
    runs = {"q1": {"d1": 2.0, "d5": 1.0}, "q2": {"d5": 3.0, "d3": 2.0}}  # q2's d2 never found
    scores = score_run(runs, qrels)
    # q3 has no relevant document: left out. q1: nDCG 1, recall 1.
    # q2: DCG = 1/log2(3), IDCG = 1 + 1/log2(3); recall 1/2.
    q2_ndcg = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert scores["queries"] == 2
    assert scores["ndcg@10"] == pytest.approx((1 + q2_ndcg) / 2)
    assert scores["recall@100"] == pytest.approx((1 + 0.5) / 2)
    # A judged query with no run at all counts as 0.
    assert score_run({"q1": runs["q1"]}, qrels)["ndcg@10"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------- BEIR files


def test_load_beir_reads_the_folder_and_complains_clearly(tmp_path: Path) -> None:
    folder = write_synthetic_beir(tmp_path / "s", docs=30, queries=9, seed=3)
    data = load_beir(folder)
    assert len(data.queries) == 9 and set(data.qrels) == set(data.queries)
    corpus_ids = {json.loads(line)["_id"] for line in data.corpus_path.open()}
    assert len(corpus_ids) == 30
    assert all(len(docs) == 1 and set(docs) <= corpus_ids for docs in data.qrels.values())
    # Deterministic for a seed.
    again = load_beir(write_synthetic_beir(tmp_path / "t", docs=30, queries=9, seed=3))
    assert again.queries == data.queries and again.qrels == data.qrels
    # Each kind of query alone in a split of its name: together, the test split.
    kinds = [load_beir(folder, kind).qrels for kind in ("name", "paraphrase", "code")]
    assert [len(k) for k in kinds] == [3, 3, 3]
    assert {q: d for k in kinds for q, d in k.items()} == data.qrels

    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nnope\tx\t1\n")
    with pytest.raises(ValueError, match=r"not in queries\.jsonl"):
        load_beir(folder)
    with pytest.raises(FileNotFoundError, match="not a BEIR folder"):
        load_beir(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"dev\.tsv"):
        load_beir(folder, split="dev")


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_evaluation_end_to_end(worker: object, tmp_path: Path, collection_name: str) -> None:
    from sentence_transformers import CrossEncoder

    from pgrag.inference.rerank import rerank_depth
    from pgrag.inference.weights import resolve_model
    from pgrag.runtime.settings import get_settings

    data = load_beir(write_synthetic_beir(tmp_path / "beir", docs=240, queries=30, seed=1))
    collection = ranking.ingest_beir(data, collection_name)
    jobs_before = len(jobs.list_jobs(limit=1000))
    assert ranking.ingest_beir(data, collection_name).id == collection.id  # reused
    assert len(jobs.list_jobs(limit=1000)) == jobs_before

    # A real cross-encoder with a random head (fast, and any folder loads): it runs the
    # rerank stage, its figures say nothing about rerank quality.
    reranker = tmp_path / "reranker"
    base = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    CrossEncoder(base, num_labels=1, device="cpu").save(str(reranker))
    os.environ["PGRAG_RERANK_MODEL"] = str(reranker)
    get_settings.cache_clear()
    depth = rerank_depth()
    at_depths = ["fused+rerank@5", f"fused+rerank@{depth}"]
    try:
        results = ranking.evaluate(collection, data, [*ranking.MODES, *at_depths], chunks=100)
    finally:
        del os.environ["PGRAG_RERANK_MODEL"]
        get_settings.cache_clear()

    assert set(results) == {
        "dense",
        "lexical",
        "fused",
        "fused+rerank",
        "rrf",
        "zscore",
        *at_depths,
    }
    # Reranking at the default depth by itself, or sharing scores with a shallower depth,
    # reranks the same passages of every query, alike but for near-ties (a score computed
    # in another batch may differ in its last bits).
    alone, shared = results["fused+rerank"], results[f"fused+rerank@{depth}"]
    assert {q: set(run) for q, run in shared.runs.items()} == {
        q: set(run) for q, run in alone.runs.items()
    }
    assert shared.metrics["ndcg@10"] == pytest.approx(alone.metrics["ndcg@10"], abs=0.02)
    for mode in ("fused+rerank", *at_depths):
        assert len(results[mode].rerank_ms) == 30 and results[mode].rerank_p(50) is not None
    assert results["fused"].rerank_ms == [] and results["fused"].rerank_p(50) is None
    for mode, result in results.items():
        assert result.metrics["queries"] == 30, mode
        assert (
            0.0 <= result.metrics["ndcg@10"] <= 1.0 and 0.0 <= result.metrics["recall@100"] <= 1.0
        )
        assert set(result.runs) == set(data.queries)
        # The metrics are those of the runs it returns.
        assert result.metrics == score_run(result.runs, data.qrels)
    # Names and codes are found by their exact words; paraphrases only by meaning.
    lexical_hits = sum(
        rank_documents(results["lexical"].runs[q])[:1] == list(data.qrels[q]) for q in data.queries
    )
    assert lexical_hits >= 18  # the 20 name and code queries, give or take a near-duplicate
    assert results["dense"].metrics["recall@100"] >= 0.9
    assert results["fused"].metrics["ndcg@10"] >= results["dense"].metrics["ndcg@10"]
    assert results["fused"].metrics["ndcg@10"] >= results["lexical"].metrics["ndcg@10"]
    # Reranking reorders only the fused top rerank_top_n: recall@100 cannot drop.
    assert results["fused+rerank"].metrics["recall@100"] == results["fused"].metrics["recall@100"]
