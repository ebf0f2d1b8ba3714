"""Answer streams: one Redis stream per question, `pgrag:answer:<id>`.

Each event is one stream entry with two fields, `event` (its type) and `data` (a JSON
object):

    status    {"state": "queued" | "running" | "retrieving" | "generating" | "restarted", ...}
              (generating: the generator, and how many passages, [1] to [m], it reads)
    passages  {"passages": [{n, chunk_id, document_id, external_id, title, text, scores, ...}]}
    token     {"text": "..."}            pieces of the answer, grouped (see `TokenBuffer`)
    done      {"answer", "short_answer", "citations", "timings"}
    error     {"reason": "..."}

`done` or `error` is always the last event. Every write renews the stream's expiry
(PGRAG_ANSWER_TTL_S). A worker writes as an attempt at the question (its lease's attempt,
`pgrag.runtime.work`): once a later attempt has written, an earlier one's events are refused,
so a worker that lost its lease while paused cannot add to the answer of the one that took
the question over. Readers start from id 0, so a reader that comes late (or reconnects)
gets every event from the first; the final answer also stays in `pgrag.queries`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import redis
import redis.asyncio

from pgrag.runtime.services import redis_url
from pgrag.runtime.settings import Settings, get_settings

FINAL = frozenset({"done", "error"})
# An entry id as XADD gives them, "<ms>-<seq>": 19 digits each always fit Redis's 64-bit parts,
# so an id of this form never makes a stream command fail.
ENTRY_ID = r"^[0-9]{1,19}-[0-9]{1,19}$"
READ_TIMEOUT_S = 600.0
BLOCK_MS = 1000  # one XREAD waits at most this long, so deadlines are checked in between


class StreamTimeout(TimeoutError):
    pass


@dataclass(frozen=True)
class Event:
    type: str  # status, passages, token, done or error
    data: dict[str, Any] = field(default_factory=dict)
    id: str = ""  # the Redis stream entry id ("<ms>-<seq>"), empty for events made from a row

    @property
    def final(self) -> bool:
        return self.type in FINAL


def stream_key(query_id: object) -> str:
    return f"pgrag:answer:{query_id}"


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


@cache
def _url(settings: Settings) -> str:
    """Redis's URL for these settings, found once: finding the embedded server's reads its
    port file and connects, too much for every event of a busy query worker."""
    return redis_url(settings)


def connection() -> redis.Redis:
    return _client(_url(get_settings()))


# KEYS: the stream, its attempt; ARGV: the writer's attempt, event, data, TTL. Atomic in Redis.
PUBLISH = """
local latest = tonumber(redis.call('GET', KEYS[2]) or '0')
local mine = tonumber(ARGV[1])
if mine < latest then return false end
redis.call('SET', KEYS[2], mine, 'EX', ARGV[4])
local id = redis.call('XADD', KEYS[1], '*', 'event', ARGV[2], 'data', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return id
"""


@cache
def _publish_script(url: str) -> Any:
    return _client(url).register_script(PUBLISH)


def publish(query_id: object, event: str, data: dict[str, Any], attempt: int = 0) -> str | None:
    """Append one event to the question's stream as `attempt` and renew its expiry; returns
    its id, or None when a later attempt has written to the stream (the event is dropped)."""
    key = stream_key(query_id)
    payload = json.dumps(data, default=str)
    args = [attempt, event, payload, get_settings().answer_ttl_s]
    entry_id = _publish_script(_url(get_settings()))(keys=[key, f"{key}:attempt"], args=args)
    return None if entry_id is None else str(entry_id)


def exists(query_id: object) -> bool:
    return bool(connection().exists(stream_key(query_id)))


def entry(query_id: object, entry_id: str) -> Event | None:
    """The event `entry_id` of the question's stream, None when it has none. ValueError for
    an id not of the ENTRY_ID form (which Redis might refuse)."""
    if not re.fullmatch(ENTRY_ID, entry_id):
        raise ValueError(f"{entry_id!r} is not a stream entry id (<ms>-<seq>)")
    found = connection().xrange(stream_key(query_id), entry_id, entry_id, count=1)
    return _events([(None, found)])[0] if found else None


class TokenBuffer:
    """Groups pieces of text into `token` events, so that a fast generator does not send one
    Redis write per token: pieces are sent once `interval_s` has passed since the last send,
    or once `max_pieces` have gathered. A slow generator's pieces go out one by one, at once."""

    def __init__(
        self, send: Callable[[str], object], interval_s: float = 0.05, max_pieces: int = 32
    ) -> None:
        self.send = send
        self.interval_s = interval_s
        self.max_pieces = max_pieces
        self.pieces: list[str] = []
        self.last = float("-inf")

    def add(self, piece: str) -> None:
        self.pieces.append(piece)
        now = time.monotonic()
        if now - self.last >= self.interval_s or len(self.pieces) >= self.max_pieces:
            self.flush()

    def flush(self) -> None:
        if self.pieces:
            self.send("".join(self.pieces))
            self.pieces = []
        self.last = time.monotonic()


def _events(reply: Any) -> list[Event]:
    """The events of an XREAD reply on one stream, in order."""
    return [
        Event(fields.get("event", ""), json.loads(fields.get("data") or "{}"), entry_id)
        for _, entries in reply or []
        for entry_id, fields in entries
    ]


def _block_ms(deadline: float) -> int:
    """How long the next XREAD may wait: BLOCK_MS, or less when the deadline is nearer."""
    return max(1, int(min(BLOCK_MS, (deadline - time.monotonic()) * 1000)))


def read(
    query_id: object, *, after: str = "0", timeout_s: float = READ_TIMEOUT_S
) -> Iterator[Event]:
    """The question's events from the start (or after entry `after`) up to `done` or
    `error`, waiting for new ones with XREAD. StreamTimeout when `timeout_s` pass first."""
    r, key, last = connection(), stream_key(query_id), after
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for event in _events(r.xread({key: last}, count=256, block=_block_ms(deadline))):
            last = event.id
            yield event
            if event.final:
                return
    raise StreamTimeout(f"no final event on {key} within {timeout_s:g} s")


async def aread(
    query_id: object, *, after: str = "0", timeout_s: float = READ_TIMEOUT_S
) -> AsyncIterator[Event]:
    """`read` for asyncio (the API's server-sent events)."""
    key, last = stream_key(query_id), after
    deadline = time.monotonic() + timeout_s
    r = redis.asyncio.Redis.from_url(_url(get_settings()), decode_responses=True)
    try:
        while time.monotonic() < deadline:
            reply = await r.xread({key: last}, count=256, block=_block_ms(deadline))
            for event in _events(reply):
                last = event.id
                yield event
                if event.final:
                    return
        raise StreamTimeout(f"no final event on {key} within {timeout_s:g} s")
    finally:
        await r.aclose()
