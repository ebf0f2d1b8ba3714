"""Many questions at once: one query worker holds many in flight against a batching LLM
server (`bench/llm_server.py`), and hands all of them over when it dies; the client follows
many answers from threads or from asyncio."""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.llm_server import SimulatedLLM
from pgrag import client
from pgrag.query import answering
from pgrag.runtime import db, registry
from pgrag.runtime.streaming import Event
from tests.conftest import QUESTIONS, Worker

pytestmark = pytest.mark.slow

ENV = {"PGRAG_LEASE_S": "6", "PGRAG_LOST_AFTER_S": "6", "PGRAG_SWEEP_S": "1"}


def openai_env(server: SimulatedLLM) -> dict[str, str]:
    return {
        **ENV,
        "PGRAG_GENERATOR": "openai",
        "PGRAG_OPENAI_BASE_URL": server.url,
        "PGRAG_OPENAI_MODEL": "simulated",
    }


def questions(n: int) -> list[str]:
    return [f"{QUESTIONS[i % len(QUESTIONS)][0]} ({i})" for i in range(n)]


def test_a_query_worker_answers_as_many_questions_at_once_as_its_limit(
    kb: str, own_broker: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """Concurrency 8, answers of about 2 s, 16 questions asked from 16 threads at once
    through the client, without rerank (its cost on a CPU is the bench's business): the
    server sees exactly 8 requests at a time (the limit holds, the rest wait in the broker),
    and all 16 are answered. The questions in flight were embedded together. (Throughput is
    bench/query_load.py's business, not a test's.)"""
    server = SimulatedLLM(ttft_s=1.0, tokens=20, pace_s=0.05)
    home = Path(os.environ["PGRAG_HOME"])
    worker = Worker(home, "query", "conc-8", openai_env(server), concurrency=8)
    try:
        # Ready, with its models loaded, before it took anything.
        (node,) = [n for n in registry.live(60) if n.name.startswith("conc-8@")]
        assert (node.state, node.pool, node.concurrency) == ("ready", "threads", 8)
        assert node.models and "embedder" in node.models
        with ThreadPoolExecutor(16) as pool:
            asked = pool.map(lambda q: list(client.ask(q, kb, rerank=False)), questions(16))
            answers = list(asked)
        stats = server.stats()
    finally:
        worker.stop()
        server.stop()
    assert [events[-1].type for events in answers] == ["done"] * 16
    assert all(e.data["answer"].startswith("Answer w1") for *_, e in answers)
    assert (stats["peak"], stats["served"]) == (8, 16)
    ids = [events[0].data["id"] for events in answers]
    with db.connect() as conn:
        batches = [
            row[0]
            for row in conn.execute(
                "SELECT (options->'batches'->>'embed')::int FROM pgrag.queries"
                " WHERE id = ANY(%s::uuid[])",
                (ids,),
            )
        ]
    assert len(batches) == 16 and max(batches) > 1, batches
    assert "cannot join current thread" not in capfd.readouterr().err


def test_a_killed_query_worker_hands_every_question_in_flight_to_another(
    kb: str, own_broker: None
) -> None:
    """A query worker SIGKILLed (its whole process group) with 24 questions in flight, all
    waiting on their LLM streams: another worker answers every one of them from the start
    (each reader is told `restarted`, then gets `done`), each stored once."""
    server = SimulatedLLM(ttft_s=600, tokens=2, pace_s=0.01)  # never answers in time
    home = Path(os.environ["PGRAG_HOME"])
    doomed = Worker(home, "query", "conc-doomed", openai_env(server), concurrency=32)
    try:
        ids = [answering.submit(q, kb, rerank=False) for q in questions(24)]
        deadline = time.monotonic() + 300
        while server.stats()["in_flight"] < 24:
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.1)
        doomed.kill()
        other = Worker(home, "query", "conc-other", {**ENV, "PGRAG_GENERATOR": "extractive"})
        try:
            with ThreadPoolExecutor(24) as pool:
                followed = list(pool.map(lambda i: list(client.follow(i, timeout_s=240)), ids))
        finally:
            other.stop()
    finally:
        doomed.stop()  # killed already, unless the test failed before
        server.stop()
    for events in followed:
        kinds = [(e.type, e.data.get("state")) for e in events]
        assert kinds[-1] == ("done", None), kinds
        assert ("status", "restarted") in kinds, kinds
    # A reader gets `done` just before the task that sent it marks its work done.
    deadline = time.monotonic() + 60
    while True:
        with db.connect() as conn:
            rows = conn.execute(
                "SELECT q.state, q.options->>'generator', w.state, w.attempts"
                " FROM pgrag.queries q JOIN pgrag.work w ON w.args = jsonb_build_array(q.id::text)"
                " WHERE q.id = ANY(%s::uuid[])",
                ([str(i) for i in ids],),
            ).fetchall()
        if all(row[2] != "running" for row in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(rows) == [("done", "extractive", "done", 2)] * 24


def test_the_async_client_follows_many_answers_in_one_thread(kb: str) -> None:
    """`aask` in one event loop: every question's events arrive, in order, to `done`."""

    async def collect(question: str) -> list[Event]:
        return [event async for event in client.aask(question, kb)]

    async def main() -> list[list[Event]]:
        return await asyncio.gather(*(collect(q) for q in questions(6)))

    answered = asyncio.run(main())
    assert [events[-1].type for events in answered] == ["done"] * 6
    assert all(events[0].data["state"] == "queued" for events in answered)
    ids = {events[0].data["id"] for events in answered}
    with db.connect() as conn:
        done = conn.execute(
            "SELECT count(*) FROM pgrag.queries WHERE id = ANY(%s::uuid[]) AND state = 'done'",
            (list(ids),),
        ).fetchone()
    assert done == (6,)


def test_a_failing_or_hung_llm_request_fails_only_its_own_question(
    kb: str, own_broker: None
) -> None:
    """Among questions in flight together, one whose LLM request fails (HTTP 500) and one
    whose request hangs past PGRAG_GENERATE_TIMEOUT_S each end with an `error` event giving
    the reason; the others are answered, and on time."""
    server = SimulatedLLM(ttft_s=0.2, tokens=10, pace_s=0.05)
    home = Path(os.environ["PGRAG_HOME"])
    env = {**openai_env(server), "PGRAG_GENERATE_TIMEOUT_S": "8"}
    worker = Worker(home, "query", "conc-faults", env, concurrency=4)
    asked = [f"{QUESTIONS[0][0]} STALL", f"{QUESTIONS[1][0]} FAIL", *questions(2)]
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda q: (list(client.ask(q, kb)), time.monotonic()), asked))
    finally:
        worker.stop()
        server.stop()
    (stalled, _), (failed, _), *fine = answers
    assert stalled[-1].type == "error" and "did not finish within 8 s" in stalled[-1].data["reason"]
    assert failed[-1].type == "error" and "HTTP 500: the model failed" in failed[-1].data["reason"]
    assert [events[-1].type for events, _ in fine] == ["done", "done"]
    stalled_at = answers[0][1]
    assert all(at < stalled_at for _, at in fine)  # not held up by the hung one
