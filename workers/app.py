"""The Celery application the workers run; its configuration lives in `pgrag.runtime.queue`.

A query worker (`-P threads`, `pgrag.runtime.processes.worker`) loads its models in its main
process before it consumes anything, and its threads share them; the pool processes of the
other workers each load the default embedder after the fork. Every worker registers itself
in `pgrag.workers` and sweeps the ledger for lost work (`pgrag.runtime.work`).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery.signals import celeryd_after_setup, worker_process_init, worker_ready, worker_shutdown

from pgrag.runtime.queue import make_celery

# The tokenizer runs in one thread beside the model call it feeds (the next batch, while the
# model computes this one); its own pool of a thread per core would run on the cores that
# the model call holds (docs/cpu.md#threads-that-fit-the-box).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = make_celery()
app.conf.include = ["pgrag.workers.tasks"]

# Queues whose tasks embed text: their processes load the default model up front, and each
# logs WARM when it has (the benches and tests wait for these lines before they time anything).
MODEL_QUEUES = {"embed", "query"}
# What their tasks import (torch and the models' code): once, in the main process before the
# pool forks, so that its processes share it. A worker on other queues never imports it.
MODEL_MODULES = ["pgrag.ingest.loading", "pgrag.query.answering"]
WARM = "pool process warm"
THREADS = "celery.concurrency.thread"

log = logging.getLogger(__name__)
_node: dict[str, str] = {}  # this worker's node name and pool
_stopping = threading.Event()


def _queues() -> set[str]:
    return set(os.environ.get("PGRAG_WORKER_QUEUES", "").split(","))


@celeryd_after_setup.connect
def _set_up(sender: str, instance: Any, **_: Any) -> None:
    """In the main process, before the pool starts and before the worker consumes."""
    from pgrag.runtime import registry, work

    queues = ",".join(instance.app.amqp.queues.consume_from)
    threads = instance.pool_cls.__module__ == THREADS
    # The pool processes inherit these.
    os.environ["PGRAG_WORKER_QUEUES"] = queues
    os.environ["PGRAG_WORKER_CONCURRENCY"] = "1" if threads else str(instance.concurrency)
    pool = "threads" if threads else "prefork"
    _node.update(name=sender, pool=pool)
    if MODEL_QUEUES & _queues():
        for module in MODEL_MODULES:
            importlib.import_module(module)
    _record(registry.register, sender, work.owner(), queues, pool, instance.concurrency)
    if threads:  # the tasks run in this process: it is ready once its models are
        started = time.perf_counter()
        loaded = _warm_up()
        _record(registry.ready, sender, ", ".join(loaded), time.perf_counter() - started)


def _record(update: Callable[..., None], *args: Any) -> None:
    """Update `pgrag.workers`; PostgreSQL away costs the worker its line in `pgrag status`,
    not its start."""
    try:
        update(*args)
    except Exception as e:
        log.warning("pgrag.workers not updated: %s", e)


@worker_process_init.connect
def _warm_pool_process(**_: Any) -> None:
    """Load the default embedder once per pool process, after the fork, before any task."""
    _warm_up()


def _warm_up() -> list[str]:
    if not MODEL_QUEUES & _queues():
        return []
    from pgrag.inference.weights import pick_device, share_cpu_threads
    from pgrag.runtime.settings import get_settings

    started = time.perf_counter()
    settings = get_settings()
    # Before the models load: OpenVINO takes its thread count when it compiles a model.
    if pick_device(settings.device) == "cpu":
        share_cpu_threads(int(os.environ.get("PGRAG_WORKER_CONCURRENCY", "1")))
    if "query" in _queues():
        from pgrag.query.answering import warm_up

        loaded = warm_up()
    else:
        from pgrag.inference.embedding import load_embedder

        load_embedder(settings.embed_model, settings.device)
        loaded = [f"embedder {settings.embed_model}"]
    log.info("%s: %s loaded in %.1f s", WARM, ", ".join(loaded), time.perf_counter() - started)
    return loaded


@worker_ready.connect
def _start_tending(**_: Any) -> None:
    """Every worker's main process says it is alive and sweeps for lost work
    (`pgrag.work`); PostgreSQL lets one sweeper act at a time."""
    from pgrag.runtime import registry

    name = _node["name"]
    if _node["pool"] == "prefork":  # consuming; its pool processes load their models
        _record(registry.ready, name)
    threading.Thread(target=_tend, args=(name,), daemon=True).start()


def _tend(name: str) -> None:
    from pgrag.runtime import registry, work
    from pgrag.runtime.settings import get_settings

    sweeper = work.Sweeper()
    while not _stopping.wait(get_settings().sweep_s):
        try:
            registry.seen(name)
            sweeper.sweep()
        except Exception as e:  # PostgreSQL or Redis away: try again at the next tick
            log.warning("sweep failed: %s", e)


@worker_shutdown.connect
def _stop(**_: Any) -> None:
    from pgrag.runtime import registry, work

    _stopping.set()
    _record(registry.unregister, _node["name"], work.owner())  # else the row just stops being seen
