"""Ask questions from Python and read their answers as they stream.

    from pgrag.client import ask

    for event in ask("How long are backups kept?", "kb"):
        if event.type == "token":
            print(event.data["text"], end="", flush=True)
        elif event.type == "done":
            print(event.data["citations"], event.data["timings"])
        elif event.type == "error":
            raise SystemExit(event.data["reason"])

Events are those of `pgrag.runtime.streaming` (status, passages, token, done, error), in order, from
the first; the last is always `done` or `error`. `follow(id)` reads a question asked earlier
(or elsewhere): while its stream lasts (PGRAG_ANSWER_TTL_S) from the stream, afterwards the
final event is rebuilt from the stored row. Both are safe to call from many threads.

An asyncio application follows many answers in one thread with `aask` and `afollow`:

    async for event in aask("How long are backups kept?", "kb"):
        ...

With PGRAG_API_URL set, the same calls go through the HTTP API (`pgrag.remote`) with the key
in PGRAG_API_KEY, instead of to PostgreSQL and Redis directly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence

from pgrag import remote
from pgrag.query import answering
from pgrag.runtime import streaming
from pgrag.runtime.streaming import Event, StreamTimeout
from pgrag.store.schema import Query

__all__ = [
    "Event",
    "StreamTimeout",
    "aask",
    "afollow",
    "ask",
    "final_event",
    "follow",
    "submit",
]


def ask(
    question: str,
    collection: str,
    *,
    k: int = answering.DEFAULT_K,
    rerank: bool | None = None,
    filters: Sequence[str] = (),
    generator: str | None = None,
    timeout_s: float = streaming.READ_TIMEOUT_S,
) -> Iterator[Event]:
    """Queue a question and yield its events; the first (status "queued") carries its id."""
    query_id = submit(
        question, collection, k=k, rerank=rerank, filters=filters, generator=generator
    )
    return follow(query_id, timeout_s=timeout_s)


def submit(
    question: str,
    collection: str,
    *,
    k: int = answering.DEFAULT_K,
    rerank: bool | None = None,
    filters: Sequence[str] = (),
    generator: str | None = None,
) -> uuid.UUID:
    """Queue a question; returns its id for `follow`."""
    send = remote.submit if remote.enabled() else answering.submit
    return send(question, collection, k=k, rerank=rerank, filters=filters, generator=generator)


def follow(
    query_id: uuid.UUID | str, *, timeout_s: float = streaming.READ_TIMEOUT_S
) -> Iterator[Event]:
    """The events of a question asked earlier. UnknownQuestion (a LookupError) when there is
    no such question; StreamTimeout when no final event comes within `timeout_s`."""
    if remote.enabled():
        return remote.follow(query_id, timeout_s=timeout_s)
    row = answering.get_query(query_id)  # fails at once for an unknown id
    if row.state in ("done", "failed") and not streaming.exists(row.id):
        return iter([final_event(row)])
    return streaming.read(row.id, timeout_s=timeout_s)


async def aask(
    question: str,
    collection: str,
    *,
    k: int = answering.DEFAULT_K,
    rerank: bool | None = None,
    filters: Sequence[str] = (),
    generator: str | None = None,
    timeout_s: float = streaming.READ_TIMEOUT_S,
) -> AsyncIterator[Event]:
    """`ask` for asyncio: queue a question and iterate over its events."""
    query_id = await asyncio.to_thread(
        submit, question, collection, k=k, rerank=rerank, filters=filters, generator=generator
    )
    async for event in afollow(query_id, timeout_s=timeout_s):
        yield event


async def afollow(
    query_id: uuid.UUID | str, *, timeout_s: float = streaming.READ_TIMEOUT_S
) -> AsyncIterator[Event]:
    """`follow` for asyncio: Redis (or the API's server-sent events) read without a thread."""
    if remote.enabled():
        async for event in remote.afollow(query_id, timeout_s=timeout_s):
            yield event
        return
    row = await asyncio.to_thread(answering.get_query, query_id)
    if row.state in ("done", "failed") and not await asyncio.to_thread(streaming.exists, row.id):
        yield final_event(row)
        return
    async for event in streaming.aread(row.id, timeout_s=timeout_s):
        yield event


def final_event(row: Query) -> Event:
    """The `done` or `error` event of a finished question, from its stored row."""
    if row.state == "done":
        data = {
            "answer": row.answer,
            "short_answer": row.short_answer,
            "citations": row.citations,
            "timings": row.timings,
        }
        return Event("done", data)
    return Event("error", {"reason": row.error or "failed"})
