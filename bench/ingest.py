"""Ingestion benchmark: raw encode vs pgrag end to end vs a naive loop, on one corpus.

    python bench/ingest.py [--docs N] [--budget TOKENS] [--backend SETTING] [--out PATH]

One deterministic synthetic corpus (JSONL; documents of 1-12 paragraphs of English-like
sentences) is cut into chunks with pgrag's own chunker and title rule, and then:

(a)  raw `SentenceTransformer.encode(texts, batch_size=32)` on exactly the strings pgrag
     embeds (the model already loaded), in torch (fp32 on a CPU);
(a*) the same call with the model's forward pass in the backend under test (`--backend`,
     default auto: OpenVINO on a CPU), and the cosine of each of its vectors to (a)'s; (a)
     and (a*) take turns over 8 slices of the chunks, so that other work on the machine
     weighs on both alike;
(a') pgrag's `Embedder.encode` on the same strings, one call per batch of documents as the
     embed worker makes it (a diagnostic: the batcher alone, without Celery or Postgres);
(b)  pgrag end to end: embedded PostgreSQL + Redis and real Celery workers (one `ingest`, one
     `embed`, started with `pgrag up`'s argv), `pgrag.ingest.pipeline.submit` into a fresh
     collection,
     from submit to job state `done`; the time in state `indexing` (HNSW
     build, ANALYZE) is reported apart;
(c)  a naive loop: read, chunk, `encode` 32 chunks at a time in arrival order (torch, as
     (a)), one INSERT per chunk into a plain table with a vector column, one commit per
     document;

then, on the same rows and vectors: binary COPY alone (as `pgrag.ingest.loading.replace_chunks` does
it, in transactions of one embed task's documents), `replace_chunks` whole (DELETE + COPY +
lexeme counts), the HNSW build alone (`pgrag.store.indexing.build_index`), the finalize step's other
statements, and the peak RSS of each worker during (b). CPU seconds of every party (workers,
PostgreSQL, this process, other processes on the machine, hypervisor steal) are recorded per
phase, so a figure taken on a shared machine can be judged.

Prints a table and writes JSON (default bench/results/ingest-<time>.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import (
    RESULTS,
    CpuMeter,
    CpuUsage,
    Home,
    ResourceSampler,
    Worker,
    default_out,
    exit_on_sigterm,
    pgrag_home,
    postgres_settings,
    print_table,
    rate,
    scalar,
    write_json,
)

# ---------------------------------------------------------------------------- the corpus


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",")]


# Word lists, comma separated: each topic has its things and its people.
TOPICS = {
    "gardening": (
        "tomato bed, compost heap, greenhouse, irrigation line, seed catalogue, apple orchard, "
        "soil test, herb border",
        "gardener, volunteer, neighbour, grower",
    ),
    "finance": (
        "quarterly budget, expense report, pension fund, audit trail, invoice backlog, "
        "exchange rate, tax return, cash forecast",
        "accountant, auditor, treasurer, analyst",
    ),
    "software": (
        "release branch, deployment script, database schema, test suite, message queue, "
        "login service, build cache, error budget",
        "engineer, reviewer, maintainer, operator",
    ),
    "travel": (
        "night train, harbour ferry, mountain pass, hotel booking, border crossing, old town, "
        "airport shuttle, walking route",
        "traveller, guide, driver, pilgrim",
    ),
    "cooking": (
        "bread dough, tomato sauce, spice rack, cast iron pan, vegetable stock, pastry crust, "
        "rice cooker, lemon tart",
        "cook, baker, chef, apprentice",
    ),
    "health": (
        "morning walk, sleep schedule, blood test, clinic visit, stretching routine, "
        "diet plan, vaccine record, heart rate",
        "nurse, patient, doctor, coach",
    ),
    "history": (
        "city archive, trade route, old treaty, harbour wall, parish register, royal charter, "
        "printing press, river fort",
        "historian, archivist, scholar, chronicler",
    ),
}
ADJECTIVES = _words(
    "careful, patient, new, experienced, tired, curious, local, senior, young, busy, "
    "quiet, cautious"
)
VERBS = _words(
    "reviews, describes, improves, depends on, explains, replaces, measures, protects, "
    "questions, rebuilds, inspects, schedules, simplifies, documents, moves, cleans, "
    "checks, delays, compares, repairs"
)
ADVERBS = _words(
    "Usually, In the spring, After a long week, Every Monday, Without warning, "
    "Once a year, Later that evening, For the first time, In most cases, "
    "Before anything else"
)
PLACES = _words(
    "in every region, before the end of the month, with little effort, "
    "after the last storm, near the main entrance, during the long winter, "
    "without asking anyone, at the start of each shift, in the northern district, "
    "for the second time this year, under a tight deadline, by hand"
)
CONNECTORS = _words("because, although, while, so that, and, but, since, until")
SHORT = _words(
    "This matters., Nobody objected., It worked., The results were mixed., "
    "That was enough., Few people noticed., The numbers speak for themselves."
)
REASONS = _words(
    "the weather changed, the old plan failed, nobody had time to check, "
    "the cost kept rising, the instructions were unclear, a friend asked for help, "
    "the last attempt went well, the rules changed in March"
)


class _Writer:
    def __init__(self, rng: random.Random, topic: str) -> None:
        self.rng = rng
        things, people = TOPICS[topic]
        self.things = [f"the {w}" for w in _words(things)]
        self.people = _words(people)

    def subject(self) -> str:
        r = self.rng
        if r.random() < 0.5:
            return f"The {r.choice(ADJECTIVES)} {r.choice(self.people)}"
        return r.choice(self.things).capitalize()

    def clause(self) -> str:
        r = self.rng
        obj = r.choice(self.things)
        if r.random() < 0.3:
            obj = f"{obj} and {r.choice(self.things)}"
        return f"{self.subject()} {r.choice(VERBS)} {obj}"

    def sentence(self) -> str:
        r = self.rng
        form = r.random()
        if form < 0.08:
            return r.choice(SHORT)
        s = self.clause()
        if r.random() < 0.5:
            s = f"{s} {r.choice(PLACES)}"
        if form < 0.3:
            s = f"{r.choice(ADVERBS)}, {s[0].lower()}{s[1:]}"
        if r.random() < 0.45:
            rest = self.clause()
            s = f"{s} {r.choice(CONNECTORS)} {rest[0].lower()}{rest[1:]}"
        if r.random() < 0.25:
            s = f"{s}, since {r.choice(REASONS)}"
        if r.random() < 0.1:
            return f"Is it true that {s[0].lower()}{s[1:]}?"
        return f"{s}."

    def paragraph(self) -> str:
        n = self.rng.choices(range(1, 9), weights=[3, 4, 5, 5, 4, 3, 2, 1])[0]
        return " ".join(self.sentence() for _ in range(n))


def document(rng: random.Random, i: int) -> dict[str, object]:
    topic = rng.choice(sorted(TOPICS))
    w = _Writer(rng, topic)
    paragraphs = [w.paragraph() for _ in range(rng.randint(1, 12))]
    title = f"Notes on the {rng.choice(_words(TOPICS[topic][0]))} ({topic}, part {i % 17 + 1})"
    return {
        "id": f"doc-{i:06d}",
        "title": title,
        "text": "\n\n".join(paragraphs),
        "metadata": {"topic": topic, "paragraphs": len(paragraphs)},
    }


def write_corpus(path: Path, docs: int, seed: int = 7) -> Path:
    """Write `docs` documents as JSONL to `path`; the same arguments give the same bytes."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(docs):
            f.write(json.dumps(document(rng, i), ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------- chunk texts


class Prepared:
    """The corpus as pgrag cuts it: per document its chunks and the strings it embeds."""

    def __init__(self, path: Path, collection: Any, embedder: Any) -> None:
        from pgrag.ingest.chunking import chunk_text
        from pgrag.ingest.loading import embed_inputs
        from pgrag.ingest.sources import SourceDocument, document_limit_bytes, open_source
        from pgrag.runtime.settings import get_settings

        limit = document_limit_bytes(get_settings().max_document_mb)
        self.docs: list[Any] = []
        self.chunks: list[list[Any]] = []
        self.inputs: list[list[str]] = []
        started = time.perf_counter()
        for item in open_source(path, max_document_bytes=limit):
            if not isinstance(item, SourceDocument):
                raise SystemExit(f"the generated corpus has a bad entry: {item}")
            chunks = chunk_text(
                item.text,
                embedder.tokenizer,
                chunk_size=collection.chunk_size,
                overlap=collection.chunk_overlap,
            )
            self.docs.append(item)
            self.chunks.append(chunks)
            self.inputs.append(embed_inputs(collection, embedder, item.title, chunks))
        self.chunk_seconds = time.perf_counter() - started
        self.texts = [t for inputs in self.inputs for t in inputs]
        self.tokens = embedder.count_tokens(self.texts)  # as the model sees them

    def stats(self) -> dict[str, Any]:
        tokens = np.asarray(self.tokens)
        per_doc = np.asarray([len(c) for c in self.chunks])
        return {
            "documents": len(self.docs),
            "chunks": len(self.texts),
            "chunks_per_document": {
                "min": int(per_doc.min()),
                "mean": round(float(per_doc.mean()), 2),
                "max": int(per_doc.max()),
            },
            "tokens_per_chunk": {  # special tokens and title included
                "min": int(tokens.min()),
                "p10": int(np.percentile(tokens, 10)),
                "median": int(np.median(tokens)),
                "mean": round(float(tokens.mean()), 1),
                "p90": int(np.percentile(tokens, 90)),
                "max": int(tokens.max()),
            },
            "tokens": int(tokens.sum()),
            "chunking_seconds": round(self.chunk_seconds, 3),
        }

    def padded_tokens(self, token_budget: int, max_batch: int, batch_docs: int) -> dict:
        """Tokens the model computes (rows x longest row, per batch) under each batching:
        a noise-free bound on how much faster one batching can be than another."""
        from pgrag.inference.embedding import token_batches

        lengths = np.asarray(self.tokens)

        def padded(batches: list[np.ndarray]) -> int:
            return int(sum(len(b) * int(lengths[b].max()) for b in batches if len(b)))

        def cut(order: np.ndarray) -> list[np.ndarray]:
            return [order[i : i + 32] for i in range(0, len(order), 32)]

        # sentence-transformers sorts the whole call by character length, longest first.
        by_chars = np.argsort([-len(t) for t in self.texts], kind="stable")
        pgrag = 0
        offsets = np.cumsum([0] + [len(c) for c in self.chunks])
        for first in range(0, len(self.docs), batch_docs):
            lo, hi = offsets[first], offsets[min(first + batch_docs, len(self.docs))]
            task = lengths[lo:hi].tolist()
            for b in token_batches(task, token_budget=token_budget, max_batch=max_batch):
                pgrag += len(b) * max(task[i] for i in b)
        real = int(lengths.sum())
        figures = {
            "a_sorted_batch32": padded(cut(by_chars)),
            "pgrag_token_budget_per_task": pgrag,
            "c_arrival_order_batch32": padded(cut(np.arange(len(lengths)))),
        }
        return {"real": real} | {
            k: {"padded": v, "over_real": round(v / real, 4)} for k, v in figures.items()
        }


def _meter(home: Home, workers: dict[str, Worker] | None = None) -> CpuMeter:
    trees: dict[str, int | None] = {w: v.pid for w, v in (workers or {}).items()}
    trees |= {"postgres": home.postmaster_pid, "redis": home.redis_pid}
    return CpuMeter(trees, {"bench": os.getpid()})


# ---------------------------------------------------------------------------- (a), (a')


def raw_encode(
    models: dict[str, Any], texts: list[str], home: Home, rounds: int = 8
) -> dict[str, tuple[dict[str, Any], np.ndarray]]:
    """(a) and (a*): `SentenceTransformer.encode(texts, batch_size=32)` of each model, the
    models warm, taking turns over `rounds` slices of the texts, so that the load of other
    work on the machine falls on each alike."""
    import torch

    for model in models.values():
        model.encode(texts[:64], batch_size=32)  # first-call costs out of the timing
    usage: dict[str, CpuUsage] = {}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in models}
    for rows in np.array_split(np.arange(len(texts)), rounds):
        for name, model in models.items():
            meter = _meter(home).start()
            parts[name].append(model.encode([texts[i] for i in rows], batch_size=32))
            cpu = meter.stop()
            usage[name] = usage[name] + cpu if name in usage else cpu
    return {
        name: (
            {
                "chunks": len(texts),
                "rounds": rounds,
                "seconds": round(usage[name].wall_s, 3),
                "chunks_per_s": round(rate(len(texts), usage[name].wall_s), 2),
                "torch_threads": torch.get_num_threads(),
                "cpu": usage[name].as_dict(),
            },
            np.concatenate(parts[name]).astype(np.float32),
        )
        for name in models
    }


def pgrag_encode(embedder: Any, prep: Prepared, batch_docs: int, home: Home) -> dict[str, Any]:
    """(a'): pgrag's `Embedder.encode`, one call per embed task's documents, in process."""
    embedder.encode(prep.texts[:64])
    meter = _meter(home).start()
    calls = 0
    for first in range(0, len(prep.docs), batch_docs):
        texts = [t for inputs in prep.inputs[first : first + batch_docs] for t in inputs]
        embedder.encode(texts)
        calls += 1
    cpu = meter.stop()
    return {
        "chunks": len(prep.texts),
        "calls": calls,
        "seconds": round(cpu.wall_s, 3),
        "chunks_per_s": round(rate(len(prep.texts), cpu.wall_s), 2),
        "cpu": cpu.as_dict(),
    }


# ---------------------------------------------------------------------------- (b)

JOB_POLL = (
    "SELECT state, source_done, docs_read, docs_done, chunks_done"
    " FROM pgrag.ingest_jobs WHERE id = %s"
)


def wait_job(conn: Any, job_id: int, t0: float, on_indexing: Any, timeout: float) -> dict:
    """Poll the job row every 100 ms; returns when each state was first seen, and progress.

    `indexing` is when the job was first seen past `running` (in `indexing`, or already
    `done` when finalize took less than one poll)."""
    events: dict[str, float] = {}
    progress: list[tuple[float, int, int]] = []
    last_sample = -1.0
    indexing_called = False
    while True:
        state, source_done, docs_read, docs_done, chunks = conn.execute(
            JOB_POLL, (job_id,)
        ).fetchone()
        now = time.perf_counter() - t0
        if state not in events:
            events[state] = now
        if state not in ("queued", "running") and "indexing" not in events:
            # Finalize took less than one poll: its start is bounded by this poll.
            events["indexing"] = now
        if "indexing" in events and not indexing_called:
            indexing_called = True
            on_indexing()
        if source_done and "source_done" not in events:
            events["source_done"] = now
        if chunks and "first_chunks" not in events:
            events["first_chunks"] = now
        if now - last_sample >= 1.0:
            progress.append((round(now, 2), int(docs_done), int(chunks)))
            last_sample = now
            if len(progress) % 15 == 0:
                print(
                    f"  job {job_id}: {now:6.1f}s {state:<9} read {docs_read}"
                    f" embedded {docs_done} chunks {chunks}",
                    file=sys.stderr,
                )
        if state in ("done", "failed", "cancelled"):
            return {"events": events, "progress": progress, "state": state}
        if now > timeout:
            raise TimeoutError(f"job {job_id} still {state} after {timeout:.0f}s")
        time.sleep(0.1)


def start_profiler(worker: Worker, path: Path) -> subprocess.Popen | None:
    """py-spy over a worker tree (raw collapsed stacks), when py-spy is on PATH."""
    binary = shutil.which("py-spy")
    if binary is None:
        print("  --profile: py-spy not found on PATH; no profile taken", file=sys.stderr)
        return None
    return subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(worker.pid),
            "--subprocesses",
            "--rate",
            "20",
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)


