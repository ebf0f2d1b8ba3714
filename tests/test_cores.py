"""The machine's cores as one pool for every model process (pgrag.runtime.cpu): real
processes hold cores while this one asks for them."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pgrag.runtime import cpu
from pgrag.runtime.cpu import CorePool

# Holds `n` cores of a two-core pool, says so, and keeps them until told to let go.
HOLDER = """
import sys, time
from pathlib import Path
from pgrag.runtime import cpu
from pgrag.runtime.cpu import CorePool
folder, n = Path(sys.argv[1]), int(sys.argv[2])
with CorePool(folder, [0, 1]).hold(n):
    (folder / "held").touch()
    while not (folder / "release").exists():
        time.sleep(0.01)
"""


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


@pytest.fixture
def holder(tmp_path: Path):
    """Starts a process holding n of the pool's cores under tmp_path."""
    started: list[subprocess.Popen[bytes]] = []

    def start(n: int) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), str(n)])
        started.append(process)
        wait_for(tmp_path / "held")
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def in_thread(pool: CorePool, n: int) -> threading.Event:
    """Set once this process holds `n` of the pool's cores (held for a moment)."""
    got = threading.Event()

    def take() -> None:
        with pool.hold(n):
            got.set()

    threading.Thread(target=take, daemon=True).start()
    return got


def test_cores_are_shared_and_never_oversubscribed(tmp_path: Path, holder) -> None:
    other = holder(1)  # another process runs a one-thread model call
    pool = CorePool(tmp_path, [0, 1])

    assert in_thread(pool, 1).wait(10), "the second core was free, yet the call waited"

    whole = in_thread(pool, 2)  # a call of two threads needs the other process's core too
    assert not whole.wait(1.0), "two cores were held while another process held one"
    (tmp_path / "release").touch()
    assert whole.wait(10), "the cores were not handed over once released"
    assert other.wait(10) == 0


def test_a_killed_holder_frees_its_cores(tmp_path: Path, holder) -> None:
    other = holder(2)
    pool = CorePool(tmp_path, [0, 1])
    waiting = in_thread(pool, 2)
    assert not waiting.wait(0.5)

    other.send_signal(signal.SIGKILL)  # a worker killed in the middle of a model call
    other.wait()
    assert waiting.wait(10), "the cores of a killed process stayed held"


def test_a_call_asks_for_at_most_the_pool(tmp_path: Path) -> None:
    # Two pools over the same files, as two processes have them (flock goes by open file).
    pool, other = CorePool(tmp_path, [0, 1]), CorePool(tmp_path, [0, 1])
    with pool.hold(16):  # more threads than cores: every core, and no wait for ones never there
        waiting = in_thread(other, 1)
        assert not waiting.wait(0.5)
    assert waiting.wait(10)


def test_pinned_processes_hold_different_cores(tmp_path: Path, holder) -> None:
    holder(2)  # holds cores 0 and 1
    pinned = CorePool(tmp_path, [2, 3])  # a process pinned to cores 2 and 3 (taskset)
    assert in_thread(pinned, 2).wait(10)


def _take_one_core(got: multiprocessing.Queue) -> None:
    got.put(in_thread(cpu._pool(), 1).wait(1.0))  # while the parent holds every core
    got.put(in_thread(cpu._pool(), 1).wait(30))  # once it has let go


def test_a_forked_process_takes_turns_with_its_parent() -> None:
    """A prefork pool process is forked from its worker: it must not share the parent's
    locks (flock goes by open file, which a fork shares)."""
    cores = len(cpu.allowed())
    got: multiprocessing.Queue = multiprocessing.Queue()
    with cpu.cores(cores):
        child = multiprocessing.get_context("fork").Process(target=_take_one_core, args=(got,))
        child.start()
        assert got.get(timeout=30) is False, "the child took a core its parent held"
    assert got.get(timeout=60) is True
    child.join(30)
