"""Helpers shared by the benchmarks in `bench/`.

- `pgrag_home()`: a fresh PGRAG_HOME in a temporary folder with the embedded PostgreSQL +
  pgvector and Redis started and migrated, exactly as `pgrag up` starts them.
- `Worker`: a real Celery worker on one queue, with the argv of `pgrag up`
  (`pgrag.runtime.processes.worker`); `services()`: a fresh home with workers, or the
  configured one.
- `ResourceSampler`: polls the process trees of some workers for their peak RSS.
- `CpuMeter`: CPU seconds spent by each of several process trees, by the whole machine and
  by the hypervisor (steal) over a phase, so a figure taken on a noisy machine can be judged.
- `ServerProcess`: a small HTTP server (a simulated or a test LLM) in a process of its own.
- `print_table()` and `write_json()`: every bench prints a table and writes its figures as JSON.

The benches run from the repository root: `python bench/<name>.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# What `make` exports for every command: no hub access, and no Rust tokenizer threads
# fighting the torch threads (a forked worker would switch them off anyway).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the root
    sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------------- services


@dataclass
class Home:
    """A temporary PGRAG_HOME with running services."""

    path: Path
    env: dict[str, str] = field(default_factory=dict)  # what workers need to find them

    @property
    def postmaster_pid(self) -> int | None:
        pidfile = self.path / "postgres" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().split()[0])
        return None

    @property
    def redis_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.path / "redis" / "redis.pid").read_text().strip())
        return None


def exit_on_sigterm() -> None:
    """Turn SIGTERM (from `timeout`, say) into SystemExit, so that `pgrag_home` still
    stops the servers it started and removes its folder."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextlib.contextmanager
