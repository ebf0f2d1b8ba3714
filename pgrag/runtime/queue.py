"""Queue machinery: the Celery app configuration and `enqueue`, by task name.

The task bodies live in `workers/tasks.py`; code that only submits work (the CLI, the API)
sends tasks by name and never imports the workers.
"""

from __future__ import annotations

import json
import time
import uuid
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from celery import Celery

from pgrag.runtime.services import redis_url
from pgrag.runtime.settings import get_settings

INGEST_SOURCE = "pgrag.ingest_source"
EMBED_DOCUMENTS = "pgrag.embed_documents"
FINALIZE_JOB = "pgrag.finalize_job"
INDEX_BLOCK = "pgrag.index_block"
ANSWER_QUESTION = "pgrag.answer_question"

# Reading sources and building indexes is CPU work; embedding and answering want the GPU.
QUEUES = {
    INGEST_SOURCE: "ingest",
    FINALIZE_JOB: "ingest",
    INDEX_BLOCK: "ingest",
    EMBED_DOCUMENTS: "embed",
    ANSWER_QUESTION: "query",
}


def make_celery() -> Celery:
    settings = get_settings()
    broker = redis_url(settings)
    app = Celery("pgrag", broker=broker)
    app.conf.update(
        task_routes={name: {"queue": queue} for name, queue in QUEUES.items()},
        task_default_queue="ingest",
        # A task is acknowledged only once it has finished, and requeued if its worker dies:
        # every task is idempotent, so a redelivery neither loses nor duplicates rows.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for tasks of dead workers every 10 s (kombu's default is every 100 s).
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    return app


@cache
def _client() -> Celery:
    return make_celery()


def deployment() -> str:
    """This deployment's name in the ledger (`pgrag.work.broker`): PGRAG_DEPLOYMENT, or the
    broker's URL without its credentials."""
    name = get_settings().deployment
    if name:
        return name
    url = urlsplit(redis_url())
    return f"{url.scheme}://{url.hostname}:{url.port or 6379}{url.path or '/0'}"


# A message's task id names its work: `work-<id>-<random>`. Celery keeps the id when it
# retries a task, so a retry waiting for its countdown is still known as that work's.
WORK_ID_PREFIX = "work-"


def enqueue(task: str, *args: Any, work_id: int) -> None:
    """Send `task` with its arguments and its row in `pgrag.work` (see `pgrag.work.send`)."""
    _client().send_task(
        task,
        args=args,
        kwargs={"work_id": work_id},
        queue=QUEUES[task],
        task_id=f"{WORK_ID_PREFIX}{work_id}-{uuid.uuid4().hex[:12]}",
    )


# kombu's Redis transport keeps a queue as a list per priority step: the name, then the name
# with "\x06\x16" and the step (its default steps are 0, 3, 6 and 9).
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def queue_length(name: str) -> int:
    """Messages waiting in a broker queue (not those delivered and not yet acknowledged)."""
    with _client().connection_for_write() as conn:
        client = conn.default_channel.client
        return sum(int(client.llen(name + suffix)) for suffix in _PRIORITY_SUFFIXES)


def held_work(delivered_within_s: float) -> set[int]:
    """Work whose message a worker holds: delivered to it within the last
    `delivered_within_s` seconds and not yet acknowledged (kombu keeps such messages in the
    `unacked` hash, their delivery times in `unacked_index`). A message held for longer
    without its work being claimed belongs to a worker that died before starting it."""
    with _client().connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        since = time.time() - delivered_within_s
        tags = client.zrangebyscore(channel.unacked_index_key, since, "+inf")
        raws = client.hmget(channel.unacked_key, tags) if tags else []
    held = set()
    for raw in raws:
        if raw is None:  # acknowledged meanwhile
            continue
        task_id = str(json.loads(raw)[0].get("headers", {}).get("id", ""))
        if task_id.startswith(WORK_ID_PREFIX):
            held.add(int(task_id[len(WORK_ID_PREFIX) :].split("-", 1)[0]))
    return held