def cosine_summary(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Cosine of each row of `a` with the same row of `b`: min and mean."""
    cos = (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6)}


def agreement(collection_id: int, prep: Prepared, vectors: np.ndarray) -> dict[str, Any]:
    """Cosine of each stored pgrag embedding with (a)'s vector of the same chunk string."""
    from pgrag.runtime import db

    index = {}
    row = 0
    for doc, chunks in zip(prep.docs, prep.chunks, strict=True):
        for c in chunks:
            index[(doc.external_id, c.ord)] = row
            row += 1
    cosines = np.full(len(index), np.nan)
    with db.connect() as conn:
        for external_id, ord_, embedding in conn.execute(
            "SELECT d.external_id, c.ord, c.embedding FROM pgrag.chunks c"
            " JOIN pgrag.documents d ON d.id = c.document_id WHERE c.collection_id = %s",
            (collection_id,),
        ):
            i = index.get((external_id, ord_))
            if i is not None:
                v = np.asarray(embedding.to_numpy(), dtype=np.float32)
                cosines[i] = float(v @ vectors[i]) / float(np.linalg.norm(vectors[i]))
    found = ~np.isnan(cosines)
    return {
        "matched_chunks": int(found.sum()),
        "min_cosine": round(float(cosines[found].min()), 6) if found.any() else None,
        "mean_cosine": round(float(cosines[found].mean()), 6) if found.any() else None,
    }


def pgrag_end_to_end(
    home: Home, corpus: Path, prep: Prepared, name: str, profile: Path | None
) -> dict[str, Any]:
    """(b): real workers, submit into the fresh collection `name`, wait for `done`."""
    import psycopg

    from pgrag.ingest import jobs, pipeline
    from pgrag.runtime.services import database_url

    workers = {"ingest_worker": Worker(home, "ingest"), "embed_worker": Worker(home, "embed")}
    sampler = ResourceSampler({k: w.pid for k, w in workers.items()})
    sampler.start()
    result: dict[str, Any] = {}
    profilers: list[subprocess.Popen | None] = []
    try:
        for w in workers.values():
            w.wait_ready()
        # Warm-up: the embed worker loads its model on its first task, as after `pgrag up`;
        # the measured job then runs on warm workers, like (a) on a warm model.
        warm_path = write_corpus(home.path / "warmup.jsonl", 4, seed=1)
        t = time.perf_counter()
        warm = pipeline.submit(warm_path, "warmup", create=True)
        with psycopg.connect(database_url(), autocommit=True) as conn:
            wait_job(conn, warm.id, t, lambda: None, timeout=600)
        result["warmup_job_seconds"] = round(time.perf_counter() - t, 3)
        pool = {k: w.pool_pids() for k, w in workers.items()}
        result["worker_pids"] = {k: [w.pid, *pool[k]] for k, w in workers.items()}

        if profile is not None:
            for k, w in workers.items():
                profilers.append(start_profiler(w, profile.with_name(f"{profile.stem}-{k}.txt")))

        phases: dict[str, Any] = {}
        meter = _meter(home, workers).start()

        def indexing_started() -> None:
            phases["embedding"] = meter.stop()
            meter.start()

        with psycopg.connect(database_url(), autocommit=True) as conn:
            t0 = time.perf_counter()
            job = pipeline.submit(corpus, name)
            submit_s = time.perf_counter() - t0
            seen = wait_job(conn, job.id, t0, indexing_started, timeout=4 * 3600)
        phases["indexing"] = meter.stop()
        for p in profilers:
            stop_profiler(p)
    finally:
        sampler.stop()
        for w in workers.values():
            w.stop()

    row = jobs.get_job(job.id)
    ev = seen["events"]
    total = ev.get("done", float("nan"))
    before_index = ev.get("indexing", float("nan"))
    chunks = int(row.chunks_done)
    db_total = (row.finished_at - row.created_at).total_seconds() if row.finished_at else None
    result |= {
        "job_id": job.id,
        "state": row.state,
        "documents": int(row.docs_done),
        "chunks": chunks,
        "expected_chunks": len(prep.texts),
        "submit_call_seconds": round(submit_s, 3),
        "seconds_total": round(total, 3),
        "seconds_before_indexing": round(before_index, 3),
        "seconds_indexing_state": round(total - before_index, 3),
        "seconds_total_db_clock": round(db_total, 3) if db_total is not None else None,
        "chunks_per_s_total": round(rate(chunks, total), 2),
        "chunks_per_s_excluding_indexing": round(rate(chunks, before_index), 2),
        "events_s": {k: round(v, 3) for k, v in ev.items()},
        "progress_s_docs_chunks": seen["progress"],
        "cpu_embedding_phase": phases["embedding"].as_dict() if "embedding" in phases else None,
        "cpu_indexing_phase": phases["indexing"].as_dict(),
        "memory": sampler.as_dict(),
    }
    if profile is not None:
        result["profiles"] = sorted(str(p) for p in profile.parent.glob(f"{profile.stem}-*.txt"))
    return result


# ---------------------------------------------------------------------------- (c)

NAIVE_TABLE = """
CREATE TABLE public.naive_chunks (
    id          bigserial PRIMARY KEY,
    external_id text NOT NULL,
    ord         integer NOT NULL,
    text        text NOT NULL,
    embedding   vector({dim}) NOT NULL
)
"""
NAIVE_INSERT = (
    "INSERT INTO public.naive_chunks (external_id, ord, text, embedding) VALUES (%s, %s, %s, %s)"
)


def naive_loop(corpus: Path, collection: Any, embedder: Any, home: Home) -> dict[str, Any]:
    """(c): read and chunk in arrival order, `encode` every 32 chunks as they come (batch
    size 32, no sorting across batches), INSERT one row per chunk, commit per document."""
    from pgrag.ingest.chunking import chunk_text
    from pgrag.ingest.loading import embed_inputs
    from pgrag.ingest.sources import SourceDocument, document_limit_bytes, open_source
    from pgrag.runtime import db
    from pgrag.runtime.settings import get_settings

    model = embedder.model
    limit = document_limit_bytes(get_settings().max_document_mb)
    encode_s = 0.0
    insert_s = 0.0
    rows = 0
    with db.connect() as conn:
        conn.execute(NAIVE_TABLE.format(dim=int(collection.dim)))
        conn.commit()
        waiting_docs: list[dict[str, Any]] = []  # arrival order; written once all embedded
        waiting: list[tuple[dict[str, Any], int, str]] = []  # chunks not yet encoded

        def encode_next() -> None:
            nonlocal encode_s, insert_s, rows
            batch = waiting[:32]
            del waiting[:32]
            t = time.perf_counter()
            vectors = model.encode([text for _, _, text in batch], batch_size=32)
            encode_s += time.perf_counter() - t
            for (entry, j, _), v in zip(batch, vectors, strict=True):
                entry["vectors"][j] = v
            t = time.perf_counter()
            while waiting_docs and all(v is not None for v in waiting_docs[0]["vectors"]):
                entry = waiting_docs.pop(0)
                for c, v in zip(entry["chunks"], entry["vectors"], strict=True):
                    conn.execute(NAIVE_INSERT, (entry["id"], c.ord, c.text, v))
                    rows += 1
                conn.commit()
            insert_s += time.perf_counter() - t

        meter = _meter(home).start()
        for item in open_source(corpus, max_document_bytes=limit):
            assert isinstance(item, SourceDocument)
            chunks = chunk_text(
                item.text,
                embedder.tokenizer,
                chunk_size=collection.chunk_size,
                overlap=collection.chunk_overlap,
            )
            inputs = embed_inputs(collection, embedder, item.title, chunks)
            entry = {"id": item.external_id, "chunks": chunks, "vectors": [None] * len(chunks)}
            waiting_docs.append(entry)
            waiting.extend((entry, j, text) for j, text in enumerate(inputs))
            while len(waiting) >= 32:
                encode_next()
        while waiting or waiting_docs:
            encode_next()
        cpu = meter.stop()
    return {
        "chunks": rows,
        "seconds": round(cpu.wall_s, 3),
        "chunks_per_s": round(rate(rows, cpu.wall_s), 2),
        "encode_seconds": round(encode_s, 3),
        "insert_seconds": round(insert_s, 3),
        "inserts_per_s": round(rate(rows, insert_s), 1),
        "cpu": cpu.as_dict(),
    }


# ---------------------------------------------------------------------------- loader parts


def _minimal_documents(conn: Any, collection_id: int, prep: Prepared) -> list[int]:
    """One `pending` documents row per corpus document (what the ingest worker writes)."""
    with conn.cursor().copy(
        "COPY pgrag.documents (collection_id, external_id, title, content_hash, text, status)"
        " FROM STDIN"
    ) as copy:
        for d in prep.docs:
            copy.write_row((collection_id, d.external_id, d.title, b"", d.text, "pending"))
    ids = dict(
        conn.execute(
            "SELECT external_id, id FROM pgrag.documents WHERE collection_id = %s",
            (collection_id,),
        ).fetchall()
    )
    conn.commit()
    return [ids[d.external_id] for d in prep.docs]


def loader_parts(prep: Prepared, vectors: np.ndarray, batch_docs: int) -> dict[str, Any]:
    """COPY alone, `replace_chunks` whole, the status update, the finalize statements and the
    HNSW build alone, on the rows of the corpus with (a)'s vectors."""
    from psycopg.types.json import Jsonb

    from pgrag.ingest.loading import (
        COPY_CHUNKS,
        COPY_TYPES,
        DocumentChunks,
        chunk_lexemes,
        mark_embedded,
        replace_chunks,
    )
    from pgrag.runtime import db
    from pgrag.store import indexing
    from pgrag.store.collections import create_collection

    offsets = np.cumsum([0] + [len(c) for c in prep.chunks])
    batches = [
        range(first, min(first + batch_docs, len(prep.docs)))
        for first in range(0, len(prep.docs), batch_docs)
    ]
    out: dict[str, Any] = {"transactions": len(batches), "rows": len(prep.texts)}

    # COPY alone: the rows replace_chunks writes, in one transaction per embed task.
    copy_coll = create_collection("bench_copy")
    with db.connect() as conn:
        doc_ids = _minimal_documents(conn, copy_coll.id, prep)
        first_id = scalar(
            conn,
            "SELECT setval('pgrag.chunks_id_seq', nextval('pgrag.chunks_id_seq') + %s)",
            (len(prep.texts),),
        ) - len(prep.texts)
        chunk_ids = iter(range(first_id, first_id + len(prep.texts)))
        t = time.perf_counter()
        for batch in batches:
            with conn.cursor().copy(COPY_CHUNKS) as copy:
                copy.set_types(COPY_TYPES)
                for i in batch:
                    meta = Jsonb(prep.docs[i].metadata)
                    for c, v in zip(
                        prep.chunks[i], vectors[offsets[i] : offsets[i + 1]], strict=True
                    ):
                        copy.write_row(
                            (
                                next(chunk_ids),
                                copy_coll.id,
                                doc_ids[i],
                                c.ord,
                                c.text,
                                c.start,
                                c.end,
                                c.token_count,
                                meta,
                                v,
                            )
                        )
            conn.commit()
        copy_s = time.perf_counter() - t
    out["copy_seconds"] = round(copy_s, 3)
    out["copy_rows_per_s"] = round(rate(len(prep.texts), copy_s), 1)

    # replace_chunks whole (DELETE + COPY + lexical block) and the status update, as
    # embed_documents runs them; the lexical analysis (in the worker) timed apart.
    rep_coll = create_collection("bench_replace")
    replace_s = status_s = analyse_s = 0.0
    with db.connect() as conn:
        doc_ids = _minimal_documents(conn, rep_coll.id, prep)
        for batch in batches:
            loads = [
                DocumentChunks(
                    doc_ids[i], prep.docs[i].title, prep.docs[i].metadata, prep.chunks[i]
                )
                for i in batch
            ]
            emb = vectors[offsets[batch.start] : offsets[batch.stop]]
            t = time.perf_counter()
            lexemes = chunk_lexemes(rep_coll, loads)
            t1 = time.perf_counter()
            replace_chunks(conn, rep_coll, loads, emb, lexemes)
            t2 = time.perf_counter()
            mark_embedded(conn, loads)
            conn.commit()
            analyse_s += t1 - t
            replace_s += t2 - t1
            status_s += time.perf_counter() - t2
        postings = scalar(
            conn, "SELECT count(*) FROM pgrag.postings WHERE collection_id = %s", (rep_coll.id,)
        )
    out["replace_chunks_seconds"] = round(replace_s, 3)
    out["replace_chunks_rows_per_s"] = round(rate(len(prep.texts), replace_s), 1)
    out["postings_rows"] = int(postings)
    out["status_update_seconds"] = round(status_s, 3)
    out["lexical_analysis_seconds"] = round(analyse_s, 3)

    # The HNSW build alone, as finalize_job runs it, then its ANALYZE.
    with db.connect(autocommit=True) as conn:
        t = time.perf_counter()
        built = indexing.build_index(conn, copy_coll)
        out["hnsw_build_seconds"] = round(time.perf_counter() - t, 3)
        out["hnsw_built"] = built
        t = time.perf_counter()
        conn.execute("ANALYZE pgrag.chunks")
        out["analyze_seconds"] = round(time.perf_counter() - t, 3)
        out["hnsw_index_mib"] = round(
            scalar(
                conn, "SELECT pg_relation_size(%s::regclass)", (f"pgrag.{copy_coll.index_name}",)
            )
            / 2**20,
            2,
        )
    return out


# ---------------------------------------------------------------------------- report


def _ours(*cpus: dict[str, Any] | None) -> float:
    """CPU seconds spent by the measured side: every named tree but this bench process's
    own polling (in (a), (a') and (c) the bench process is the measured side)."""
    total = 0.0
    for cpu in cpus:
        if cpu:
            total += sum(v for k, v in cpu["cpu_s"].items() if k != "bench")
    return total


def add_cpu_figures(res: dict[str, Any]) -> None:
    """Our CPU seconds and chunks per CPU second for each figure: on a shared machine the
    wall-clock rates move with other users' load, these much less."""
    for key in ("a_raw_encode", "a_backend_encode", "a_pgrag_encode", "c_naive"):
        fig = res[key]
        fig["cpu_seconds_ours"] = round(fig["cpu"]["cpu_s"]["bench"] + _ours(fig["cpu"]), 2)
        fig["other_share"] = fig["cpu"]["other_share_of_machine"]
    b = res["b_pgrag"]
    emb, idx = b["cpu_embedding_phase"], b["cpu_indexing_phase"]
    b["cpu_seconds_ours_total"] = round(_ours(emb, idx), 2)
    b["cpu_seconds_ours_excluding_indexing"] = round(_ours(emb), 2)
    busy = (emb["other_processes_s"] if emb else 0) + idx["other_processes_s"]
    b["other_share"] = round(busy / max(b["seconds_total"] * (os.cpu_count() or 1), 1e-9), 3)


def report(res: dict[str, Any]) -> None:
    a, a_fast, a2, b, c, lp = (
        res["a_raw_encode"],
        res["a_backend_encode"],
        res["a_pgrag_encode"],
        res["b_pgrag"],
        res["c_naive"],
        res["loader"],
    )
    n = res["corpus"]["chunks"]

    def fig(label: str, chunks: int, seconds: float, cpu: float, other: float) -> list[Any]:
        return [
            label,
            chunks,
            seconds,
            round(rate(chunks, seconds), 2),
            cpu,
            round(rate(chunks, cpu), 2),
            f"{other:.0%}",
        ]

    rows = [
        fig(
            f"(a) SentenceTransformer.encode, batch 32, {res['baseline_backend']}",
            n,
            a["seconds"],
            a["cpu_seconds_ours"],
            a["other_share"],
        ),
        fig(
            f"(a*) the same, {res['backend']}",
            n,
            a_fast["seconds"],
            a_fast["cpu_seconds_ours"],
            a_fast["other_share"],
        ),
        fig(
            "(a') pgrag Embedder.encode, per task",
            n,
            a2["seconds"],
            a2["cpu_seconds_ours"],
            a2["other_share"],
        ),
        fig(
            "(b) pgrag end to end, to state done",
            b["chunks"],
            b["seconds_total"],
            b["cpu_seconds_ours_total"],
            b["other_share"],
        ),
        fig(
            "(b) pgrag, excluding state indexing",
            b["chunks"],
            b["seconds_before_indexing"],
            b["cpu_seconds_ours_excluding_indexing"],
            b["other_share"],
        ),
        fig("(c) naive loop", c["chunks"], c["seconds"], c["cpu_seconds_ours"], c["other_share"]),
    ]
    print_table(
        f"ingest bench: {res['corpus']['documents']} documents, {n} chunks,"
        f" {res['corpus']['tokens']:,} tokens, token budget {res['token_budget']}",
        rows,
        ["figure", "chunks", "seconds", "chunks/s", "our CPU-s", "chunks/CPU-s", "others"],
    )
    parts = [
        [
            "(c) encode calls",
            c["chunks"],
            c["encode_seconds"],
            round(rate(c["chunks"], c["encode_seconds"]), 1),
        ],
        ["(c) INSERT + commit", c["chunks"], c["insert_seconds"], c["inserts_per_s"]],
        ["binary COPY alone", lp["rows"], lp["copy_seconds"], lp["copy_rows_per_s"]],
        [
            "replace_chunks (DELETE+COPY+lexical block)",
            lp["rows"],
            lp["replace_chunks_seconds"],
            lp["replace_chunks_rows_per_s"],
        ],
        [
            "status UPDATE after replace_chunks",
            res["corpus"]["documents"],
            lp["status_update_seconds"],
            round(rate(res["corpus"]["documents"], lp["status_update_seconds"]), 1),
        ],
    ]
    print_table("writes", parts, ["step", "rows", "seconds", "rows/s"])
    pad = res["padded_tokens"]
    print_table(
        f"tokens the model computes (padding included); the corpus has {pad['real']:,}",
        [
            [
                "(a) sorted by length, batches of 32",
                pad["a_sorted_batch32"]["padded"],
                pad["a_sorted_batch32"]["over_real"],
            ],
            [
                "(a'), (b) pgrag token budget, per task",
                pad["pgrag_token_budget_per_task"]["padded"],
                pad["pgrag_token_budget_per_task"]["over_real"],
            ],
            [
                "(c) arrival order, batches of 32",
                pad["c_arrival_order_batch32"]["padded"],
                pad["c_arrival_order_batch32"]["over_real"],
            ],
        ],
        ["batching", "tokens", "x real"],
    )
    times = [
        ["(b) time in state 'indexing' (finalize)", b["seconds_indexing_state"]],
        ["HNSW build alone (build_index)", lp["hnsw_build_seconds"]],
        ["lexical analysis (worker)", lp["lexical_analysis_seconds"]],
        ["ANALYZE pgrag.chunks", lp["analyze_seconds"]],
        ["chunking (pgrag chunker, whole corpus)", res["corpus"]["chunking_seconds"]],
        ["(b) submit to first chunks stored", b["events_s"].get("first_chunks")],
        ["(b) submit to source fully read", b["events_s"].get("source_done")],
    ]
    print_table("times", times, ["step", "seconds"])

    r = res["ratios"]
    print_table(
        "ratios",
        [
            [
                "(b) excl. indexing / (a)",
                r["b_excl_over_a"],
                ">= 0.9",
                _ok(r["b_excl_over_a"], 0.9),
            ],
            ["(b) incl. indexing / (a)", r["b_total_over_a"], "", ""],
            ["(b) incl. indexing / (c)", r["b_total_over_c"], ">= 2", _ok(r["b_total_over_c"], 2)],
            ["(b) excl. indexing / (c)", r["b_excl_over_c"], "", ""],
            ["(a') / (a)", r["a_pgrag_over_a"], "", ""],
            [
                "(a*) / (a)",
                r["a_backend_over_a"],
                ">= 2.5",
                _ok(r["a_backend_over_a"], 2.5),
            ],
        ],
        ["ratio", "value", "goal", "met"],
    )
    mem = b["memory"]
    print_table(
        f"peak RSS of the workers from start to the end of (b), MiB (polled every"
        f" {mem['interval_s']} s)",
        [
            [
                k,
                mem[k]["peak_rss_main_mib"],
                mem[k]["peak_rss_child_mib"],
                mem[k]["peak_rss_tree_mib"],
            ]
            for k in ("ingest_worker", "embed_worker")
        ],
        ["worker", "main process", "pool process", "tree"],
    )
    cpu_rows = []
    for label, cpu in [
        ("(a)", a["cpu"]),
        ("(a*)", a_fast["cpu"]),
        ("(a')", a2["cpu"]),
        ("(b) to indexing", b["cpu_embedding_phase"]),
        ("(b) indexing", b["cpu_indexing_phase"]),
        ("(c)", c["cpu"]),
    ]:
        if cpu is None:
            continue
        s = cpu["cpu_s"]
        cpu_rows.append(
            [
                label,
                cpu["wall_s"],
                s.get("bench", 0.0),
                s.get("ingest_worker", ""),
                s.get("embed_worker", ""),
                s.get("postgres", 0.0),
                cpu["other_processes_s"],
                cpu["steal_s"],
            ]
        )
    print_table(
        f"CPU seconds per phase ({os.cpu_count()} cores; 'others' = processes outside this bench)",
        cpu_rows,
        ["phase", "wall", "bench", "ingest w.", "embed w.", "postgres", "others", "steal"],
    )
    ag, af = b["agreement"], a_fast["agreement"]
    print(
        f"\n(b) stored {b['chunks']} chunks (expected {b['expected_chunks']}); cosine of pgrag's"
        f" vectors with (a)'s: min {ag['min_cosine']}, mean {ag['mean_cosine']}"
        f" over {ag['matched_chunks']} chunks"
        f"\n(a*) {res['backend']} vectors against their {res['baseline_backend']} twins (a):"
        f" cosine min {af['min_cosine']}, mean {af['mean_cosine']}"
    )


def _ok(value: float, goal: float) -> str:
    return "yes" if value >= goal else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1000, help="documents in the corpus")
    parser.add_argument("--seed", type=int, default=7, help="corpus seed")
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="pgrag's embed token budget (PGRAG_EMBED_TOKEN_BUDGET_CPU/_GPU); default: settings",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record py-spy profiles of both workers during (b) (perturbs the timings)",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        help="PGRAG_INFERENCE_BACKEND of pgrag's side, (a*), (a') and (b): auto (OpenVINO on a"
        " CPU, torch fp16 on CUDA), torch, openvino, openvino-fp32; (a) and (c) stay torch",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary PGRAG_HOME")
    args = parser.parse_args()
    exit_on_sigterm()

    out = args.out or default_out("ingest")
    env = {"PGRAG_INFERENCE_BACKEND": args.backend}
    if args.budget:
        env |= {
            "PGRAG_EMBED_TOKEN_BUDGET_CPU": str(args.budget),
            "PGRAG_EMBED_TOKEN_BUDGET_GPU": str(args.budget),
        }
    corpus = write_corpus(
        RESULTS / f"corpus-{args.docs}docs-seed{args.seed}.jsonl", args.docs, args.seed
    )

    with pgrag_home(keep=args.keep, env=env) as home:
        from pgrag.inference.embedding import load_embedder
        from pgrag.runtime.settings import get_settings
        from pgrag.store.collections import create_collection

        settings = get_settings()
        collection = create_collection("bench")
        embedder = load_embedder(collection.model, settings.device)  # the backend under test
        baseline = load_embedder(collection.model, settings.device, "torch")
        budget = (
            settings.embed_token_budget_gpu
            if embedder.device.startswith("cuda")
            else settings.embed_token_budget_cpu
        )
        print(
            f"corpus {corpus} ({corpus.stat().st_size / 2**20:.1f} MiB); chunking", file=sys.stderr
        )
        prep = Prepared(corpus, collection, embedder)
        if len(prep.texts) < 3000:
            print(
                f"warning: only {len(prep.texts)} chunks; the issue asks for >= 3000"
                " (raise --docs)",
                file=sys.stderr,
            )
        res: dict[str, Any] = {
            "corpus": {"path": str(corpus), "seed": args.seed, **prep.stats()},
            "padded_tokens": prep.padded_tokens(
                budget, settings.embed_max_batch, settings.ingest_batch_docs
            ),
            "model": collection.model,
            "device": embedder.device,
            "backend": embedder.backend,
            "baseline_backend": baseline.backend,
            "token_budget": budget,
            "chunk_size": collection.chunk_size,
            "chunk_overlap": collection.chunk_overlap,
            "ingest_batch_docs": settings.ingest_batch_docs,
            "postgres": postgres_settings(),
        }
        print(f"(a), (a*) encode {len(prep.texts)} chunks, batch 32", file=sys.stderr)
        encoded = raw_encode(
            {"a_raw_encode": baseline.model, "a_backend_encode": embedder.model}, prep.texts, home
        )
        res["a_raw_encode"], vectors = encoded["a_raw_encode"]
        res["a_backend_encode"], fast = encoded["a_backend_encode"]
        res["a_backend_encode"]["agreement"] = cosine_summary(fast, vectors)
        print("(a') pgrag Embedder.encode", file=sys.stderr)
        res["a_pgrag_encode"] = pgrag_encode(embedder, prep, settings.ingest_batch_docs, home)
        print("(b) pgrag end to end", file=sys.stderr)
        profile = out.with_suffix("") if args.profile else None
        res["b_pgrag"] = pgrag_end_to_end(home, corpus, prep, "bench", profile)
        res["b_pgrag"]["agreement"] = agreement(collection.id, prep, vectors)
        print("(c) naive loop", file=sys.stderr)
        res["c_naive"] = naive_loop(corpus, collection, baseline, home)
        print("loader parts: COPY, replace_chunks, HNSW build", file=sys.stderr)
        res["loader"] = loader_parts(prep, vectors, settings.ingest_batch_docs)

    a, b, c = res["a_raw_encode"], res["b_pgrag"], res["c_naive"]
    res["ratios"] = {
        "b_excl_over_a": round(b["chunks_per_s_excluding_indexing"] / a["chunks_per_s"], 3),
        "b_total_over_a": round(b["chunks_per_s_total"] / a["chunks_per_s"], 3),
        "b_total_over_c": round(b["chunks_per_s_total"] / c["chunks_per_s"], 3),
        "b_excl_over_c": round(b["chunks_per_s_excluding_indexing"] / c["chunks_per_s"], 3),
        "a_pgrag_over_a": round(res["a_pgrag_encode"]["chunks_per_s"] / a["chunks_per_s"], 3),
        "a_backend_over_a": round(res["a_backend_encode"]["chunks_per_s"] / a["chunks_per_s"], 3),
    }
    res["goals"] = {
        "a_backend_ge_2.5a": res["ratios"]["a_backend_over_a"] >= 2.5,
        "b_excl_ge_0.9a": res["ratios"]["b_excl_over_a"] >= 0.9,
        "b_ge_2c": res["ratios"]["b_total_over_c"] >= 2,
    }
    add_cpu_figures(res)
    report(res)
    path = write_json(out, "ingest", res)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
