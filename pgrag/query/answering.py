"""Queued question answering: `submit` a question, `answer` it in a query worker.

    query_id = submit("How long are backups kept?", "kb")   # a pgrag.queries row + a task
    answer(query_id)                                         # in the query worker

The task carries the question's id only; the question and its options live in the row.
`answer` announces each step on the question's Redis stream (see `pgrag.runtime.streaming`):

    status(running) -> status(retrieving) -> passages -> status(generating) -> token... -> done

(with a `status(stopped)` before `done` when the answer began to repeat a sentence or a
phrase: the guard of `pgrag.query.generation.guard` ends it there)

and then stores the answer, its citations, the passages with every stage's score, the
timings and the question's embedding in the row. A question that cannot be answered (empty,
too long, unknown collection, no search index yet, a generator that fails or times out)
ends with an `error` event and state `failed`; `answer` never raises for it, so the worker
goes on with the next question.

Timings, in milliseconds: queue (created -> picked up), embed, recall, rerank, generate,
first_token (picked up -> first piece of the answer) and total (picked up -> done).
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from itertools import takewhile
from typing import TYPE_CHECKING, Any

import numpy as np
from psycopg.types.json import Jsonb

from pgrag.query.generation import GENERATORS, GeneratorError, Request, get_generator
from pgrag.query.generation.guard import RepetitionGuard
from pgrag.query.generation.spans import concise
from pgrag.query.generation.words import (
    MARKER,
    POINTER_WORDS,
    content_words,
    split_sentences,
)
from pgrag.runtime import db, queue, streaming, work
from pgrag.runtime.settings import get_settings
from pgrag.store import indexing
from pgrag.store.collections import get_collection
from pgrag.store.schema import TERMINAL_JOB_STATES, Collection, Query

if TYPE_CHECKING:
    from pgrag.query.retrieval import Passage, Retrieval

log = logging.getLogger(__name__)

DEFAULT_K = 5
MAX_K = 100
TIMINGS = ("queue", "embed", "recall", "rerank", "generate", "first_token", "total")


class AnswerError(Exception):
    """The question cannot be answered, for the reason the message gives."""


class UnknownQuestion(LookupError):
    def __init__(self, query_id: object) -> None:
        super().__init__(f"question {query_id} does not exist")


@dataclass
class Options:
    k: int = DEFAULT_K
    rerank: bool | None = None  # None: rerank when a reranker model can be loaded
    filters: list[str] = field(default_factory=list)
    generator: str = ""  # "": the query worker's PGRAG_GENERATOR


# ---------------------------------------------------------------------------- submit


def submit(
    question: str,
    collection: str,
    *,
    k: int = DEFAULT_K,
    rerank: bool | None = None,
    filters: Sequence[str] = (),
    generator: str | None = None,
    api_key_id: int | None = None,
) -> uuid.UUID:
    """Queue a question; returns its id. Its answer streams on `pgrag:answer:<id>`.
    `api_key_id`: the API key asking it, the only one (with admin keys) that may read it.

    Nothing is checked here beyond types: every problem with the question reaches its
    reader as an `error` event, the same way whether it is found now or by the worker.
    """
    # An empty generator means the query workers' PGRAG_GENERATOR: they know which backends
    # they are set up for. The worker records the one it used.
    options = Options(int(k), rerank, [str(f) for f in filters], generator or "")
    with db.connect() as conn:
        row = conn.execute(
            "INSERT INTO pgrag.queries (collection, question, options, api_key_id)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            # PostgreSQL text cannot hold NUL; it carries no meaning in a question.
            (collection, question.replace("\x00", " "), Jsonb(asdict(options)), api_key_id),
        ).fetchone()
    assert row is not None
    query_id: uuid.UUID = row[0]
    streaming.publish(query_id, "status", {"state": "queued", "id": str(query_id)})
    work.submit(queue.ANSWER_QUESTION, [str(query_id)])
    return query_id


def get_query(query_id: object) -> Query:
    """The question's row; UnknownQuestion when there is none."""
    try:
        key = uuid.UUID(str(query_id))
    except ValueError:
        raise UnknownQuestion(query_id) from None
    with db.session() as s:
        found = s.get(Query, key)
    if found is None:
        raise UnknownQuestion(query_id)
    return found


