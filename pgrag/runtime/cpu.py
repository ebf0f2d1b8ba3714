"""The CPU: as Linux describes it, and its cores as one pool for every model process.

`model_name` and `flags` (/proc/cpuinfo) decide the precision the encoders run at
(`pgrag.inference.openvino`) and name every CPU figure the benches print.

`cores(n)` holds n of the cores this process may run on while a model call runs its n
threads. The cores are a machine-wide pool: a lock file per core under the system's temporary
folder, which every pgrag process on the machine takes turns on (`fcntl.flock`, released by
the kernel if the process dies). Two embed workers on one box would otherwise each run as
many threads as it has cores, and the box's cores, twice oversubscribed, would run both
slower than one (docs/cpu.md#threads-that-fit-the-box). Processes pinned to different
cores (taskset, cgroups) hold different files and never wait for each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import IO


@cache
def _fields() -> dict[str, str]:
    """The first processor's fields (empty where /proc/cpuinfo is not)."""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0].splitlines()
        return {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in lines if ":" in ln)}
    return {}


def model_name() -> str:
    return _fields().get("model name", "")


def flags() -> frozenset[str]:
    return frozenset(_fields().get("flags", "").split())


def allowed() -> list[int]:
    """The ids of the cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


class CorePool:
    """The lock files of a set of cores. A holder takes a gate file, then free cores without
    waiting, then (still at the gate) waits for held ones in order: with one taker at a time
    at the gate and every holder releasing without it, no two takers wait on each other."""

    def __init__(self, folder: Path, ids: list[int]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._gate: IO[str] = (folder / "gate").open("a")
        self._cores: list[IO[str]] = [(folder / f"core-{i}").open("a") for i in ids]
        # flock belongs to the open file, which all of a process's threads share: its model
        # calls take turns here first.
        self._local = threading.Lock()

    @contextlib.contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Hold `n` cores (at most all of the pool's) while the block runs."""
        with self._local:
            held = self._take(max(1, min(n, len(self._cores))))
            try:
                yield
            finally:
                _release(held)

    def _take(self, n: int) -> list[IO[str]]:
        held: list[IO[str]] = []
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            for f in self._cores:
                if len(held) < n and _try_lock(f):
                    held.append(f)
            for f in self._cores:
                if len(held) < n and f not in held:
                    fcntl.flock(f, fcntl.LOCK_EX)
                    held.append(f)
        except BaseException:  # interrupted while waiting: give back what it took
            _release(held)
            raise
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)
        return held


def _release(held: list[IO[str]]) -> None:
    for f in held:
        fcntl.flock(f, fcntl.LOCK_UN)


def _try_lock(f: IO[str]) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@cache
def _pool() -> CorePool:
    # One folder per user: the files of another user could not be opened for writing.
    return CorePool(Path(tempfile.gettempdir()) / f"pgrag-cores-{os.getuid()}", allowed())


# A forked child opens the files again: locks on the parent's open files would be shared.
os.register_at_fork(after_in_child=_pool.cache_clear)


def cores(n: int) -> contextlib.AbstractContextManager[None]:
    """Hold `n` of this machine's cores, shared with every pgrag process on it, while a model
    call runs its `n` threads."""
    return _pool().hold(n)
