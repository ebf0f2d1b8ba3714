"""Queued answering end to end: real PostgreSQL + pgvector, Redis and Celery query workers,
read through the Python client and the CLI. The sample corpus (examples/corpus) is ingested
once; examples/questions.txt names the document that answers each question."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bench.common import free_port
from bench.llm_server import SimulatedLLM
from pgrag.client import Event, ask, follow
from pgrag.inference.weights import packaged_path
from pgrag.ingest import jobs
from pgrag.query import answering
from pgrag.runtime import db
from pgrag.runtime.settings import DEFAULT_RERANK_MODEL
from pgrag.store.collections import create_collection
from tests.conftest import ANSWERED, QUESTIONS, ROOT, Worker

pytestmark = pytest.mark.slow

FAILED = re.compile(r"^(status )+error$")
GENERATION_FAILED = re.compile(r"^(status )+passages status error$")  # after retrieval


def kinds(events: list[Event]) -> str:
    return " ".join(e.type for e in events)


def answer_text(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.type == "token").strip()


def check_answered(events: list[Event], document: str) -> Event:
    """The stream of an answered question, checked; returns its `done` event."""
    assert ANSWERED.match(kinds(events)), kinds(events)
    assert events[0].data["state"] == "queued"
    done = events[-1]
    assert answer_text(events) == done.data["answer"] != ""
    cited = [c["external_id"] for c in done.data["citations"]]
    assert cited and cited[0] == document, (done.data["answer"], cited)
    assert re.search(r"\[\d+\]", done.data["answer"])
    return done


def test_answers_stream_in_order_cite_their_document_and_are_stored(kb: str) -> None:
    for question, document in QUESTIONS[:4]:
        events = list(ask(question, kb, generator="extractive"))
        done = check_answered(events, document)
        passages = next(e for e in events if e.type == "passages").data["passages"]
        assert [p["n"] for p in passages] == list(range(1, 6))  # k = 5
        assert all({"dense", "lexical", "fused"} <= set(p["scores"]) for p in passages)
        assert set(done.data["timings"]) >= {"embed", "recall", "generate", "first_token", "total"}

        row = answering.get_query(events[0].data["id"])
        assert (row.state, row.question, row.collection) == ("done", question, kb)
        assert row.answer == done.data["answer"]
        assert row.citations == done.data["citations"]
        assert row.timings == done.data["timings"]
        assert row.passages == passages
        # Reranked by default whenever the reranker loads (its package installed).
        reranked = packaged_path(DEFAULT_RERANK_MODEL) is not None
        # One question alone: embedded (and reranked) in calls of its own.
        batches = {"embed": 1, "rerank": 1} if reranked else {"embed": 1}
        assert row.options == {
            "k": 5,
            "rerank": reranked,
            "filters": [],
            "generator": "extractive",
            "batches": batches,
        }
        assert all(("rerank" in p["scores"]) == reranked for p in passages)
        # The generator reads the reranked passages near the best (PGRAG_CONTEXT_MARGIN, 4
        # logits), all five without rerank; it cites only those.
        scores = [p["scores"].get("rerank", 0.0) for p in passages]
        read = sum(s >= scores[0] - 4 for s in scores) if reranked else 5
        generating = next(e for e in events if e.data.get("state") == "generating")
        assert generating.data == {
            "state": "generating",
            "generator": "extractive",
            "passages": read,
        }
        assert all(c["n"] <= read for c in done.data["citations"])
        assert row.question_embedding is not None and len(row.question_embedding) == 384
        assert row.started_at is not None and row.finished_at is not None

        # A late reader gets the same stream, from its first event.
        assert list(follow(row.id)) == events


def test_filters_reach_retrieval(kb: str) -> None:
    question, document = QUESTIONS[10]  # answered by the FAQ row faq-4, team "people"
    events = list(ask(question, kb, k=3, filters=["team=people"], generator="extractive"))
    check_answered(events, document)
    passages = next(e for e in events if e.type == "passages").data["passages"]
    assert len(passages) == 3
    assert all(p["metadata"]["team"] == "people" for p in passages)

    events = list(ask(question, kb, filters=["team=nobody"], generator="extractive"))
    assert kinds(events).endswith("passages token done")
    assert events[-1].data["answer"] == (
        f"No passage of collection {kb!r} matches the question with these filters."
    )
    assert events[-1].data["citations"] == []


def test_bad_questions_end_with_a_clear_error_and_the_worker_goes_on(
    kb: str, worker: Worker
) -> None:
    ingesting = create_collection(f"ingesting_{uuid.uuid4().hex[:8]}")
    with db.connect() as conn:  # its first job, still queued
        job_id = jobs.insert_job(conn, ingesting.id, "/data/dump.jsonl", {})
    cases = [
        (dict(question="", collection=kb), "the question is empty"),
        (dict(question="  \n ", collection=kb), "the question is empty"),
        (dict(question="a" * 100_000, collection=kb), "100,000 characters long, over the limit"),
        (
            dict(question="hi", collection="no_such_collection"),
            "'no_such_collection' does not exist",
        ),
        (
            dict(question="hi", collection=ingesting.name),
            f"has no search index yet: its ingest job {job_id} is still queued",
        ),
        (dict(question="hi", collection=kb, filters=["lang"]), "lang"),
        (dict(question="hi", collection=kb, generator="gpt"), "unknown generator 'gpt'"),
        (dict(question="hi", collection=kb, k=0), "k must be between 1 and 100"),
    ]
    if packaged_path(DEFAULT_RERANK_MODEL) is None:  # the default reranker is not installed
        cases.append(
            (dict(question="hi", collection=kb, rerank=True), "cannot load the reranker model")
        )
    try:
        for kwargs, reason in cases:
            events = list(ask(**kwargs))  # type: ignore[arg-type]
            assert FAILED.match(kinds(events)), (kwargs, kinds(events))
            assert reason in events[-1].data["reason"], (reason, events[-1].data)
            row = answering.get_query(events[0].data["id"])
            assert (row.state, row.error, row.answer) == ("failed", events[-1].data["reason"], None)
            assert worker.proc.poll() is None

        jobs.cancel_job(job_id)
        events = list(ask("hi", ingesting.name))
        assert "it has no documents" in events[-1].data["reason"]

        question, document = QUESTIONS[5]
        check_answered(list(ask(question, kb, generator="extractive")), document)
    finally:
        jobs.cancel_job(job_id)


def test_fifty_questions_at_once_each_get_their_own_answer(kb: str) -> None:
    """50 answers kept apart (without rerank: its cost on a CPU is not this test's point)."""
    asked = [QUESTIONS[i % len(QUESTIONS)] for i in range(50)]
    ids = [answering.submit(q, kb, generator="extractive", rerank=False) for q, _ in asked]
    assert len(set(ids)) == 50
    for query_id, (question, document) in zip(ids, asked, strict=True):
        events = list(follow(query_id))
        check_answered(events, document)
        assert events[0].data["id"] == str(query_id)
        row = answering.get_query(query_id)
        assert (row.question, row.state, row.answer) == (
            question,
            "done",
            events[-1].data["answer"],
        )


# ---------------------------------------------------------------------------- CLI


def pgrag(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgrag", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_ask_prints_the_answer_citations_and_timings(kb: str) -> None:
    question, document = QUESTIONS[7]
    run = pgrag("ask", question, "-c", kb, "--generator", "extractive")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert re.search(r"\[\d+\]", lines[0])
    citations = [line for line in lines if re.match(r"^\[\d+\] ", line)]
    assert citations and document in citations[0] and "(chunk " in citations[0]
    assert re.match(
        r"^timings: queue \d+ ms, embed \d+ ms, recall \d+ ms, .*total \d+ ms$", lines[-1]
    )

    queued = pgrag("ask", question, "-c", kb, "--no-wait")
    assert queued.returncode == 0, queued.stderr
    query_id = uuid.UUID(queued.stdout.strip())
    followed = pgrag("answer", str(query_id))
    assert followed.returncode == 0, followed.stderr
    row = answering.get_query(query_id)
    assert followed.stdout.startswith(row.answer or "-")
    assert document in followed.stdout


def test_cli_bad_question_and_unknown_id_fail_clearly(kb: str) -> None:
    run = pgrag("ask", "", "-c", kb)
    assert run.returncode == 1
    assert "the question is empty" in run.stderr
    run = pgrag("answer", str(uuid.uuid4()))
    assert run.returncode == 1
    assert "does not exist" in run.stderr


# ---------------------------------------------------------------------------- openai backend


@pytest.fixture
def test_reranker(tmp_path: Path) -> str:
    """A real CrossEncoder built from the local MiniLM weights (its head is untrained: it
    exercises the rerank stage through a configured folder, not its quality)."""
    from sentence_transformers import CrossEncoder

    from pgrag.inference.weights import resolve_model

    path = tmp_path / "cross-encoder"
    CrossEncoder(resolve_model("sentence-transformers/all-MiniLM-L6-v2"), num_labels=1).save(
        str(path)
    )
    return str(path)


def openai_worker(port: int, **settings: str) -> Worker:
    """A query worker of its own whose `openai` backend points at 127.0.0.1:`port`."""
    env = {
        "PGRAG_GENERATOR": "openai",
        "PGRAG_OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "PGRAG_OPENAI_API_KEY": "sk-test",
        **{f"PGRAG_{k.upper()}": v for k, v in settings.items()},
    }
    return Worker(Path(os.environ["PGRAG_HOME"]), "query", f"openai{port}", env)


def test_unreachable_or_stalled_llm_endpoint_ends_with_an_error_and_the_worker_goes_on(
    kb: str, own_broker: None
) -> None:
    port = free_port()
    query_worker = openai_worker(port, generate_timeout_s="8")
    server: SimulatedLLM | None = None
    question, document = QUESTIONS[1]
    try:
        events = list(ask(question, kb))  # nothing listens on the port yet
        assert GENERATION_FAILED.match(kinds(events)), kinds(events)
        assert "cannot reach the LLM endpoint" in events[-1].data["reason"]

        # A server that sends nothing: the worker gives up at PGRAG_GENERATE_TIMEOUT_S.
        server = SimulatedLLM(port=port)
        events = list(ask("STALL " + question, kb))
        assert GENERATION_FAILED.match(kinds(events)), kinds(events)
        assert "did not finish within 8 s" in events[-1].data["reason"]

        check_answered(list(ask(question, kb, generator="extractive")), document)
        assert query_worker.proc.poll() is None
    finally:
        query_worker.stop()
        if server:
            server.stop()


def test_openai_backend_end_to_end_with_rerank(
    kb: str, own_broker: None, test_reranker: str
) -> None:
    # The simulated server streams its tokens at once (a real model behind the same backend
    # is test_generation's).
    server = SimulatedLLM(ttft_s=0.1, tokens=8, pace_s=0.01)
    query_worker = openai_worker(
        server.port,
        rerank_model=test_reranker,
        # Its head is untrained: it only reorders the fused top k, which holds the document.
        rerank_top_n="3",
    )
    question, document = QUESTIONS[1]
    try:
        events = list(ask(question, kb, k=3))
        assert ANSWERED.match(kinds(events)), (kinds(events), events[-1].data)
        done = events[-1]
        assert answer_text(events) == done.data["answer"] != ""
        assert sum(e.type == "token" for e in events) > 1
        passages = next(e for e in events if e.type == "passages").data["passages"]
        assert document in {p["external_id"] for p in passages}
        assert all("rerank" in p["scores"] for p in passages)
        assert "rerank" in done.data["timings"]
        row = answering.get_query(events[0].data["id"])
        assert (row.state, row.answer, row.citations) == (
            "done",
            done.data["answer"],
            done.data["citations"],
        )
        assert row.options["generator"] == "openai" and row.options["rerank"] is True
    finally:
        query_worker.stop()
        server.stop()
