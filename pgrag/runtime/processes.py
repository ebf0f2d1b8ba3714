"""Background worker processes started by `pgrag up`: one Celery worker per queue, and the API.

Each runs in its own session with a pid file and a log under `<home>/run/`, so `pgrag down`
from any shell can stop it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pgrag.runtime.settings import Settings, get_settings


@dataclass(frozen=True)
class Process:
    name: str
    argv: list[str]


def worker(
    queue: str, concurrency: int | None = None, name: str | None = None, pool: str | None = None
) -> Process:
    """A Celery worker consuming `queue` (or several, comma-separated); `name` (default: the
    queue) names its node and pid file.

    A query worker runs its questions in threads, up to PGRAG_QUERY_CONCURRENCY at once: they
    wait on I/O (the LLM server, PostgreSQL, Redis) and share one copy of each model. Other
    workers run `concurrency` (default 1) pool processes, each with its own model. `pool`
    overrides that choice (a bench compares a one-process prefork query worker).
    """
    name = name or queue
    if queue == "query":
        concurrency = concurrency or get_settings().query_concurrency
    pool = pool or ("threads" if queue == "query" else "prefork")
    concurrency = concurrency or 1
    return Process(
        f"worker-{name}",
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "pgrag.workers.app",
            "worker",
            "-Q",
            queue,
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            f"{name}@%h",
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ],
    )


def api(port: int) -> Process:
    return Process(
        "api",
        [
            sys.executable,
            "-m",
            "uvicorn",
            "pgrag.api.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
    )


def default_processes(settings: Settings, api_port: int | None) -> list[Process]:
    procs = [worker("ingest"), worker("embed"), worker("query")]
    if api_port:
        procs.append(api(api_port))
    return procs


def _run_dir(settings: Settings) -> Path:
    path = settings.state_dir / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running(settings: Settings) -> dict[str, int]:
    """Names and pids of the processes started by `start` that are still alive."""
    found = {}
    for pidfile in sorted(_run_dir(settings).glob("*.pid")):
        pid = int(pidfile.read_text())
        if _alive(pid):
            found[pidfile.stem] = pid
        else:
            pidfile.unlink()
    return found


def start(settings: Settings, procs: list[Process], env: dict[str, str]) -> dict[str, int]:
    """Start the processes not already running; returns name -> pid of those started."""
    run = _run_dir(settings)
    alive = running(settings)
    started = {}
    for proc in procs:
        if proc.name in alive:
            continue
        with open(run / f"{proc.name}.log", "ab") as log:
            child = subprocess.Popen(
                proc.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,
            )
        (run / f"{proc.name}.pid").write_text(str(child.pid))
        started[proc.name] = child.pid
    return started


def stop(settings: Settings, timeout: float = 20.0) -> list[str]:
    """Stop every running process: a warm shutdown first, then SIGKILL after `timeout`."""
    procs = running(settings)
    for pid in procs.values():
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in procs.values()):
        time.sleep(0.1)
    for pid in procs.values():
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    for name in procs:
        (_run_dir(settings) / f"{name}.pid").unlink(missing_ok=True)
    return list(procs)
