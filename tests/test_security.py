"""The API's front door, end to end against a real uvicorn, PostgreSQL, Redis and workers:
keys and scopes, collections a key may not see, answers that belong to their asker, uploads
with hostile names and sizes, server paths outside PGRAG_SOURCE_ROOTS, and the rate limit.

Every refusal is checked for its exact status and for having no side effect: no job, no
question, no work queued.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pgrag import client as pgrag_client
from pgrag.runtime import db
from pgrag.runtime.settings import get_settings
from pgrag.store import keys
from pgrag.store.collections import UnknownCollection
from tests.conftest import (
    API_ASKS_PER_MIN,
    API_FILE_MB,
    API_REQUEST_MB,
    EXAMPLES,
    QUESTIONS,
    KeyClient,
)
from tests.test_api import kinds, sse

pytestmark = pytest.mark.slow


def counts() -> tuple[int, int, int]:
    """Jobs, questions and units of work: what a refused request must not add to."""
    with db.connect() as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pgrag.ingest_jobs), (SELECT count(*) FROM"
            " pgrag.queries), (SELECT count(*) FROM pgrag.work)"
        ).fetchone()
    assert row is not None
    return row


@pytest.fixture(scope="module")
def corpus(admin: KeyClient) -> Iterator[str]:
    """A small collection uploaded through the API."""
    name = f"sec_{uuid.uuid4().hex[:8]}"
    files = [("files", (p.name, p.read_bytes())) for p in sorted(EXAMPLES.glob("corpus/*/*"))]
    r = admin.post(f"/v1/collections/{name}/documents", params={"create": True}, files=files)
    assert r.status_code == 202, r.text
    assert wait_done(admin, r.json()["id"])["docs_done"] == len(files)
    yield name


def wait_done(client: httpx.Client, job_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in (
        "done",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["state"] == "done", job
    return dict(job)


def requests_of(collection: str, job_id: int, query_id: str) -> list[tuple[str, str, Any]]:
    """(scope, route, request) for every route but /healthz, each a valid request."""
    return [
        ("search", "POST /v1/search", {"json": {"query": "backups", "collection": collection}}),
        ("ask", "POST /v1/ask", {"json": {"question": "backups?", "collection": collection}}),
        ("ask", f"GET /v1/answers/{query_id}", {"params": {"wait": "false"}}),
        (
            "ingest",
            "POST /v1/ingest",
            {"json": {"source": str(EXAMPLES / "corpus"), "collection": collection}},
        ),
        (
            "ingest",
            f"POST /v1/collections/{collection}/documents",
            {"files": [("files", ("x.txt", b"some text"))]},
        ),
        ("ingest", f"GET /v1/jobs/{job_id}", {}),
    ]


def call(client: httpx.Client, route: str, request: dict[str, Any]) -> httpx.Response:
    method, path = route.split(" ")
    return client.request(method, path, **request)


@pytest.fixture(scope="module")
def asked(api: str, corpus: str) -> tuple[KeyClient, str]:
    """A key with the ask scope on `corpus`, and a question it asked and got answered."""
    asker = KeyClient(api, ["ask"], [corpus])
    r = asker.post("/v1/ask", json={"question": "How long are backups kept?", "collection": corpus})
    assert r.status_code == 202, r.text
    assert kinds(sse(asker, r.json()["answer_url"])).endswith("done")
    return asker, r.json()["id"]


def test_every_route_refuses_a_missing_wrong_or_revoked_key(
    api: str, admin: KeyClient, corpus: str, asked: tuple[KeyClient, str]
) -> None:
    job_id = 1
    revoked = KeyClient(api, ["admin"])
    keys.revoke_key(revoked.key_name)
    anonymous = httpx.Client(base_url=api)
    forged = httpx.Client(base_url=api, headers={"Authorization": f"Bearer {revoked.token}x"})
    malformed = httpx.Client(base_url=api, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    before = counts()
    for _, route, request in requests_of(corpus, job_id, asked[1]):
        for client in (anonymous, forged, malformed, revoked):
            r = call(client, route, request)
            assert r.status_code == 401, (route, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert "answer" not in r.text and "passages" not in r.text
    assert counts() == before
    assert httpx.get(f"{api}/healthz").status_code == 200  # the one open route


def test_a_key_without_the_scope_gets_403(
    api: str, corpus: str, asked: tuple[KeyClient, str]
) -> None:
    job_id = 1
    before = counts()
    for scope in ("search", "ask", "ingest"):
        client = KeyClient(api, [scope])
        for needed, route, request in requests_of(corpus, job_id, asked[1]):
            if needed != scope:
                r = call(client, route, request)
                assert r.status_code == 403, (scope, route, r.text)
                assert f"lacks the {needed!r} scope" in r.json()["detail"]
    assert counts() == before


def test_a_collection_outside_the_key_is_404_like_a_missing_one(
    api: str, admin: KeyClient, corpus: str
) -> None:
    """A key limited to one collection cannot use, or learn of, another."""
    other = f"sec_other_{uuid.uuid4().hex[:6]}"
    r = admin.post(
        f"/v1/collections/{other}/documents",
        params={"create": True},
        files=[("files", ("other.txt", b"The other collection's secret plan."))],
    )
    other_job = wait_done(admin, r.json()["id"])["id"]
    limited = KeyClient(api, ["search", "ask", "ingest"], [corpus])
    other_question = admin.post("/v1/ask", json={"question": "plan?", "collection": other})
    before = counts()
    for _, route, request in requests_of(other, other_job, other_question.json()["id"]):
        r = call(limited, route, request)
        assert r.status_code == 404, (route, r.text)
        if "collection" in r.text:
            assert r.json()["detail"] == str(UnknownCollection(other)).strip("'\"")
        assert "secret plan" not in r.text
    assert counts() == before
    # Its own collection works, and the same 404 comes for one that exists nowhere.
    found = limited.post("/v1/search", json={"query": "backups", "collection": corpus})
    assert found.status_code == 200 and found.json()["passages"]
    r = limited.post("/v1/search", json={"query": "x", "collection": "sec_nowhere"})
    assert r.status_code == 404


def test_answers_belong_to_their_asker(
    api: str, admin: KeyClient, corpus: str, asked: tuple[KeyClient, str]
) -> None:
    asker, query_id = asked
    stranger = KeyClient(api, ["ask"], [corpus])
    for wait in ("true", "false"):
        r = stranger.get(f"/v1/answers/{query_id}", params={"wait": wait})
        assert r.status_code == 404 and r.json()["detail"] == f"question {query_id} does not exist"
        assert asker.get(f"/v1/answers/{query_id}", params={"wait": wait}).status_code == 200
        assert admin.get(f"/v1/answers/{query_id}", params={"wait": wait}).status_code == 200
    stored = asker.get(f"/v1/answers/{query_id}", params={"wait": "false"}).json()
    assert stored["state"] == "done" and stored["answer"]
    with db.connect() as conn:
        row = conn.execute(
            "SELECT api_key_id FROM pgrag.queries WHERE id = %s", (query_id,)
        ).fetchone()
    assert row == (asker.key_id,)
    assert uuid.UUID(query_id).version == 4  # random: not guessable from another id


HOSTILE_NAMES = {
    "../../escape.txt": "escape.txt",
    "/etc/absolute.md": "absolute.md",
    "..\\..\\windows.txt": "windows.txt",
    "nul\x00byte.txt": "nulbyte.txt",
    "...hidden.txt": "hidden.txt",
    "x" * 300 + ".txt": "x" * 116 + ".txt",
    "dup.txt": "dup.txt",
    "sub/dup.txt": "dup-2.txt",
}


def multipart(files: list[tuple[str | None, bytes]]) -> dict[str, Any]:
    """The request arguments of a multipart body written by hand, so that file names reach
    the server exactly as given (clients would escape some). A None name: a plain field."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        filename = "" if name is None else f'; filename="{name}"'
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"{filename}\r\n\r\n'
        parts.append(head.encode() + data + b"\r\n")
    return {
        "content": b"".join(parts) + f"--{boundary}--\r\n".encode(),
        "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    }


def test_upload_stores_hostile_names_as_names(
    admin: KeyClient, collection_name: str, tmp_path: Path
) -> None:
    files: list[tuple[str | None, bytes]] = [
        (name, f"Document {i} about valves.".encode()) for i, name in enumerate(HOSTILE_NAMES)
    ]
    r = admin.post(
        f"/v1/collections/{collection_name}/documents", params={"create": True}, **multipart(files)
    )
    assert r.status_code == 202, r.text
    job = wait_done(admin, r.json()["id"])
    assert job["docs_done"] == len(files)
    folder = Path(job["source"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(HOSTILE_NAMES.values())
    assert all(p.is_file() and p.parent == folder for p in folder.rglob("*"))
    # Nothing was written where the names pointed.
    assert not (folder.parent.parent / "escape.txt").exists()
    assert not Path("/etc/absolute.md").exists()
    with db.connect() as conn:
        ids = {
            r[0]
            for r in conn.execute(
                "SELECT d.external_id FROM pgrag.documents d JOIN pgrag.collections c"
                " ON c.id = d.collection_id WHERE c.name = %s",
                (collection_name,),
            )
        }
    assert ids == set(HOSTILE_NAMES.values())


def test_upload_jsonl_body_and_limits(
    api: str, admin: KeyClient, collection_name: str, tmp_path: Path
) -> None:
    rows = [
        {"id": f"row-{i}", "title": f"Row {i}", "text": f"Pump {i} needs a valve."}
        for i in range(5)
    ]
    body = "\n".join(json.dumps(r) for r in rows).encode()
    url = f"/v1/collections/{collection_name}/documents"
    r = admin.post(
        url, params={"create": True}, content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert r.status_code == 202, r.text
    job = wait_done(admin, r.json()["id"])
    assert (job["docs_done"], job["source"].endswith("documents.jsonl")) == (5, True)
    found = admin.post("/v1/search", json={"query": "pump 3 valve", "collection": collection_name})
    assert found.json()["passages"][0]["external_id"] == "row-3"

    uploads = Path(job["source"]).parent.parent
    kept = set(uploads.iterdir())
    before = counts()
    big = b"a" * int(API_FILE_MB * 2**20 + 1)
    refusals: list[tuple[int, str, Callable[[], httpx.Response]]] = [
        # One file over the per-file limit, beside a good one: the whole request is refused.
        (
            413,
            "big.txt: over the limit",
            lambda: admin.post(url, files=[("f", ("ok.txt", b"fine")), ("f", ("big.txt", big))]),
        ),
        # A JSONL body over the per-file limit, streamed without a length.
        (
            413,
            "documents.jsonl: over the limit",
            lambda: admin.post(
                url,
                content=iter([big[: len(big) // 2], big[len(big) // 2 :]]),
                headers={"Content-Type": "application/x-ndjson"},
            ),
        ),
        # A request over the per-request limit, refused from its Content-Length.
        (
            413,
            "request body over the limit",
            lambda: admin.post(url, files=[("f", ("a.txt", b"a" * int(API_REQUEST_MB * 2**20)))]),
        ),
        (415, "unsupported file type .exe", lambda: admin.post(url, **multipart([("t.exe", b"")]))),
        (
            415,
            "send multipart",
            lambda: admin.post(url, content=b"x", headers={"Content-Type": "text/csv"}),
        ),
        (400, "no files", lambda: admin.post(url, **multipart([(None, b"a field")]))),
    ]
    for status, reason, send in refusals:
        r = send()
        assert (r.status_code, reason in r.json()["detail"]) == (status, True), r.text
    assert counts() == before
    assert set(uploads.iterdir()) == kept  # the refused uploads' folders are gone


def test_server_paths_outside_the_roots_are_refused_unopened(
    admin: KeyClient, collection_name: str, tmp_path: Path
) -> None:
    secret = tmp_path / "credentials.txt"
    secret.write_text("password: hunter2")
    os.utime(secret, (0, secret.stat().st_mtime))  # any read of it would move its atime
    inside = EXAMPLES / "corpus"
    escape = tmp_path / "link-into-examples"
    escape.symlink_to(inside)  # outside the roots, pointing in: allowed (resolved)
    before = counts()
    for source in (
        str(secret),
        str(tmp_path),
        f"{inside}/{'../' * len(inside.parts)}{secret.relative_to('/')}",
        "/etc/passwd",
        "relative/path",
        "bad\x00path",
    ):
        body = {"source": source, "collection": collection_name, "create": True}
        r = admin.post("/v1/ingest", json=body)
        assert r.status_code == 400, (source, r.text)
        assert "PGRAG_SOURCE_ROOTS" in r.json()["detail"]
    assert counts() == before
    assert secret.stat().st_atime == 0
    body = {"source": str(escape), "collection": collection_name, "create": True}
    r = admin.post("/v1/ingest", json=body)
    assert r.status_code == 202 and r.json()["source"] == str(inside)
    wait_done(admin, r.json()["id"])


def test_rate_limit_answers_429_then_lets_the_key_through(api: str) -> None:
    client = KeyClient(api, ["ask"])
    body = {"question": "q", "collection": "sec_none"}  # the worker refuses it at once
    # A burst of the minute's budget goes through; the budget refills one question every
    # 60 / API_ASKS_PER_MIN seconds, so a slow burst may get a few more before the 429.
    accepted = 0
    while (r := client.post("/v1/ask", json=body)).status_code == 202:
        accepted += 1
        assert accepted < 2 * API_ASKS_PER_MIN
    assert r.status_code == 429 and accepted >= API_ASKS_PER_MIN, r.text
    before = counts()
    assert client.post("/v1/ask", json=body).status_code == 429
    wait = int(r.headers["Retry-After"])
    assert 1 <= wait <= 60 // API_ASKS_PER_MIN + 1
    assert counts() == before
    # Another key is not held back by this one.
    assert KeyClient(api, ["ask"]).post("/v1/ask", json=body).status_code == 202
    time.sleep(wait)
    assert client.post("/v1/ask", json=body).status_code == 202


def pgrag(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgrag", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_cli_keys_create_list_revoke(api: str) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    made = pgrag("keys", "create", name, "--scope", "search,ask", "--collection", "kb")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("pgrag_") and "search, ask" not in made.stdout
    key = keys.authenticate(token)
    assert key is not None and (key.scopes, key.collections) == (["ask", "search"], ["kb"])
    with db.connect() as conn:  # only the hash is stored
        assert token.encode() not in b"".join(
            bytes(r[0]) + r[1].encode()
            for r in conn.execute("SELECT hash, prefix FROM pgrag.api_keys")
        )
    again = pgrag("keys", "create", name, "--scope", "ask")
    assert again.returncode == 1 and "exists" in again.stderr
    assert pgrag("keys", "create", "x", "--scope", "root").returncode == 1
    listed = pgrag("keys", "list").stdout
    assert name in listed and token not in listed and "live" in listed
    assert pgrag("keys", "revoke", name).returncode == 0
    assert keys.authenticate(token) is None
    r = httpx.post(
        f"{api}/v1/search",
        json={"query": "x", "collection": "kb"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 401
    assert "revoked" in pgrag("keys", "list").stdout


def test_up_creates_the_admin_key_once(services: Path, tmp_path: Path) -> None:
    from pgrag.runtime.services import database_url, redis_url

    env = {
        "PGRAG_HOME": str(tmp_path),
        "PGRAG_DATABASE_URL": database_url(),
        "PGRAG_REDIS_URL": redis_url(),
    }
    first = pgrag("up", "--no-workers", "--api-port", "18080", env=env)
    assert first.returncode == 0, first.stderr
    saved = tmp_path / "api-key"
    token = saved.read_text().strip()
    assert f"admin key (saved in {saved}): {token}" in first.stdout
    assert saved.stat().st_mode & 0o777 == 0o600
    key = keys.authenticate(token)
    assert key is not None and key.scopes == ["admin"]
    second = pgrag("up", "--no-workers", "--api-port", "18080", env=env)
    assert f"admin key in {saved}" in second.stdout and token not in second.stdout
    assert saved.read_text().strip() == token


def test_cli_and_client_through_a_remote_api(api: str, collection_name: str) -> None:
    """With PGRAG_API_URL set, ingest uploads, and search and ask go through the API with
    PGRAG_API_KEY."""
    client = KeyClient(api, ["search", "ask", "ingest"])
    remote = {"PGRAG_API_URL": api, "PGRAG_API_KEY": client.token}
    ingested = pgrag(
        "ingest", str(EXAMPLES / "corpus"), "-c", collection_name, "--create", env=remote
    )
    assert ingested.returncode == 0, ingested.stderr
    assert f"uploaded {EXAMPLES / 'corpus'} to {collection_name}" in ingested.stdout
    question, document = QUESTIONS[0]
    found = pgrag("search", question, "-c", collection_name, "-k", "2", env=remote)
    assert found.returncode == 0 and f"1. {Path(document).name}" in found.stdout, found.stdout
    asked = pgrag("ask", question, "-c", collection_name, env=remote)
    assert asked.returncode == 0 and "timings" in asked.stdout
    assert re.search(r"^\[\d+\] ", asked.stdout, re.M), asked.stdout  # its citations
    with db.connect() as conn:  # asked through the API, with this key
        owner = conn.execute(
            "SELECT api_key_id FROM pgrag.queries WHERE question = %s ORDER BY created_at DESC",
            (question,),
        ).fetchone()
    assert owner == (client.key_id,)
    wrong = pgrag("search", question, "-c", collection_name, env={**remote, "PGRAG_API_KEY": "x"})
    assert wrong.returncode == 1 and "401" in wrong.stderr

    os.environ.update(remote)
    get_settings.cache_clear()
    try:
        events = list(pgrag_client.ask(question, collection_name))
    finally:
        for var in remote:
            del os.environ[var]
        get_settings.cache_clear()
    assert events[0].type == "status" and events[-1].type == "done"
    assert events[-1].data["citations"][0]["external_id"] == Path(document).name
