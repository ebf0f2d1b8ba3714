"""A simulated batching LLM server: OpenAI-compatible, streaming, any number of requests at once.

    python bench/llm_server.py --port 8011 --ttft-s 0.5 --tokens 40 --pace-s 0.02

`POST /v1/chat/completions` streams an answer of `--tokens` pieces, the first after
`--ttft-s` seconds and the others `--pace-s` apart, as `chat.completion.chunk` events up to
`data: [DONE]`, however many requests are in flight: a server that batches (vLLM, TGI)
keeps each stream's pace under load, so a client's concurrency is all that is measured.
The answer cites passage [1]. A request whose messages hold FAIL is answered HTTP 500, one
that holds STALL is never answered (for tests of one question's failure among many).
`GET /v1/models` lists one model; `GET /stats` says how many
requests are in flight now, the most there were at once, and how many were served
(`POST /stats/reset` starts counting again). `SimulatedLLM` runs it for a bench or a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ServerProcess, free_port

MODEL = "simulated"


def create_app(ttft_s: float, tokens: int, pace_s: float) -> FastAPI:
    app = FastAPI(title="simulated batching LLM server")
    stats = {"in_flight": 0, "peak": 0, "served": 0}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

    @app.get("/stats")
    async def get_stats() -> dict[str, int]:
        return stats

    @app.post("/stats/reset")
    async def reset() -> dict[str, int]:
        stats.update(peak=stats["in_flight"], served=0)
        return stats

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> StreamingResponse | JSONResponse:
        prompt = json.dumps((await request.json()).get("messages"))
        if "FAIL" in prompt:
            error = {"message": "the model failed", "type": "server_error"}
            return JSONResponse({"error": error}, status_code=500)
        if "STALL" in prompt:
            await asyncio.sleep(3600)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:12]}"

        def chunk(delta: dict[str, str], finish: str | None = None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            data = {"id": completion_id, "object": "chat.completion.chunk", "model": MODEL}
            return f"data: {json.dumps({**data, 'choices': [choice]})}\n\n"

        async def events() -> AsyncIterator[str]:
            stats["in_flight"] += 1
            stats["peak"] = max(stats["peak"], stats["in_flight"])
            try:
                yield chunk({"role": "assistant"})
                await asyncio.sleep(ttft_s)
                for i in range(tokens):
                    if i:
                        await asyncio.sleep(pace_s)
                    piece = " [1]." if i == tokens - 1 else f" w{i}"
                    yield chunk({"content": piece if i else "Answer"})
                yield chunk({}, "stop")
                yield "data: [DONE]\n\n"
                stats["served"] += 1
            finally:
                stats["in_flight"] -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


class SimulatedLLM(ServerProcess):
    """This server in a process of its own on a free loopback port; `url` ends in /v1."""

    def __init__(
        self, ttft_s: float = 0.5, tokens: int = 40, pace_s: float = 0.02, port: int = 0
    ) -> None:
        port = port or free_port()
        self.answer_s = ttft_s + (tokens - 1) * pace_s
        argv = [sys.executable, __file__, "--port", str(port), "--ttft-s", str(ttft_s)]
        argv += ["--tokens", str(tokens), "--pace-s", str(pace_s)]
        super().__init__(argv, port, "simulated LLM server", timeout_s=60)

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.base}/stats", timeout=5).json())

    def reset(self) -> None:
        httpx.post(f"{self.base}/stats/reset", timeout=5)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--ttft-s", type=float, default=0.5, help="time to the first token")
    parser.add_argument("--tokens", type=int, default=40, help="pieces of each answer")
    parser.add_argument("--pace-s", type=float, default=0.02, help="seconds between pieces")
    args = parser.parse_args()
    app = create_app(args.ttft_s, args.tokens, args.pace_s)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
