"""One settings object, read from `PGRAG_*` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, get_type_hints

from pgrag.runtime.errors import UserError

DEFAULT_EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_RERANK_MODEL = "cross-encoder/ms-marco-MiniLM-L-12-v2"


class SettingError(UserError, ValueError):
    """A `PGRAG_*` variable whose value cannot be used."""


@dataclass(frozen=True)
class Settings:
    # Services. Empty URLs mean "use the embedded servers under `home`".
    database_url: str = ""
    redis_url: str = ""
    home: Path = Path(".pgrag")
    # Models converted and exported on first use (checked by their sums on every load);
    # empty: <home>/models. Homes that share one convert each model once.
    model_dir: str = ""

    # Embedding and chunking defaults for new collections.
    embed_model: str = DEFAULT_EMBED_MODEL
    chunk_size: int = 200  # tokens of the embedding model's tokenizer
    chunk_overlap: int = 32
    device: str = ""  # "" picks cuda when available, else cpu
    # Runtime and precision of the models (pgrag.inference.weights.pick_backend):
    # auto (torch fp16 on CUDA, OpenVINO on a CPU), torch, openvino, or a backend by its
    # full name (torch-fp32, openvino-int8, openvino-fp32, ...). A collection keeps the one
    # it was embedded with; an explicit setting that differs is refused for it.
    inference_backend: str = "auto"
    # Tokens per embedding batch (padded length x rows). GPUs take far more than CPUs.
    embed_token_budget_cpu: int = 4096
    embed_token_budget_gpu: int = 131072
    embed_max_batch: int = 512
    # On a CPU, the model calls of every pgrag process on the machine take turns on its
    # cores, each holding as many as it runs threads (pgrag.runtime.cpu.cores). Off: each
    # process runs its threads whenever it likes (docs/cpu.md#threads measures both).
    share_cores: bool = True

    # Ingestion.
    ingest_batch_docs: int = 128  # documents per embed task
    # Chunks per block of the BM25 index (pgrag/store/lexical.py). Whole blocks are built
    # while a job loads, the rest when it ends.
    lexical_block_chunks: int = 4096
    max_document_mb: float = 20.0

    # Query answering.
    rerank_model: str = DEFAULT_RERANK_MODEL
    # Fused passages the cross-encoder rescores per search; 0: the device's default
    # (pgrag.inference.rerank.DEFAULT_DEPTH, measured in docs/quality.md#rerank).
    rerank_top_n: int = 0
    # A query worker reranks the passages of up to this many questions in one batch.
    rerank_max_questions: int = 16
    # The generator reads the reranked passages whose cross-encoder score is within this
    # much of the best one's (logits; docs/quality.md#the-passages-a-generator-reads); 0:
    # all k of them.
    context_margin: float = 4.0
    generator: str = "extractive"  # extractive | local | openai
    # Questions one query worker answers at once (threads sharing its models, which embed
    # and rerank the questions in flight together). Sized for a batching LLM server.
    query_concurrency: int = 64
    # The local generator's model: a hub id or local path of a causal LM. Empty: the best
    # packaged model installed (Qwen2.5-Coder-1.5B-Instruct, then -0.5B-Instruct, optional
    # packages; else SmolLM2-135M-Instruct, installed by `make install`; see
    # pgrag/inference/gguf.py and docs/quality.md).
    local_model: str = ""
    # Context window to fill (prompt + answer), in tokens; capped by the local model's own.
    max_context_tokens: int = 2048
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_api_key: str = ""
    openai_model: str = ""
    generate_timeout_s: float = 120.0
    max_new_tokens: int = 256
    max_question_chars: int = 4000
    answer_ttl_s: int = 3600

    # HNSW searches: the least hnsw.ef_search of a search (raised to 2k for larger k). Higher
    # finds more of the exact neighbours, more slowly: measure with pgrag.recall_audit().
    hnsw_ef_search: int = 64

    # HNSW builds: the graph must fit in this memory or the build slows down several times
    # (about 2 GB for a million 384-d vectors). Parallel builds take it as shared memory.
    index_build_memory: str = "4GB"

    # The embedded PostgreSQL's shared_buffers (its page cache). Empty: a quarter of the
    # machine's memory, at most 8GB, as PostgreSQL's own guidance suggests; its default of
    # 128MB left searches of a million chunks reading most pages from the kernel again
    # (bench/pipeline.py at 1M: lexical p50 63 ms, 50 ms with a quarter of 24 GB). Not used
    # with PGRAG_DATABASE_URL.
    pg_shared_buffers: str = ""

    # Recovery (pgrag/runtime/work.py): a running task renews its lease every lease_s / 3 seconds;
    # work whose lease is older than lease_s, or queued for lost_after_s with its message in
    # no broker queue and held by no worker (two sweeps in a row), is sent again by the
    # sweeper, which runs every sweep_s seconds.
    lease_s: float = 15.0
    lost_after_s: float = 15.0
    sweep_s: float = 5.0
    # The name of this deployment's broker in the ledger: a sweeper sends again only the work
    # of its own deployment. Empty: the broker URL without credentials, which is right unless
    # one broker is reached under several URLs.
    deployment: str = ""

    # HTTP API (docs/security.md). Every route but /healthz needs a key (`pgrag keys`).
    # Server folders that POST /v1/ingest may read, os.pathsep-separated; empty: none (upload
    # documents instead). The CLI on the server reads any local path its user can.
    source_roots: str = ""
    upload_dir: str = ""  # uploaded documents; empty: <home>/uploads
    max_request_mb: float = 256.0  # an upload request, all files together
    max_upload_file_mb: float = 128.0  # one uploaded file (a JSONL or Parquet file may hold many)
    max_json_kb: int = 1024  # any other request body
    rate_ask_per_min: int = 60  # questions per key a minute (0: unlimited)
    rate_ingest_per_min: int = 10  # ingest jobs per key a minute (0: unlimited)
    # The client and the CLI talk to this API instead of PostgreSQL and Redis when it is set.
    api_url: str = ""
    api_key: str = ""

    # Celery. The visibility timeout is a last backstop: the sweeper recovers work sooner.
    visibility_timeout_s: int = 3600

    @property
    def state_dir(self) -> Path:
        return self.home.resolve()

    @property
    def models(self) -> Path:
        return Path(self.model_dir).resolve() if self.model_dir else self.state_dir / "models"

    @property
    def uploads(self) -> Path:
        return Path(self.upload_dir).resolve() if self.upload_dir else self.state_dir / "uploads"

    @property
    def source_root_paths(self) -> list[Path]:
        return [Path(p).resolve() for p in self.source_roots.split(os.pathsep) if p.strip()]


def _parse(value: str, kind: Any) -> Any:
    if kind is bool:
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if kind in (int, float, Path):
        return kind(value)
    return value


@cache
def get_settings() -> Settings:
    """Settings from the environment, read once per process."""
    hints = get_type_hints(Settings)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = os.environ.get(f"PGRAG_{f.name.upper()}")
        if raw is not None:
            try:
                values[f.name] = _parse(raw, hints[f.name])
            except ValueError as e:
                raise SettingError(f"PGRAG_{f.name.upper()}={raw!r}: {e}") from None
    return Settings(**values)
