"""No input reaches a server error, and the API answers what its OpenAPI schema declares.

Against the real uvicorn, PostgreSQL, Redis and worker: the inputs that once broke the API
(an id past bigint, a malformed Last-Event-ID, NUL characters and lone surrogates), the
answer stream's resumption, then schemathesis fuzzing every route from the API's own schema
with a key of each scope (`bench/api_fuzz.py`, bounded here: a fixed seed and few examples).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from pgrag.api.events import AnswerEvent
from pydantic import TypeAdapter

from bench.api_fuzz import PHASES, failures, fuzz
from pgrag.store.keys import SCOPES
from tests.conftest import EXAMPLES, KeyClient
from tests.test_api import sse
from tests.test_security import counts, wait_done

pytestmark = pytest.mark.slow

SEED = 20261206  # the same requests on every run


@pytest.fixture(scope="module")
def admin(api: str) -> KeyClient:
    """An admin key of this module's own: fuzzing spends its rate limits, not the shared
    key's that later modules use."""
    return KeyClient(api, ["admin"])


@pytest.fixture(scope="module")
def one_doc(admin: KeyClient) -> str:
    """A collection of one uploaded document, to ask about."""
    name = f"fuzz_{uuid.uuid4().hex[:8]}"
    text = b"Valve V7 is tested every Monday. The pump P2 is replaced after ten years."
    r = admin.post(
        f"/v1/collections/{name}/documents",
        params={"create": True},
        files=[("files", ("valves.txt", text))],
    )
    assert r.status_code == 202, r.text
    wait_done(admin, r.json()["id"])
    return name


def raw_json(client: httpx.Client, path: str, body: str) -> httpx.Response:
    """POST a JSON text as written (escapes that a JSON encoder would not write included)."""
    return client.post(path, content=body, headers={"Content-Type": "application/json"})


def test_bad_inputs_are_refused_with_the_reason_and_no_side_effect(
    api: str, admin: KeyClient
) -> None:
    before = counts()
    refusals: list[tuple[httpx.Response, str, str]] = [
        (
            admin.get("/v1/jobs/3272357056684921833698160017408"),
            "job_id",
            "less than or equal to 9223372036854775807",
        ),
        (admin.get("/v1/jobs/0"), "job_id", "greater than or equal to 1"),
        (
            admin.get(f"/v1/answers/{uuid.uuid4()}", headers={"Last-Event-ID": "null"}),
            "last-event-id",
            "should match pattern",
        ),
        (
            admin.post("/v1/ask", json={"question": "why\x00", "collection": "kb"}),
            "question",
            "NUL characters",
        ),
        (
            raw_json(admin, "/v1/ask", '{"question": "\\ud800", "collection": "kb"}'),
            "question",
            "unicode string",
        ),
        (
            raw_json(admin, "/v1/search", '{"query": "x", "collection": "\\ud800"}'),
            "collection",
            "unicode string",
        ),
        (
            admin.post(
                "/v1/search", json={"query": "x", "collection": "kb", "filters": ["a=\x00"]}
            ),
            "filters",
            "NUL characters",
        ),
        (
            admin.post("/v1/search", json={"query": "x", "collection": "kb", "k": "5"}),
            "k",
            "must be an integer",
        ),
        (
            admin.post("/v1/ask", json={"question": "q", "collection": "kb", "rerank": 0}),
            "rerank",
            "valid boolean",
        ),
        (
            raw_json(admin, "/v1/ingest", '{"source": "/tmp/\\udc80", "collection": "kb"}'),
            "source",
            "lone surrogate",
        ),
        (admin.post("/v1/collections/no%20spaces/documents"), "name", "should match pattern"),
    ]
    for r, field, reason in refusals:
        assert r.status_code == 422, (r.request.url, r.text)
        errors = r.json()["detail"]
        assert any(field in e["loc"] for e in errors), r.text
        assert any(reason in e["msg"] for e in errors), r.text
    # A path under the roots that no file system can hold (a name over 255 bytes).
    ingester = KeyClient(api, ["ingest"])
    body = {"source": str(EXAMPLES / ("x" * 300)), "collection": "kb", "create": True}
    r = ingester.post("/v1/ingest", json=body)
    assert r.status_code == 400 and "File name too long" in r.json()["detail"], r.text
    assert counts() == before


