"""Questions and their answers.

`POST /v1/ask` queues a question and returns its id (202). `GET /v1/answers/{id}` streams
its events as server-sent events from the first one (a late reader misses nothing; a client
that reconnects with `Last-Event-ID` resumes after that event, and is told 204 when that was
the last); with `?wait=false` it returns the stored row as JSON instead. The events' schema
is in api/events.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, StrictBool
from starlette.concurrency import run_in_threadpool

from pgrag.client import final_event
from pgrag.query import answering
from pgrag.runtime import streaming
from pgrag.store.schema import ApiKey, Query

from ..auth import KEY_REFUSALS, RATE_LIMITED, check_collection, rate_limit, requires
from ..events import EVENT_SCHEMA, Citation
from ..validation import (
    BODY_REFUSALS,
    CollectionName,
    Integer,
    LastEventId,
    Text,
    refusal,
)

router = APIRouter(tags=["answers"], responses=KEY_REFUSALS)
AskKey = Annotated[ApiKey, Depends(requires("ask"))]

# Far above PGRAG_MAX_QUESTION_CHARS: longer questions are refused by the worker with an
# `error` event that says so; this only keeps absurd bodies out of the database.
HARD_MAX_QUESTION_CHARS = 1_000_000


class AskRequest(BaseModel):
    question: Text = Field(max_length=HARD_MAX_QUESTION_CHARS)
    collection: CollectionName
    k: Integer = Field(answering.DEFAULT_K, ge=1, le=answering.MAX_K, description="Passages used")
    rerank: StrictBool | None = Field(
        None, description="Rerank with the cross-encoder; null: when its model can be loaded"
    )
    filters: list[Text] = Field(
        default_factory=list, description="Metadata conditions KEY OP VALUE, ANDed: lang=en"
    )
    generator: Literal["extractive", "local", "openai"] | None = Field(
        None, description="Generation backend; null: the server's PGRAG_GENERATOR"
    )


class AskResponse(BaseModel):
    id: uuid.UUID
    answer_url: str = Field(description="GET it for the answer's server-sent events")


class Answer(BaseModel):
    id: uuid.UUID
    collection: str
    question: str
    options: dict[str, Any]
    state: Literal["queued", "running", "done", "failed"]
    answer: str | None
    short_answer: str | None = Field(
        None, description="The answer as a short phrase with its citation marker"
    )
    citations: list[Citation] | None
    passages: list[dict[str, Any]] | None = Field(
        description="Passages given to the generator, with the score and rank of each stage"
    )
    timings: dict[str, float] | None = Field(
        description="Milliseconds: queue, embed, recall, rerank, generate, first_token, total"
    )
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@router.post(
    "/v1/ask",
    status_code=202,
    responses={
        202: {
            "links": {
                "answer": {
                    "operationId": "get_answer",
                    "parameters": {"query_id": "$response.body#/id"},
                    "description": "The question's answer",
                }
            }
        },
        **BODY_REFUSALS,
        404: refusal("A collection this key may not use"),
        **RATE_LIMITED,
    },
)
def ask(body: AskRequest, key: AskKey) -> AskResponse:
    """Queue a question for the query workers. Problems with it (an empty or too long
    question, an unknown collection, ...) arrive as the stream's `error` event. Its answer
    can be read with this key (or an admin key) only."""
    check_collection(key, body.collection)
    rate_limit(key, "ask")
    query_id = answering.submit(
        body.question,
        body.collection,
        k=body.k,
        rerank=body.rerank,
        filters=body.filters,
        generator=body.generator,
        api_key_id=key.id,
    )
    return AskResponse(id=query_id, answer_url=f"/v1/answers/{query_id}")


SSE_DOC = (
    "Server-sent events, one per stream event: `id` (the Redis entry id), `event` (status, "
    "passages, token, done or error) and `data` (a JSON object). The last one is `done` "
    "(answer, citations, timings) or `error` (reason)."
)


@router.get(
    "/v1/answers/{query_id}",
    response_model=None,
    responses={
        200: {
            "model": Answer,
            "description": f"{SSE_DOC} With wait=false: the stored question and answer (JSON).",
            "content": {"text/event-stream": {"itemSchema": EVENT_SCHEMA}},
        },
        204: {"description": "Last-Event-ID is the answer's last event: no more will come"},
        400: refusal("Last-Event-ID is no event of this answer's stream"),
        404: refusal("Unknown question id, or one asked with another key"),
    },
)
async def get_answer(
    query_id: uuid.UUID, key: AskKey, wait: bool = True, last_event_id: LastEventId = None
) -> Response | Answer:
    """The question's events as they come (wait=true), or its stored row (wait=false)."""
    try:
        row = await run_in_threadpool(answering.get_query, query_id)
        if row.api_key_id != key.id and not key.allows("admin"):
            raise answering.UnknownQuestion(query_id)  # the same 404 as a wrong id
    except LookupError as e:
        raise HTTPException(404, str(e)) from None
    if not wait:
        return Answer.model_validate(row, from_attributes=True)
    after = "0"
    # Once the stream has expired, a finished question's answer comes from its row, whatever
    # the client last saw (_events).
    if last_event_id is not None and await run_in_threadpool(streaming.exists, row.id):
        last = await run_in_threadpool(streaming.entry, row.id, last_event_id)
        if last is None:
            raise HTTPException(400, f"Last-Event-ID {last_event_id}: no such event in the stream")
        if last.final:
            return Response(status_code=204)  # the SSE way to tell a client not to reconnect
        after = last_event_id
    return StreamingResponse(
        _events(row, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: streaming.Event) -> str:
    head = f"id: {event.id}\n" if event.id else ""
    return f"{head}event: {event.type}\ndata: {json.dumps(event.data, default=str)}\n\n"


async def _events(row: Query, after: str) -> AsyncIterator[str]:
    finished = row.state in ("done", "failed")
    if finished and not await run_in_threadpool(streaming.exists, row.id):
        yield _sse(final_event(row))  # the stream has expired: the row has the answer
        return
    try:
        async for event in streaming.aread(row.id, after=after):
            yield _sse(event)
    except streaming.StreamTimeout as e:
        yield f": {e}\n\n"
