"""A small OpenAI-compatible chat server backed by the local model, for tests and demos.

    python -m tests.openai_server --port 8001

`POST /v1/chat/completions` (streamed or not) answers with real tokens of the local
generator's model (`pgrag.query.generation.local`, greedy), so the `openai` backend is tested
against a real server and a real model. `GET /v1/models` lists one model. A message that
contains STALL makes the server wait `--stall-s` seconds before its first token, to test
timeouts; with `--api-key`, other keys get HTTP 401. `OpenAIServer` runs it for a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from bench.common import ServerProcess, free_port
from pgrag.query.generation.local import LocalGenerator

MODEL = "smollm2-135m-instruct"


class ChatRequest(BaseModel):
    model: str = MODEL
    messages: list[dict[str, str]]
    stream: bool = False
    max_tokens: int = 128


def create_app(api_key: str = "", stall_s: float = 600.0) -> FastAPI:
    app = FastAPI(title="local OpenAI-compatible server")
    generator = LocalGenerator()
    generator.load()  # before serving: a first load may convert the GGUF file (20 s or more)

    def refused(authorization: str | None) -> JSONResponse | None:
        """OpenAI's answer to a wrong key, or None when the key is right."""
        if not api_key or authorization == f"Bearer {api_key}":
            return None
        error = {"message": "invalid API key", "type": "invalid_request_error"}
        return JSONResponse({"error": error}, status_code=401)

    @app.get("/v1/models", response_model=None)
    def models(authorization: str | None = Header(None)) -> JSONResponse | dict[str, Any]:
        if denied := refused(authorization):
            return denied
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    @app.post("/v1/chat/completions", response_model=None)
    def chat(
        body: ChatRequest, authorization: str | None = Header(None)
    ) -> JSONResponse | StreamingResponse | dict[str, Any]:
        if denied := refused(authorization):
            return denied
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"

        def pieces() -> Iterator[str]:
            if any("STALL" in m.get("content", "") for m in body.messages):
                time.sleep(stall_s)
            deadline = time.monotonic() + 600
            yield from generator.stream_messages(body.messages, body.max_tokens, deadline)

        if not body.stream:
            text = "".join(pieces())
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return {"id": completion_id, "object": "chat.completion", "choices": [choice]}

        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "model": body.model,
                "choices": [choice],
            }
            return f"data: {json.dumps(data)}\n\n"

        def events() -> Iterator[str]:
            yield chunk({"role": "assistant"})
            for piece in pieces():
                yield chunk({"content": piece})
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


# ---------------------------------------------------------------------------- for tests


class OpenAIServer(ServerProcess):
    """`tests/openai_server.py` in a process of its own, on a loopback port."""

    def __init__(self, port: int | None = None, *args: str) -> None:
        port = port or free_port()
        argv = [sys.executable, "-m", "tests.openai_server", "--port", str(port), *args]
        # The model loads first.
        super().__init__(argv, port, "OpenAI-compatible server", timeout_s=300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--api-key", default="")
    parser.add_argument("--stall-s", type=float, default=600.0)
    args = parser.parse_args()
    app = create_app(args.api_key, args.stall_s)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
