"""Answer generation: pluggable backends behind one small interface.

    gen = get_generator("extractive")   # or "local", "openai"
    for text in gen.stream(Request(question, passages, deadline=time.monotonic() + 60)):
        ...

- `extractive`: no LLM; the question's best-matching sentences of the top passages, each
  followed by its [n]. Always works.
- `local`: a small instruction model run in-process with transformers (by default the best
  packaged one installed: Qwen2.5-Coder-1.5B/0.5B-Instruct, else SmolLM2-135M-Instruct).
- `openai`: any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, Ollama, llama.cpp
  server, TGI), streamed.

A backend yields pieces of the answer as they are produced; the answer cites passages as
[n], n being the passage's 1-based position in `Request.passages`. Failures a user can fix
(unreachable endpoint, missing model) raise `GeneratorError` with a clear message, and a
backend that passes `Request.deadline` raises `GeneratorTimeout`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Protocol

import numpy as np

GENERATORS = ("extractive", "local", "openai")


class GeneratorError(RuntimeError):
    """Generation failed for a reason the message explains (a setting, an endpoint)."""


class GeneratorTimeout(GeneratorError):
    """Generation did not finish before its deadline."""


class Source(Protocol):
    """What a generator reads of a passage (`pgrag.query.retrieval.Passage` is one)."""

    @property
    def title(self) -> str | None: ...
    @property
    def external_id(self) -> str: ...
    @property
    def text(self) -> str: ...


@dataclass
class Request:
    question: str
    passages: Sequence[Source]  # best first; passage i is cited as [i + 1]
    deadline: float  # time.monotonic() by which generation must have finished
    # The collection's embedder (texts -> unit vectors), for backends that score text.
    embed: Callable[[Sequence[str]], np.ndarray] | None = None
    question_vector: np.ndarray | None = None


class Generator(Protocol):
    name: str

    def stream(self, request: Request) -> Iterator[str]:
        """Pieces of the answer, in order, as they are produced."""
        ...


def get_generator(name: str) -> Generator:
    """The backend called `name`, created once per process (models stay loaded)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}: use one of {', '.join(GENERATORS)}")
    return _create(name)


@cache
def _create(name: str) -> Generator:
    if name == "extractive":
        from pgrag.query.generation.extractive import ExtractiveGenerator

        return ExtractiveGenerator()
    if name == "local":
        from pgrag.query.generation.local import LocalGenerator

        return LocalGenerator()
    from pgrag.query.generation.openai import OpenAIGenerator

    return OpenAIGenerator()