# ---------------------------------------------------------------------------- answer


@dataclass
class Claimed:
    question: str
    collection: str
    options: Options
    restarted: bool  # a worker had started it already (and died)
    queued_ms: float


def _claim(query_id: uuid.UUID) -> Claimed | None:
    """Mark the question running; None when it is unknown or already answered (a
    redelivered task)."""
    with db.connect() as conn:
        row = conn.execute(
            "WITH before AS (SELECT state FROM pgrag.queries WHERE id = %(id)s FOR UPDATE)"
            " UPDATE pgrag.queries q SET state = 'running', started_at = now()"
            " FROM before WHERE q.id = %(id)s AND before.state IN ('queued', 'running')"
            " RETURNING q.question, q.collection, q.options, before.state,"
            " extract(epoch FROM now() - q.created_at) * 1000",
            {"id": query_id},
        ).fetchone()
    if row is None:
        return None
    question, collection, options, state, queued_ms = row
    known = {k: v for k, v in (options or {}).items() if k in Options.__dataclass_fields__}
    return Claimed(question, collection, Options(**known), state == "running", float(queued_ms))


@dataclass
class AnswerStream:
    """The question's answer stream, written as this worker's attempt at the question (its
    lease's): once another worker has taken the question over, writing raises LeaseLost."""

    key: uuid.UUID
    attempt: int

    def send(self, event: str, data: dict[str, Any]) -> None:
        if streaming.publish(self.key, event, data, self.attempt) is None:
            raise work.LeaseLost(f"question {self.key} is answered by a later attempt")


def answer(query_id: object) -> str:
    """Answer a queued question (in a query worker); returns its final state, or "skipped"
    for an unknown or already answered question. Raises `work.LeaseLost` when another
    worker took the question over meanwhile (nothing more is written then)."""
    try:
        key = uuid.UUID(str(query_id))
    except ValueError:
        log.warning("not a question id: %r", query_id)
        return "skipped"
    started = time.perf_counter()
    claimed = _claim(key)
    if claimed is None:
        return "skipped"
    timings: dict[str, float] = {"queue": round(claimed.queued_ms, 1)}
    held = work.current()
    stream = AnswerStream(key, held.attempt if held else 0)
    if claimed.restarted:
        # Readers drop the pieces of the answer received so far.
        reason = "the worker answering it stopped; answering again"
        stream.send("status", {"state": "restarted", "reason": reason})
    stream.send("status", {"state": "running"})
    try:
        _answer(stream, claimed, timings, started)
    except work.LeaseLost:
        raise
    except (AnswerError, GeneratorError, ValueError, LookupError) as e:
        _fail(stream, str(e).strip("'\""), timings, started)
        return "failed"
    except Exception as e:
        log.exception("answering %s failed", key)
        _fail(stream, f"internal error: {type(e).__name__}: {e}", timings, started)
        return "failed"
    return "done"


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


