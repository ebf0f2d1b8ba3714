"""Quality end to end, small: a few XQuAD questions (tests/data/xquad-mini) asked through the
query worker and scored as bench/qa_eval.py scores them, and a collection's own fusion used
by its hybrid searches. Checks citations and stored rows, not quality figures."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pgrag.cli import main
from pgrag.client import ask
from pgrag.evaluation import ranking
from pgrag.evaluation.answers import load_answers, score_answer
from pgrag.query import answering
from pgrag.query.fusion import RRF_K, Fusion
from pgrag.query.retrieval import retrieve
from pgrag.store.collections import get_collection, set_fusion
from tests.conftest import ANSWERED, ROOT, Worker

pytestmark = pytest.mark.slow

MINI = ROOT / "tests" / "data" / "xquad-mini"


@pytest.fixture(scope="module")
def mini(worker: Worker) -> str:
    """The excerpt ingested through the pipeline, as the benches ingest a BEIR folder."""
    return ranking.ingest_beir(ranking.load_beir(MINI), "qa_mini", timeout=600).name


def test_questions_are_answered_with_citations_short_answers_and_stored_rows(mini: str) -> None:
    data = ranking.load_beir(MINI)
    golds = load_answers(MINI)
    assert set(golds) == set(data.queries)
    for q, question in data.queries.items():
        events = list(ask(question, mini, generator="extractive"))
        assert ANSWERED.match(" ".join(e.type for e in events))
        done = events[-1].data
        cited = [c["external_id"] for c in done["citations"]]
        passages = next(e for e in events if e.type == "passages").data["passages"]
        assert cited and set(cited) <= {p["external_id"] for p in passages}
        assert done["short_answer"] and done["short_answer"].endswith("]")
        assert len(done["short_answer"].split()) < len(done["answer"].split())

        row = answering.get_query(events[0].data["id"])
        assert (row.state, row.answer, row.short_answer) == (
            "done",
            done["answer"],
            done["short_answer"],
        )
        assert row.citations == done["citations"]

        relevant = set(data.qrels[q])
        for text in (done["answer"], done["short_answer"]):
            scores = score_answer(text, golds[q], cited, relevant)
            assert set(scores) == {"contains", "f1", "cites_gold", "words"}
            assert all(0.0 <= scores[m] <= 1.0 for m in ("contains", "f1", "cites_gold"))


def test_a_collections_fusion_setting_is_what_its_hybrid_searches_use(mini: str) -> None:
    question = "How many points did the Panthers defense surrender?"
    default = retrieve(get_collection(mini), question, k=5)
    set_fusion(mini, Fusion("rrf").to_json())
    try:
        collection = get_collection(mini)
        assert collection.fusion == {"method": "rrf", "dense_weight": 0.5}
        rrf = retrieve(collection, question, k=5).passages
        for p in rrf:
            expected = sum(1 / (RRF_K + p.ranks[s]) for s in ("dense", "lexical") if s in p.ranks)
            assert p.scores["fused"] == pytest.approx(expected)
        # An explicit fusion wins over the collection's.
        again = retrieve(collection, question, k=5, fusion=Fusion())
        assert [p.chunk_id for p in again.passages] == [p.chunk_id for p in default.passages]
    finally:
        set_fusion(mini, None)
    assert get_collection(mini).fusion is None


def test_cli_sets_and_shows_a_collections_fusion(mini: str) -> None:
    cli = CliRunner()
    set_zscore = ["collections", "set-fusion", mini, "--method", "zscore", "--dense-weight", "0.7"]
    run = cli.invoke(main, set_zscore)
    assert run.exit_code == 0, run.output
    assert "zscore, dense weight 0.7" in run.output
    listed = cli.invoke(main, ["collections"]).output
    assert "fusion: zscore, dense weight 0.7" in listed
    run = cli.invoke(main, ["collections", "set-fusion", mini, "--default"])
    assert run.exit_code == 0 and "agreement, dense weight 0.5" in run.output
    assert get_collection(mini).fusion is None
    bad = cli.invoke(main, ["collections", "set-fusion", mini, "--dense-weight", "2"])
    assert bad.exit_code != 0 and "dense-weight" in bad.output
