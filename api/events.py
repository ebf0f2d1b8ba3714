"""The server-sent events of `GET /v1/answers/{id}`, as its OpenAPI schema declares them.

They are the entries of the question's Redis stream (pgrag/runtime/streaming.py), one event
each: `event` is the entry's type, `id` its entry id (absent on a final event made from the
stored answer once the stream has expired) and `data` a JSON object whose fields depend on
the type. `EVENT_SCHEMA` describes one event (OpenAPI's `itemSchema` for text/event-stream);
`EVENT_DEFINITIONS` are the component schemas it refers to.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, Json, TypeAdapter

from pgrag.runtime.streaming import ENTRY_ID

from .routes.search import PassageOut


class Citation(BaseModel):
    n: int
    chunk_id: int
    document_id: int
    external_id: str
    title: str | None
    inferred: bool = Field(False, description="Traced from the answer's words, not cited by [n]")


class StatusData(BaseModel):
    state: Literal["queued", "running", "retrieving", "generating", "restarted"]
    id: uuid.UUID | None = Field(None, description="The question's id (queued)")
    generator: str | None = Field(None, description="The backend that generates (generating)")
    passages: int | None = Field(
        None,
        description="How many of the passages, [1] to [passages], the generator reads "
        "(generating): the reranked ones near the best (PGRAG_CONTEXT_MARGIN)",
    )
    reason: str | None = Field(
        None, description="Why the answer starts again (restarted): drop the tokens so far"
    )


class AnswerPassage(PassageOut):
    n: int = Field(description="The number that citations give it: [n]")


class PassagesData(BaseModel):
    passages: list[AnswerPassage]


class TokenData(BaseModel):
    text: str = Field(description="The next piece of the answer")


class DoneData(BaseModel):
    answer: str
    short_answer: str | None = Field(description="The answer's phrase with its citation")
    citations: list[Citation]
    timings: dict[str, float] = Field(description="Milliseconds of each stage")


class ErrorData(BaseModel):
    reason: str


EventId = Annotated[str, Field(pattern=ENTRY_ID, description="Send it back as Last-Event-ID")]


class StatusEvent(BaseModel):
    event: Literal["status"]
    id: EventId | None = None
    data: Json[StatusData]


class PassagesEvent(BaseModel):
    event: Literal["passages"]
    id: EventId | None = None
    data: Json[PassagesData]


class TokenEvent(BaseModel):
    event: Literal["token"]
    id: EventId | None = None
    data: Json[TokenData]


class DoneEvent(BaseModel):
    event: Literal["done"]
    id: EventId | None = None
    data: Json[DoneData]


class ErrorEvent(BaseModel):
    event: Literal["error"]
    id: EventId | None = None
    data: Json[ErrorData]


AnswerEvent = Annotated[
    StatusEvent | PassagesEvent | TokenEvent | DoneEvent | ErrorEvent,
    Field(discriminator="event"),
]

EVENT_SCHEMA: dict[str, Any] = TypeAdapter(AnswerEvent).json_schema(
    ref_template="#/components/schemas/{model}"
)
EVENT_DEFINITIONS: dict[str, Any] = EVENT_SCHEMA.pop("$defs")
