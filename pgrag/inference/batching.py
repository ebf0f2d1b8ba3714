"""Dynamic batching across threads: one model call for the inputs that arrive together.

A query worker answers many questions at once, one thread each. Each thread hands its input
(a question to embed, the sentences of its extractive answer, its passages to rerank) to
the model's `Batcher` and waits; whenever the model is free, the thread of the oldest input
waiting runs one call over every input waiting then, up to `max_items`, and the others wake
with their results. Under load the inputs that gather while one call runs go in the next,
so the batch grows with the load and a single caller never waits for a batch to fill (as
inference servers batch requests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass
class _Slot(Generic[In, Out]):
    item: In
    wake: threading.Event = field(default_factory=threading.Event)  # done, or to lead
    done: bool = False
    result: Out | None = None
    error: BaseException | None = None
    batch: int = 0  # how many inputs went in the call that served it


class Batcher(Generic[In, Out]):
    """`batcher(item)` is `fn([item])[0]`, computed in one call of `fn` with the items that
    other threads submit meanwhile. `fn` runs one call at a time, in the thread of the
    oldest waiting item; when it returns, the oldest item still waiting leads the next
    call (only its thread wakes, not every waiting one)."""

    def __init__(self, fn: Callable[[list[In]], Sequence[Out]], max_items: int) -> None:
        self.fn = fn
        self.max_items = max(1, max_items)
        self._lock = threading.Lock()
        self._waiting: list[_Slot[In, Out]] = []
        self._running = False  # a thread leads a call now, or has been woken to

    def __call__(self, item: In) -> tuple[Out, int]:
        """`item`'s result, and the number of items in the call that computed it."""
        slot: _Slot[In, Out] = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
            lead, self._running = not self._running, True
        if not lead:
            slot.wake.wait()  # served, or handed the lead
        if not slot.done:  # leading: this slot is the oldest waiting, so in this call
            with self._lock:
                batch = self._waiting[: self.max_items]
                del self._waiting[: len(batch)]
            try:
                self._run(batch)
            finally:
                with self._lock:
                    if self._waiting:
                        self._waiting[0].wake.set()
                    else:
                        self._running = False
        if slot.error is not None:
            raise slot.error
        return slot.result, slot.batch  # type: ignore[return-value]

    def _run(self, batch: list[_Slot[In, Out]]) -> None:
        try:
            results = self.fn([s.item for s in batch])
            for s, result in zip(batch, results, strict=True):
                s.result = result
        except BaseException as e:  # every caller of the batch gets the error
            for s in batch:
                s.error = e
        for s in batch:
            s.batch, s.done = len(batch), True
            s.wake.set()