def _answer(
    stream: AnswerStream, claimed: Claimed, timings: dict[str, float], started: float
) -> None:
    key, question, options = stream.key, claimed.question.strip(), claimed.options
    options.generator = options.generator or get_settings().generator
    _check(question, options)
    collection = _searchable_collection(key, claimed.collection)

    stream.send("status", {"state": "retrieving"})
    retrieved, reranked = _retrieve(collection, question, options, timings)
    vector, found = retrieved.query_vector, retrieved.passages
    assert vector is not None  # a hybrid search embeds the question
    passages = [_passage_json(n, p) for n, p in enumerate(found, 1)]
    stream.send("passages", {"passages": passages})

    t = time.perf_counter()
    context = in_context(found)
    if context:
        generating = {"generator": options.generator, "passages": len(context)}
        stream.send("status", {"state": "generating", **generating})
        text = _generate(stream, collection, question, vector, context, options, timings, started)
    else:
        where = " with these filters" if options.filters else ""
        text = f"No passage of collection {collection.name!r} matches the question{where}."
        timings["first_token"] = _ms(started)
        stream.send("token", {"text": text})
    timings["generate"] = _ms(t)

    citations = cite(text, passages[: len(context)], question)  # what the generator read
    if found and (status := uncited(citations)):
        stream.send("status", status)
    short = concise(question, text) if found else None
    timings["total"] = _ms(started)
    timings = {s: timings[s] for s in TIMINGS if s in timings}
    with db.connect() as conn:
        work.fence(conn)
        conn.execute(
            "UPDATE pgrag.queries SET state = 'done', collection_id = %s, answer = %s,"
            " short_answer = %s, citations = %s, passages = %s, timings = %s,"
            " question_embedding = %s, options = options || %s, error = NULL,"
            " finished_at = now() WHERE id = %s",
            (
                collection.id,
                text,
                short,
                Jsonb(citations),
                Jsonb(passages),
                Jsonb(timings),
                np.asarray(vector, dtype=np.float32),
                Jsonb(
                    {
                        "generator": options.generator,
                        "rerank": reranked,
                        "batches": retrieved.batches,
                    }
                ),
                key,
            ),
        )
    done = {"answer": text, "short_answer": short, "citations": citations, "timings": timings}
    stream.send("done", done)


def _retrieve(
    collection: Collection, question: str, options: Options, timings: dict[str, float]
) -> tuple[Retrieval, bool]:
    """The question's hybrid search (its embedding included), and whether it was reranked."""
    # Imported here: submitting (the CLI, the API) needs none of the models.
    from pgrag.query import retrieval

    rerank = _reranker_ready() if options.rerank is None else options.rerank
    found = retrieval.retrieve(
        collection, question, k=options.k, filters=options.filters, rerank=rerank
    )
    timings.update({s: round(ms, 1) for s, ms in found.timings.items()})
    return found, rerank


def _generate(
    stream: AnswerStream,
    collection: Collection,
    question: str,
    vector: np.ndarray,
    passages: list[Passage],
    options: Options,
    timings: dict[str, float],
    started: float,
) -> str:
    """The answer, streamed as grouped `token` events while it is generated."""
    from pgrag.inference.embedding import collection_embedder

    settings = get_settings()
    embedder = collection_embedder(collection)
    request = Request(
        question,
        passages,
        deadline=time.monotonic() + settings.generate_timeout_s,
        embed=lambda texts: embedder.together(texts)[0],  # for extractive
        question_vector=vector,
    )
    tokens = streaming.TokenBuffer(lambda text: stream.send("token", {"text": text}))
    pieces: list[str] = []
    guard = RepetitionGuard(get_generator(options.generator).stream(request))
    try:
        for piece in guard:
            if not pieces:
                timings["first_token"] = _ms(started)
            pieces.append(piece)
            tokens.add(piece)
    finally:
        tokens.flush()  # what was generated before a failure still reaches the readers
    if guard.repeated:
        reason = "the answer began to repeat itself; generation was stopped there"
        stopped = {"state": "stopped", "reason": reason, "repeated": guard.repeated}
        stream.send("status", stopped)
    return "".join(pieces).strip()


def in_context(passages: list[Passage]) -> list[Passage]:
    """The passages the generator reads: when they were reranked, those the cross-encoder
    scores within PGRAG_CONTEXT_MARGIN of the best; all of them otherwise. Reranked passages
    come best first, so these are the first ones and keep their numbers [n]. A passage
    scored far below the best rarely answers the question, and a small model reading it
    often answers from it (docs/quality.md); it also costs prompt tokens."""
    margin = get_settings().context_margin
    best = passages[0].scores.get("rerank") if passages else None
    if margin <= 0 or best is None:
        return passages
    return list(takewhile(lambda p: p.scores.get("rerank", -math.inf) >= best - margin, passages))


