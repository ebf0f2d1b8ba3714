"""The HTTP API end to end: a real uvicorn serving `pgrag.api.app:app` on a loopback port, in front
of real PostgreSQL + pgvector, Redis and Celery workers; answers read as server-sent events
with a real HTTP client. Requests carry an admin key here; tests/test_security.py tries the
others."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import ANSWERED, EXAMPLES, QUESTIONS, KeyClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kb(admin: KeyClient) -> str:
    """The sample corpus, ingested through the API from a server folder (under the API's
    PGRAG_SOURCE_ROOTS)."""
    name = f"api_{uuid.uuid4().hex[:8]}"
    body = {"source": str(EXAMPLES / "corpus"), "collection": name, "create": True}
    r = admin.post("/v1/ingest", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    # A free worker may have started it before the response was written.
    assert job["state"] in ("queued", "running") and job["source"] == body["source"]
    deadline = time.monotonic() + 600
    while job["state"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
        job = admin.get(f"/v1/jobs/{job['id']}").json()
    assert (job["state"], job["docs_done"], job["docs_failed"], job["errors"]) == (
        "done",
        34,
        0,
        [],
    )
    assert job["docs_processed"] == 34 and job["chunks_per_s"] > 0
    assert (job["recovered"], job["recoveries"]) == (0, {})  # no fault, no recovery
    return name


def sse(
    client: httpx.Client, path: str, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Server-sent events read with httpx as they arrive: [{id, event, data}]."""
    events: list[dict[str, Any]] = []
    with client.stream("GET", path, headers=headers) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        for line in r.iter_lines():
            if not line:
                if event:
                    events.append(event)
                event = {}
            elif not line.startswith(":"):
                field, _, value = line.partition(": ")
                event[field] = json.loads(value) if field == "data" else value
    return events


def kinds(events: list[dict[str, Any]]) -> str:
    return " ".join(e["event"] for e in events)


def test_healthz_and_openapi(api: str) -> None:
    assert httpx.get(f"{api}/healthz").json() == {
        "status": "ok",
        "postgres": "ok",
        "redis": "ok",
    }
    spec = httpx.get(f"{api}/openapi.json").json()
    assert set(spec["paths"]) == {
        "/v1/ask",
        "/v1/answers/{query_id}",
        "/v1/search",
        "/v1/ingest",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/collections",
        "/v1/collections/{name}/documents",
        "/healthz",
    }
    schemas = spec["components"]["schemas"]
    assert {"AskRequest", "AskResponse", "Answer", "Citation", "SearchRequest"} <= set(schemas)
    assert {"question", "collection", "k", "rerank", "filters", "generator"} == set(
        schemas["AskRequest"]["properties"]
    )
    answers = spec["paths"]["/v1/answers/{query_id}"]["get"]["responses"]["200"]["content"]
    assert {"text/event-stream", "application/json"} == set(answers)
    # The key scheme, required by every route but /healthz.
    assert spec["components"]["securitySchemes"]["api_key"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["api_key"]["description"],
    }
    for path, methods in spec["paths"].items():
        for op in methods.values():
            assert (op.get("security") == [{"api_key": []}]) == (path != "/healthz"), path


def test_ingest_and_jobs_errors(admin: KeyClient, kb: str) -> None:
    missing = str(EXAMPLES / "no-such-folder")
    r = admin.post("/v1/ingest", json={"source": missing, "collection": kb})
    assert r.status_code == 400 and "does not exist" in r.json()["detail"]
    r = admin.post("/v1/ingest", json={"source": "/no/such/folder", "collection": kb})
    assert r.status_code == 400 and "PGRAG_SOURCE_ROOTS" in r.json()["detail"]
    r = admin.post("/v1/ingest", json={"source": str(EXAMPLES / "corpus"), "collection": "nope_x"})
    assert r.status_code == 400 and "collection 'nope_x' does not exist" in r.json()["detail"]
    assert admin.get("/v1/jobs/987654321").status_code == 404
    assert admin.post("/v1/ingest", json={"collection": kb}).status_code == 422


