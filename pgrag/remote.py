"""The HTTP API from Python: what `pgrag.client` and the CLI use when PGRAG_API_URL is set.

Every request carries `Authorization: Bearer $PGRAG_API_KEY`. Answers arrive as the API's
server-sent events and are turned back into `pgrag.runtime.streaming.Event`s, so a caller cannot
tell a remote question from a local one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from pgrag.ingest.sources import SUFFIX_TYPES
from pgrag.query.retrieval import Passage, Retrieval
from pgrag.runtime.errors import UserError
from pgrag.runtime.settings import get_settings
from pgrag.runtime.streaming import Event, StreamTimeout

BODY_TYPES = {".jsonl": "application/x-ndjson", ".parquet": "application/vnd.apache.parquet"}


class ApiError(UserError, RuntimeError):
    """The API refused a request; the message is its status and reason."""


def enabled() -> bool:
    return bool(get_settings().api_url)


def _client_options(timeout_s: float) -> dict[str, Any]:
    settings = get_settings()
    if not settings.api_key:
        raise ApiError(f"PGRAG_API_URL is {settings.api_url}: set PGRAG_API_KEY to a key for it")
    return {
        "base_url": settings.api_url,
        "headers": {"Authorization": f"Bearer {settings.api_key}"},
        "timeout": httpx.Timeout(timeout_s, connect=10.0),
    }


def _client(timeout_s: float = 60.0) -> httpx.Client:
    return httpx.Client(**_client_options(timeout_s))


def _json(response: httpx.Response) -> Any:
    if response.is_error:
        response.read()
        try:
            reason = response.json()["detail"]
        except (ValueError, KeyError, TypeError):
            reason = response.text
        raise ApiError(f"{response.request.url.path}: {response.status_code} {reason}")
    return response.json()


def submit(
    question: str,
    collection: str,
    *,
    k: int,
    rerank: bool | None,
    filters: Sequence[str],
    generator: str | None,
) -> uuid.UUID:
    body = {
        "question": question,
        "collection": collection,
        "k": k,
        "rerank": rerank,
        "filters": list(filters),
        "generator": generator,
    }
    with _client() as client:
        return uuid.UUID(_json(client.post("/v1/ask", json=body))["id"])


class _EventParser:
    """Server-sent events, a line at a time: `feed` returns an event at its closing blank
    line, else None."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def feed(self, line: str) -> Event | None:
        if line:
            name, _, value = line.partition(":")
            self.fields[name] = value.removeprefix(" ")
            return None
        fields, self.fields = self.fields, {}
        if "event" not in fields:
            return None
        return Event(fields["event"], json.loads(fields["data"]), fields.get("id", ""))


def follow(query_id: uuid.UUID | str, *, timeout_s: float) -> Iterator[Event]:
    """The question's events, read from the API's server-sent events."""
    parser = _EventParser()
    with (
        _client(timeout_s) as client,
        client.stream("GET", f"/v1/answers/{query_id}") as response,
    ):
        if response.is_error:
            _json(response)
        try:
            for line in response.iter_lines():
                if event := parser.feed(line):
                    yield event
                    if event.final:
                        return
        except httpx.ReadTimeout:
            raise StreamTimeout(f"no event within {timeout_s:g} s") from None
    raise StreamTimeout("the answer stream ended before a final event")


async def afollow(query_id: uuid.UUID | str, *, timeout_s: float) -> AsyncIterator[Event]:
    """`follow` for asyncio."""
    parser = _EventParser()
    async with (
        httpx.AsyncClient(**_client_options(timeout_s)) as client,
        client.stream("GET", f"/v1/answers/{query_id}") as response,
    ):
        if response.is_error:
            await response.aread()
            _json(response)
        try:
            async for line in response.aiter_lines():
                if event := parser.feed(line):
                    yield event
                    if event.final:
                        return
        except httpx.ReadTimeout:
            raise StreamTimeout(f"no event within {timeout_s:g} s") from None
    raise StreamTimeout("the answer stream ended before a final event")


def search(
    query: str, collection: str, *, k: int, mode: str, filters: Sequence[str], rerank: bool
) -> Retrieval:
    body = {
        "query": query,
        "collection": collection,
        "k": k,
        "mode": mode,
        "filters": list(filters),
        "rerank": rerank,
    }
    with _client() as client:
        found = _json(client.post("/v1/search", json=body))
    return Retrieval([Passage(**p) for p in found["passages"]], found["timings"])


def upload(path: Path, collection: str, *, create: bool, delete_missing: bool) -> dict[str, Any]:
    """Upload a folder's supported files (a multipart form) or one JSONL or Parquet file (its
    body) and return the queued job. Files are streamed from disk, not read whole."""
    params = {"create": create, "delete_missing": delete_missing}
    url = f"/v1/collections/{collection}/documents"
    with _client(timeout_s=600.0) as client:
        if path.is_file() and path.suffix.lower() in BODY_TYPES:
            with open(path, "rb") as f:
                headers = {"Content-Type": BODY_TYPES[path.suffix.lower()]}
                return dict(_json(client.post(url, params=params, content=f, headers=headers)))
        files = [
            p
            for p in ([path] if path.is_file() else sorted(path.rglob("*")))
            if p.is_file() and p.suffix.lower() in SUFFIX_TYPES
        ]
        if not files:
            raise ApiError(f"{path}: no files to upload (supported: {', '.join(SUFFIX_TYPES)})")
        handles = [open(p, "rb") for p in files]  # noqa: SIM115 (closed below)
        try:
            form = [("files", (p.name, h)) for p, h in zip(files, handles, strict=True)]
            return dict(_json(client.post(url, params=params, files=form)))
        finally:
            for h in handles:
                h.close()


def _call(method: str, path: str, **kwargs: Any) -> Any:
    with _client() as client:
        return _json(client.request(method, path, **kwargs))


def job(job_id: int) -> dict[str, Any]:
    return dict(_call("GET", f"/v1/jobs/{job_id}"))


def jobs(limit: int = 20) -> list[dict[str, Any]]:
    """The latest jobs of the collections the key may use, newest first."""
    return list(_call("GET", "/v1/jobs", params={"limit": limit}))


def cancel_job(job_id: int) -> dict[str, Any]:
    return dict(_call("POST", f"/v1/jobs/{job_id}/cancel"))


def collections() -> list[dict[str, Any]]:
    """The collections the key may use."""
    return list(_call("GET", "/v1/collections"))


def require_local(command: str) -> None:
    """Refuse `command`, which has no API route, while PGRAG_API_URL is set: it would act on
    the local database, not on the API's."""
    if enabled():
        raise UserError(
            f"`pgrag {command}` works on the database itself and has no API route, and"
            f" PGRAG_API_URL is set ({get_settings().api_url}): run it where the database is,"
            " with PGRAG_API_URL unset"
        )