def _check(question: str, options: Options) -> None:
    limit = get_settings().max_question_chars
    if not question:
        raise AnswerError("the question is empty")
    if len(question) > limit:
        raise AnswerError(
            f"the question is {len(question):,} characters long, over the limit of "
            f"{limit:,} (PGRAG_MAX_QUESTION_CHARS)"
        )
    if not 1 <= options.k <= MAX_K:
        raise AnswerError(f"k must be between 1 and {MAX_K}, not {options.k}")
    if options.generator not in GENERATORS:
        raise AnswerError(
            f"unknown generator {options.generator!r}: use one of {', '.join(GENERATORS)}"
        )


def _searchable_collection(key: uuid.UUID, name: str) -> Collection:
    """The collection, once it has a search index; AnswerError saying why not otherwise."""
    collection = get_collection(name)  # UnknownCollection says how to create it
    with db.connect() as conn:
        conn.execute(
            "UPDATE pgrag.queries SET collection_id = %s WHERE id = %s", (collection.id, key)
        )
        state = indexing.index_state(conn, collection)
        if state == "valid":
            return collection
        job = conn.execute(
            "SELECT id, state FROM pgrag.ingest_jobs WHERE collection_id = %s"
            " AND state <> ALL(%s) ORDER BY id LIMIT 1",
            (collection.id, list(TERMINAL_JOB_STATES)),
        ).fetchone()
    if job is not None:
        raise AnswerError(
            f"collection {name!r} has no search index yet: its ingest job {job[0]} is still "
            f"{job[1]}; ask again once it is done (`pgrag jobs {job[0]}`)"
        )
    if state == "invalid":
        raise AnswerError(
            f"the search index of collection {name!r} is invalid (its build was interrupted);"
            " the next ingest job into it rebuilds it"
        )
    raise AnswerError(
        f"collection {name!r} has no search index yet: it has no documents; "
        f"ingest some with `pgrag ingest SOURCE --collection {name}`"
    )


def warm_up() -> list[str]:
    """Load every model a query worker answers with by default, before it takes a question:
    the default embedder, the cross-encoder when one loads, the default generator's model.
    Returns what was loaded."""
    from pgrag.inference.embedding import load_embedder

    settings = get_settings()
    load_embedder(settings.embed_model, settings.device)
    loaded = [f"embedder {settings.embed_model}"]
    if _reranker_ready():
        loaded.append(f"reranker {settings.rerank_model}")
    generator = get_generator(settings.generator)
    if hasattr(generator, "load"):  # a model of its own (the local one)
        generator.load()
    loaded.append(f"generator {settings.generator}")
    return loaded


@cache
def _reranker_ready() -> bool:
    """Whether the configured cross-encoder loads (checked once per worker process)."""
    from pgrag.inference.rerank import RerankerUnavailable, load_reranker

    try:
        load_reranker()
    except RerankerUnavailable as e:
        log.warning("answering without rerank: %s", e)
        return False
    return True


def _passage_json(n: int, p: Passage) -> dict[str, Any]:
    return {
        "n": n,
        "chunk_id": p.chunk_id,
        "document_id": p.document_id,
        "external_id": p.external_id,
        "title": p.title,
        "ord": p.ord,
        "text": p.text,
        "metadata": p.metadata,
        "scores": p.scores,
        "ranks": getattr(p, "ranks", {}),
    }


_CITATION = re.compile(MARKER)
# Markers opening a piece that follows a sentence's end ("... in 1932. [2] It ...") close
# that sentence: they cite it.
_LEADING_MARKERS = re.compile(rf"^(?:\s*{MARKER}[.,;]?)+")
CITATION_FIELDS = ("n", "chunk_id", "document_id", "external_id", "title")
INFER_MIN_SHARE = 0.6  # of a sentence's content words found in the passage it is traced to


