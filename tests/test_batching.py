"""The batcher that merges the model calls of a query worker's threads."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pgrag.inference.batching import Batcher


def test_inputs_that_arrive_while_a_call_runs_go_together_in_the_next() -> None:
    calls: list[list[int]] = []
    first_running = threading.Event()
    release = threading.Event()

    def square(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            first_running.set()
            release.wait(10)
        return [i * i for i in items]

    batcher = Batcher(square, max_items=5)
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(batcher, 0)
        first_running.wait(10)
        rest = [pool.submit(batcher, i) for i in range(1, 9)]
        while len(batcher._waiting) < 8:  # all eight wait for the first call to end
            time.sleep(0.01)
        release.set()
        results = [first.result(), *(f.result() for f in rest)]
    assert [r for r, _ in results] == [i * i for i in range(9)]
    assert calls == [[0], [1, 2, 3, 4, 5], [6, 7, 8]]  # oldest first, at most 5 a call
    assert [n for _, n in results] == [1, 5, 5, 5, 5, 5, 3, 3, 3]


def test_every_caller_of_a_failed_call_gets_its_error_and_the_next_call_runs() -> None:
    def fail_on_negative(items: list[int]) -> list[int]:
        if any(i < 0 for i in items):
            raise ValueError("negative")
        return items

    batcher = Batcher(fail_on_negative, max_items=8)
    with pytest.raises(ValueError, match="negative"):
        batcher(-1)
    assert batcher(3) == (3, 1)
