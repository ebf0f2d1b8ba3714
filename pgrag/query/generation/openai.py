"""Generation through any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp server,
TGI, OpenAI itself), streamed: `POST {base_url}/chat/completions` with `stream: true`, read
as server-sent events of `chat.completion.chunk` objects until `data: [DONE]`.

Settings: PGRAG_OPENAI_BASE_URL (ending in /v1), PGRAG_OPENAI_MODEL (empty: the first model
the endpoint lists at /models), PGRAG_OPENAI_API_KEY (sent as a bearer token when set),
PGRAG_GENERATE_TIMEOUT_S (for the whole answer) and PGRAG_MAX_CONTEXT_TOKENS (the remote
model's context to fill; its tokenizer is unknown here, so passages are counted with a
conservative estimate).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from pgrag.query.generation import GeneratorError, GeneratorTimeout, Request
from pgrag.query.generation.prompt import build_prompt
from pgrag.runtime.settings import get_settings

CONNECT_TIMEOUT_S = 10.0


class OpenAIGenerator:
    name = "openai"

    def __init__(
        self, base_url: str | None = None, model: str | None = None, api_key: str | None = None
    ) -> None:
        settings = get_settings()
        self.base_url = (base_url or settings.openai_base_url).rstrip("/")
        self._model = model if model is not None else settings.openai_model
        key = settings.openai_api_key if api_key is None else api_key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # One client for all of a query worker's threads: a stream each, all at once.
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=settings.query_concurrency
        )
        self.client = httpx.Client(headers=headers, limits=limits)

    def stream(self, request: Request) -> Iterator[str]:
        settings = get_settings()
        prompt = build_prompt(
            request.question,
            request.passages,
            budget=settings.max_context_tokens - settings.max_new_tokens,
        )
        yield from self.stream_messages(prompt.messages, settings.max_new_tokens, request.deadline)

    def stream_messages(
        self, messages: list[dict[str, str]], max_tokens: int, deadline: float
    ) -> Iterator[str]:
        url = f"{self.base_url}/chat/completions"
        try:
            body = {
                "model": self.model(deadline),
                "messages": messages,
                "stream": True,
                "max_tokens": max_tokens,
                "temperature": 0,
            }
            with self.client.stream("POST", url, json=body, timeout=_timeout(deadline)) as r:
                _check(r, url)
                for line in r.iter_lines():
                    if time.monotonic() > deadline:
                        raise GeneratorTimeout(self._timeout_message(url))
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, "event:" lines
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    yield from _pieces(data, url)
        except httpx.TimeoutException:
            raise GeneratorTimeout(self._timeout_message(url)) from None
        except httpx.ConnectError as e:
            raise GeneratorError(
                f"cannot reach the LLM endpoint {url} ({e or 'connection failed'}): "
                "is the server running? (PGRAG_OPENAI_BASE_URL)"
            ) from None
        except httpx.HTTPError as e:
            raise GeneratorError(f"the LLM endpoint {url} failed: {type(e).__name__}: {e}") from e

    def model(self, deadline: float) -> str:
        """The configured model, else the first one the endpoint lists."""
        if not self._model:
            url = f"{self.base_url}/models"
            r = self.client.get(url, timeout=_timeout(deadline))
            _check(r, url)
            models = r.json().get("data") or []
            if not models:
                raise GeneratorError(f"{url} lists no model: set PGRAG_OPENAI_MODEL")
            self._model = str(models[0]["id"])
        return self._model

    def _timeout_message(self, url: str) -> str:
        return (
            f"the LLM endpoint {url} did not finish within "
            f"{get_settings().generate_timeout_s:g} s (PGRAG_GENERATE_TIMEOUT_S)"
        )


def _timeout(deadline: float) -> httpx.Timeout:
    left = max(deadline - time.monotonic(), 0.001)
    return httpx.Timeout(left, connect=min(CONNECT_TIMEOUT_S, left))


def _check(r: httpx.Response, url: str) -> None:
    if r.status_code < 400:
        return
    r.read()
    detail: Any = r.text[:500]
    try:
        error = r.json().get("error")
        detail = error.get("message", error) if isinstance(error, dict) else error or detail
    except (ValueError, AttributeError):
        pass
    raise GeneratorError(f"the LLM endpoint {url} answered HTTP {r.status_code}: {detail}")


def _pieces(data: str, url: str) -> Iterator[str]:
    try:
        chunk = json.loads(data)
    except ValueError:
        raise GeneratorError(
            f"the LLM endpoint {url} sent a line that is not JSON: {data[:200]!r}"
        ) from None
    if chunk.get("error"):
        raise GeneratorError(f"the LLM endpoint {url} reported an error: {chunk['error']}")
    for choice in chunk.get("choices") or []:
        piece = (choice.get("delta") or {}).get("content")
        if piece:
            yield piece