def _sentences(text: str) -> list[str]:
    """The answer's sentences, each with the [n] markers written right after its end."""
    found: list[str] = []
    for piece in split_sentences(text):
        if found and (lead := _LEADING_MARKERS.match(piece)):
            found[-1] += " " + lead.group().strip()
            piece = piece[lead.end() :]
        if piece.strip():
            found.append(piece)
    return found


def _roots(words: set[str]) -> set[str]:
    """Words by their first five letters, so that a sentence's "supported" finds the
    passage's "supporting"."""
    return {w[:5] for w in words}


def cite(text: str, passages: Sequence[dict[str, Any]], question: str = "") -> list[dict[str, Any]]:
    """The passages that `text`, the answer to `question`, cites, in order of first citation.

    Each sentence cites the passages of its [n] (or [n, m]) markers; numbers that match no
    passage are ignored. A sentence whose words are not in what it cites (no passage it
    names holds INFER_MIN_SHARE of its content words, or it names none: small models often
    write no number, or the wrong one) is traced back as well: to the passage holding most
    of its content words, when that is at least INFER_MIN_SHARE of them. When nothing is
    cited, the answer as a whole is traced by the same rule, and then by the words it adds
    to the question (an answer that restates a long question says little else, and the
    question's wording need not be any passage's). Words that point at the sources ("based
    on the context provided") do not count. Traced citations carry `"inferred": true`; what
    the answer wrote is never dropped.
    """
    if not passages:
        return []
    by_n = {p["n"]: p for p in passages}
    words = {n: _roots(content_words(p["text"])) for n, p in by_n.items()}
    cited: dict[int, dict[str, Any]] = {}

    def add(n: int, inferred: bool) -> None:
        if n not in cited:
            cited[n] = {f: by_n[n][f] for f in CITATION_FIELDS}
            if inferred:
                cited[n]["inferred"] = True
        elif not inferred:  # traced from an earlier sentence, and cited by number here
            cited[n].pop("inferred", None)

    def trace(part: str, written: list[int], known: frozenset[str] = frozenset()) -> None:
        said = _roots(content_words(_CITATION.sub(" ", part)) - POINTER_WORDS) - known
        if len(said) < (1 if known else 2):  # one word is all a short answer adds: "Rollo"
            return
        need = INFER_MIN_SHARE * len(said)
        if any(len(said & words[n]) >= need for n in written):
            return
        n = max(words, key=lambda n: len(said & words[n]))
        if len(said & words[n]) >= need:
            add(n, inferred=True)

    for sentence in _sentences(text):
        marked = (int(d) for m in _CITATION.findall(sentence) for d in re.findall(r"\d+", m))
        written = [n for n in marked if n in by_n]
        for n in written:
            add(n, inferred=False)
        trace(sentence, written)
    if not cited:
        trace(text, [])
    if not cited:
        trace(text, [], known=frozenset(_roots(content_words(question))))
    return list(cited.values())


def uncited(citations: Sequence[dict[str, Any]]) -> dict[str, str] | None:
    """The `status` event that tells readers an answer cites no passage by its number [n]
    (small models often write none; `cite` then traces its sources), or None."""
    if any(not c.get("inferred") for c in citations):
        return None
    traced = "were traced back from its words" if citations else "could not be traced"
    return {
        "state": "uncited",
        "reason": f"the answer cites no passage by its number [n]; its sources {traced}",
    }


def _fail(stream: AnswerStream, reason: str, timings: dict[str, float], started: float) -> None:
    timings["total"] = _ms(started)
    with db.connect() as conn:
        work.fence(conn)
        conn.execute(
            "UPDATE pgrag.queries SET state = 'failed', error = %s, timings = %s,"
            " finished_at = now() WHERE id = %s",
            (reason, Jsonb(timings), stream.key),
        )
    stream.send("error", {"reason": reason})