def pgrag_home(keep: bool = False, env: dict[str, str] | None = None) -> Iterator[Home]:
    """Embedded PostgreSQL + Redis under a fresh temporary PGRAG_HOME, migrated to the latest
    schema; stopped (and the folder removed unless `keep`) on exit.

    `env` holds extra PGRAG_* settings for this process and the workers started in it.
    """
    from pgrag.runtime import db, services
    from pgrag.runtime.settings import get_settings

    path = Path(tempfile.mkdtemp(prefix="pgrag-bench-"))
    extra = {"PGRAG_HOME": str(path), **(env or {})}
    saved = {k: os.environ.get(k) for k in [*extra, "PGRAG_DATABASE_URL", "PGRAG_REDIS_URL"]}
    os.environ.update(extra)
    for var in ("PGRAG_DATABASE_URL", "PGRAG_REDIS_URL"):
        os.environ.pop(var, None)
    get_settings.cache_clear()
    settings = get_settings()
    try:
        services.start_postgres(settings)
        services.start_redis(settings)
        db.migrate()
        yield Home(path, extra)
    finally:
        with contextlib.suppress(Exception):
            services.stop_redis(settings)
        with contextlib.suppress(Exception):
            services.stop_postgres(settings)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()
        if keep:
            print(f"kept PGRAG_HOME {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def services(configured: bool, queues: Sequence[str]) -> Iterator[Home | None]:
    """The configured services as they are (`configured`: `pgrag up` runs them; yields
    None), or fresh embedded ones under a temporary PGRAG_HOME with one worker per queue
    (yields the home, where more workers can be started)."""
    if configured:
        yield None
        return
    with pgrag_home() as home:
        workers = [Worker(home, queue) for queue in queues]
        try:
            for w in workers:
                w.wait_ready()
            yield home
        finally:
            for w in workers:
                w.stop()


def scalar(conn: Any, query: str, params: Any = None) -> Any:
    """The first column of the first row of a query (which must return a row)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise LookupError(f"no row from {query!r}")
    return row[0]


def postgres_settings() -> dict[str, str]:
    """The server settings that matter for bulk loads and index builds."""
    from pgrag.runtime import db

    names = [
        "server_version",
        "shared_buffers",
        "maintenance_work_mem",
        "max_parallel_maintenance_workers",
        "max_wal_size",
        "synchronous_commit",
        "wal_level",
    ]
    with db.connect() as conn:
        found = {n: str(scalar(conn, f"SHOW {n}")) for n in names}
        found["pgvector"] = str(
            scalar(
                conn,
                "SELECT coalesce(max(extversion), 'missing') FROM pg_extension"
                " WHERE extname = 'vector'",
            )
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_serving(
    proc: subprocess.Popen[bytes], url: str, what: str, timeout_s: float
) -> None:
    """Until `GET url` answers; AssertionError when `proc` (the server, called `what`) exits
    or `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"the {what} exited"
        assert time.monotonic() < deadline, f"the {what} did not start"
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)


class ServerProcess:
    """`argv` (a server on loopback `port`) in a process group of its own, up once `GET url +
    /models` answers; `url` is `http://127.0.0.1:<port>/v1`."""

    def __init__(self, argv: Sequence[str], port: int, what: str, timeout_s: float) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/v1"
        self.proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True)
        wait_until_serving(self.proc, f"{self.url}/models", what, timeout_s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Worker:
    """A real `celery worker` process on one queue with `concurrency` pool processes,
    started with the argv `pgrag up` uses (with `program` in place of `python -m celery`);
    `name` (default: the queue) names its node, for several workers on one queue."""

    def __init__(
        self,
        home: Home,
        queue: str,
        concurrency: int = 1,
        program: list[str] | None = None,
        pool: str | None = None,
        env: dict[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        from pgrag.runtime import processes

        self.name = queue
        self.concurrency = concurrency
        self.log = home.path / f"worker-{name or queue}-c{concurrency}.log"
        argv = processes.worker(queue, concurrency, name, pool=pool).argv
        self.threads = argv[argv.index("-P") + 1] == "threads"
        if program:  # in place of `python -m celery`
            argv = [*program, *argv[3:]]
        # The log is appended to by every worker of this queue: this one's lines start here.
        self.log_start = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **home.env, **(env or {})},
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 900) -> None:
        """Until the worker consumes and, on a model queue, every pool process has loaded
        the model (which a timed run must not include; in a fresh PGRAG_HOME that includes
        exporting it, minutes for the int8 export of a CPU without native bf16)."""
        from pgrag.workers.app import MODEL_QUEUES, WARM

        # Each pool process loads the model; a query worker's threads share its main one's.
        warm = self.concurrency if self.name in MODEL_QUEUES else 0
        if self.threads:  # they share the main process's models
            warm = 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log.read_text()[-3000:]}")
            with open(self.log, "rb") as log:
                log.seek(self.log_start)
                text = log.read()
                if b"ready." in text and text.count(WARM.encode()) >= warm:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} not ready: {self.log.read_text()[-3000:]}")

    def pool_pids(self) -> list[int]:
        with contextlib.suppress(psutil.Error):
            return [p.pid for p in psutil.Process(self.pid).children(recursive=True)]
        return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# ---------------------------------------------------------------------------- measuring


def tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree, exited-and-reaped descendants included
    (they are counted in their parent's children_* times)."""
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


@dataclass
class CpuUsage:
    wall_s: float
    trees_s: dict[str, float]  # CPU seconds of each named process tree
    machine_busy_s: float  # CPU seconds of every process on the machine
    steal_s: float  # CPU seconds the hypervisor gave to other guests

    @property
    def other_s(self) -> float:
        """CPU seconds of processes outside the named trees (other users of the machine)."""
        return max(0.0, self.machine_busy_s - sum(self.trees_s.values()))

    def __add__(self, other: CpuUsage) -> CpuUsage:
        """Two measured spans together (interleaved phases)."""
        trees = {k: self.trees_s.get(k, 0.0) + other.trees_s.get(k, 0.0) for k in self.trees_s}
        return CpuUsage(
            self.wall_s + other.wall_s,
            trees,
            self.machine_busy_s + other.machine_busy_s,
            self.steal_s + other.steal_s,
        )

    def as_dict(self) -> dict[str, Any]:
        cores = os.cpu_count() or 1
        return {
            "wall_s": round(self.wall_s, 3),
            "cpu_s": {k: round(v, 2) for k, v in self.trees_s.items()},
            "machine_busy_s": round(self.machine_busy_s, 2),
            "other_processes_s": round(self.other_s, 2),
            "steal_s": round(self.steal_s, 2),
            "cores": cores,
            "other_share_of_machine": round(self.other_s / max(self.wall_s * cores, 1e-9), 3),
        }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process alone (its children left out)."""
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return 0.0


class CpuMeter:
    """CPU seconds of named process trees (and of single processes, their children left
    out) and of the whole machine between `start()` and `stop()`."""

    def __init__(
        self, trees: dict[str, int | None], processes: dict[str, int] | None = None
    ) -> None:
        self.trees = {k: v for k, v in trees.items() if v}
        self.processes = processes or {}

    def _read(self) -> tuple[float, dict[str, float], float, float]:
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        steal = getattr(machine, "steal", 0.0)
        busy = sum(machine) - idle - steal - getattr(machine, "guest", 0.0)
        busy -= getattr(machine, "guest_nice", 0.0)
        trees = {k: tree_cpu_seconds(pid) for k, pid in self.trees.items()}
        trees |= {k: process_cpu_seconds(pid) for k, pid in self.processes.items()}
        return time.perf_counter(), trees, busy, steal

    def start(self) -> CpuMeter:
        self._start = self._read()
        return self

    def stop(self) -> CpuUsage:
        t1, trees1, busy1, steal1 = self._read()
        t0, trees0, busy0, steal0 = self._start
        return CpuUsage(
            t1 - t0,
            {k: trees1[k] - trees0.get(k, 0.0) for k in trees1},
            busy1 - busy0,
            steal1 - steal0,
        )


class ResourceSampler(threading.Thread):
    """Polls process trees every `interval` seconds and keeps, per tree, the peak of the
    summed RSS, the peak RSS of its root process (a Celery worker's main process) and the
    peak RSS of any one descendant (a pool process). Tree membership is refreshed every
    `refresh` seconds, so that the polling itself stays cheap."""

    def __init__(self, trees: dict[str, int], interval: float = 0.25, refresh: float = 2.0):
        super().__init__(daemon=True)
        self.trees = trees
        self.interval = interval
        self.refresh = refresh
        self.peak_tree: dict[str, int] = dict.fromkeys(trees, 0)
        self.peak_root: dict[str, int] = dict.fromkeys(trees, 0)
        self.peak_child: dict[str, int] = dict.fromkeys(trees, 0)
        self.samples = 0
        self._members: dict[str, list[psutil.Process]] = {}
        self._refreshed = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)
        self.sample()

    def sample(self) -> None:
        if time.monotonic() - self._refreshed >= self.refresh:
            self._members = {name: tree(pid) for name, pid in self.trees.items()}
            self._refreshed = time.monotonic()
        for name, procs in self._members.items():
            total = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    rss = p.memory_info().rss
                    total += rss
                    if p.pid == self.trees[name]:
                        self.peak_root[name] = max(self.peak_root[name], rss)
                    else:
                        self.peak_child[name] = max(self.peak_child[name], rss)
            self.peak_tree[name] = max(self.peak_tree[name], total)
        self.samples += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def as_dict(self) -> dict[str, Any]:
        mib = 1024 * 1024
        return {
            name: {
                "peak_rss_tree_mib": round(self.peak_tree[name] / mib, 1),
                "peak_rss_main_mib": round(self.peak_root[name] / mib, 1),
                "peak_rss_child_mib": round(self.peak_child[name] / mib, 1),
            }
            for name in self.trees
        } | {"samples": self.samples, "interval_s": self.interval}


# ---------------------------------------------------------------------------- reporting


def machine_info() -> dict[str, Any]:
    import torch

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        **cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit + ("-dirty" if dirty else ""),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def cpu_model() -> dict[str, Any]:
    """The CPU's model name and which of the instruction sets that decide the models' speed
    it has (AVX2, VNNI, bf16, AMX, AVX-512)."""
    from pgrag.runtime import cpu

    wanted = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    flags = cpu.flags()
    return {"cpu_model": cpu.model_name(), "cpu_flags": [f for f in wanted if f in flags]}


def print_table(title: str, rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    """A plain-text table: left-aligned first column, right-aligned numbers."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return "" if v is None else str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if i == 0 or not _numeric(v) else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    print(f"\n{title}")
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in text:
        print(line(r))


def _numeric(v: str) -> bool:
    return v.replace(",", "").replace(".", "", 1).replace("x", "").lstrip("-").isdigit()


def default_out(bench: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return RESULTS / f"{bench}-{stamp}.json"


def write_json(path: Path, bench: str, results: dict[str, Any]) -> Path:
    """Write `results` with the machine's description; returns the path written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "bench": bench,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "machine": machine_info(),
        **results,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")