def test_search(admin: KeyClient, kb: str) -> None:
    question, document = QUESTIONS[0]
    r = admin.post("/v1/search", json={"query": question, "collection": kb, "k": 3})
    assert r.status_code == 200, r.text
    found = r.json()
    assert len(found["passages"]) == 3
    assert found["passages"][0]["external_id"] == document
    assert {"dense", "lexical", "fused"} <= set(found["passages"][0]["scores"])
    assert {"embed", "recall"} <= set(found["timings"])

    body = {"query": question, "collection": kb, "k": 2, "filters": ["team=people"]}
    passages = admin.post("/v1/search", json=body).json()["passages"]
    assert len(passages) == 2 and all(p["metadata"]["team"] == "people" for p in passages)

    r = admin.post("/v1/search", json={"query": "x", "collection": "nope_x"})
    assert r.status_code == 404
    r = admin.post("/v1/search", json={"query": "x", "collection": kb, "filters": ["?"]})
    assert r.status_code == 400
    r = admin.post("/v1/search", json={"query": "", "collection": kb})
    assert r.status_code == 422


def test_ask_then_read_the_answer_as_server_sent_events(admin: KeyClient, kb: str) -> None:
    for question, document in QUESTIONS[2:5]:
        body = {"question": question, "collection": kb, "generator": "extractive"}
        r = admin.post("/v1/ask", json=body)
        assert r.status_code == 202, r.text
        query_id = r.json()["id"]
        assert r.json()["answer_url"] == f"/v1/answers/{query_id}"

        events = sse(admin, f"/v1/answers/{query_id}")
        assert ANSWERED.match(kinds(events)), kinds(events)
        assert events[0]["data"] == {"state": "queued", "id": query_id}
        done = events[-1]["data"]
        tokens = "".join(e["data"]["text"] for e in events if e["event"] == "token")
        assert tokens.strip() == done["answer"]
        assert done["citations"][0]["external_id"] == document

        stored = admin.get(f"/v1/answers/{query_id}", params={"wait": "false"}).json()
        assert (stored["state"], stored["question"]) == ("done", question)
        assert stored["answer"] == done["answer"]
        assert stored["short_answer"] == done["short_answer"]
        assert stored["citations"] == [{"inferred": False, **c} for c in done["citations"]]
        assert stored["timings"] == done["timings"]
        passages = next(e for e in events if e["event"] == "passages")["data"]["passages"]
        assert stored["passages"] == passages

        # A late reader gets every event from the first; Last-Event-ID resumes after one.
        assert sse(admin, f"/v1/answers/{query_id}") == events
        resumed = sse(admin, f"/v1/answers/{query_id}", {"Last-Event-ID": events[2]["id"]})
        assert resumed == events[3:]


def test_bad_questions_arrive_as_error_events(admin: KeyClient, kb: str) -> None:
    for body, reason in [
        ({"question": "", "collection": kb}, "the question is empty"),
        ({"question": "a" * 100_000, "collection": kb}, "over the limit"),
        ({"question": "hi", "collection": "nope_x"}, "does not exist"),
    ]:
        r = admin.post("/v1/ask", json=body)
        assert r.status_code == 202
        events = sse(admin, f"/v1/answers/{r.json()['id']}")
        assert re.match(r"^(status )+error$", kinds(events)), kinds(events)
        assert reason in events[-1]["data"]["reason"]
        stored = admin.get(f"/v1/answers/{r.json()['id']}?wait=false").json()
        assert (stored["state"], stored["error"]) == ("failed", events[-1]["data"]["reason"])

    assert admin.get(f"/v1/answers/{uuid.uuid4()}").status_code == 404
    assert admin.get(f"/v1/answers/{uuid.uuid4()}?wait=false").status_code == 404
    assert admin.get("/v1/answers/not-an-id").status_code == 422
    r = admin.post("/v1/ask", json={"question": "hi", "collection": kb, "k": 0})
    assert r.status_code == 422
    r = admin.post("/v1/ask", json={"question": "hi", "collection": kb, "generator": "x"})
    assert r.status_code == 422

    question, document = QUESTIONS[6]
    r = admin.post("/v1/ask", json={"question": question, "collection": kb})
    events = sse(admin, f"/v1/answers/{r.json()['id']}")
    assert events[-1]["event"] == "done"
    assert events[-1]["data"]["citations"][0]["external_id"] == document