def events_of(client: httpx.Client, query_id: str, **headers: str) -> list[dict[str, Any]]:
    """The answer's server-sent events, each checked against the schema the API declares."""
    events = sse(client, f"/v1/answers/{query_id}", headers)
    declared = TypeAdapter(AnswerEvent)
    for event in events:
        declared.validate_python({**event, "data": json.dumps(event["data"])})
    return events


def test_a_stream_resumes_after_its_events_ends_after_the_last_refuses_others(
    admin: KeyClient, one_doc: str
) -> None:
    asked = admin.post(
        "/v1/ask", json={"question": "When is valve V7 tested?", "collection": one_doc}
    )
    query_id = asked.json()["id"]
    events = events_of(admin, query_id)
    kinds = [e["event"] for e in events]
    assert {"status", "passages", "token", "done"} <= set(kinds) and kinds[-1] == "done"
    assert "Monday" in events[-1]["data"]["answer"]

    assert events_of(admin, query_id, **{"Last-Event-ID": events[1]["id"]}) == events[2:]
    last = admin.get(f"/v1/answers/{query_id}", headers={"Last-Event-ID": events[-1]["id"]})
    assert (last.status_code, last.content) == (204, b"")  # EventSource stops reconnecting
    for unknown in ("0-0", "1-0", "9999999999999999999-0"):  # the last would wait forever
        r = admin.get(f"/v1/answers/{query_id}", headers={"Last-Event-ID": unknown})
        assert r.status_code == 400 and "no such event" in r.json()["detail"], r.text

    # A question that fails: its events are declared too.
    failed = admin.post("/v1/ask", json={"question": "why?", "collection": "fuzz_nowhere"})
    assert [e["event"] for e in events_of(admin, failed.json()["id"])][-1] == "error"


def test_the_schema_declares_refusals_events_and_links(api: str) -> None:
    spec = httpx.get(f"{api}/openapi.json").json()
    for path, methods in spec["paths"].items():
        for op in methods.values():
            if path != "/healthz":
                assert {"401", "403"} <= set(op["responses"]), path
                if op.get("parameters") or op.get("requestBody"):  # what it takes: validated
                    assert "422" in op["responses"], path
                assert op["responses"]["401"]["headers"]["WWW-Authenticate"]
    answers = spec["paths"]["/v1/answers/{query_id}"]["get"]
    stream = answers["responses"]["200"]["content"]["text/event-stream"]["itemSchema"]
    events = {ref["$ref"].rsplit("/", 1)[1] for ref in stream["oneOf"]}
    assert events == {"StatusEvent", "PassagesEvent", "TokenEvent", "DoneEvent", "ErrorEvent"}
    assert events <= set(spec["components"]["schemas"])
    assert {"204", "400", "404"} <= set(answers["responses"])
    links = spec["paths"]["/v1/ask"]["post"]["responses"]["202"]["links"]
    assert links["answer"]["operationId"] == "get_answer"
    job_id = spec["paths"]["/v1/jobs/{job_id}"]["get"]["parameters"][0]["schema"]
    assert (job_id["minimum"], job_id["maximum"]) == (1, 2**63 - 1)


@pytest.mark.parametrize("scope", SCOPES)
def test_fuzzing_finds_no_server_error_and_no_schema_violation(
    api: str, one_doc: str, scope: str
) -> None:
    """Every check of schemathesis on every response. The admin key reaches every route, on
    a collection with a document, and gets every phase; the others mostly meet 403s, so they
    get fewer examples, no collection and neither the coverage nor the stateful phase
    (bench/api_fuzz.py gives each key everything)."""
    client = KeyClient(api, [scope])
    admin = scope == "admin"
    tallies = fuzz(
        api,
        client.token,
        one_doc if admin else None,
        max_examples=4 if admin else 2,
        seed=SEED,
        request_timeout=10,
        phases=PHASES if admin else ("examples", "fuzzing"),
    )
    operations = {
        f"{method.upper()} {path}"
        for path, methods in httpx.get(f"{api}/openapi.json").json()["paths"].items()
        for method in methods
    }
    assert operations <= {label for label, t in tallies.items() if t.requests}
    found = failures(tallies)
    assert not found, "\n\n".join(found)
