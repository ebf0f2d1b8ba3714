"""OpenVINO: the CPU runtime of the encoders (embedder and cross-encoder).

A sentence-transformers model (a `SentenceTransformer` or a `CrossEncoder`) is converted
once from its loaded weights into OpenVINO IR (`openvino.convert_model`, traced on a small
example batch) and saved under `<PGRAG_MODEL_DIR>/openvino/<name>-<output>-<key>/`, with
the SHA-256 of each file in `SHA256SUMS` beside them. A later load checks those sums and
rebuilds a cache that does not match them (a truncated or corrupt file is never compiled).
The key hashes the weights themselves, the output and the OpenVINO version, so new weights
or a new OpenVINO get a new export. Nothing is downloaded.

The model then keeps its tokenizer and its pre- and post-processing (sorting, pooling in
the exported graph, activation), and only its forward pass runs in OpenVINO.

Precision: on a CPU with native bfloat16 (AMX or AVX512-BF16) OpenVINO computes in bf16,
its own default there; on a CPU with int8 dot products (VNNI, AMX) the model runs calibrated
int8 (`pgrag.inference.quantization`, a second export made from this one), or fp32 where its
int8 export does not agree with fp32 closely enough; elsewhere (AVX2 alone) fp32, as fast
there. Measured on a 2-core Xeon with AMX (all-MiniLM-L6-v2, chunks of 100-170 words): bf16
about 3.5x torch fp32, cosine to the fp32 vectors >= 0.99997; int8 dynamic quantization
(onnxruntime) kept a cosine of only 0.91-0.995, so it is not offered. See docs/cpu.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Collection, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

from pgrag.inference.weights import file_sha256
from pgrag.runtime import cpu
from pgrag.runtime.settings import get_settings

log = logging.getLogger(__name__)

SUMS = "SHA256SUMS"
# Precisions a model may be compiled at, by the name a collection records, and the hint
# OpenVINO gets: an int8 model (its matrix products quantized in the graph) computes the
# rest in fp32, on every CPU alike.
PRECISIONS = {"bf16": "bf16", "fp32": "f32", "int8": "f32"}
_EXAMPLE = ["A short example sentence.", "Another, slightly longer example sentence for tracing."]


@cache
def _core() -> ov.Core:
    return ov.Core()


# Instructions that multiply int8 in one step. Without them (AVX2 alone) OpenVINO's int8
# products are no faster than fp32: measured on an AVX2 AMD EPYC, int8 encoded at 1.18x
# torch fp32 where fp32 ran at 1.54x (docs/cpu.md).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def precision_for(capabilities: Collection[str], flags: Collection[str]) -> str:
    """bf16 where OpenVINO computes it natively (its capabilities), int8 where the CPU's
    flags have int8 dot products (VNNI, AMX), else fp32."""
    if "BF16" in capabilities:
        return "bf16"
    return "int8" if INT8_DOT_FLAGS.intersection(flags) else "fp32"


def best_precision() -> str:
    """The precision `auto` runs the encoders at on this CPU (`precision_for`)."""
    return precision_for(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"), cpu.flags())


class _Traced(torch.nn.Module):
    """The model's forward pass on positional tensors (what the tracer feeds), returning one
    output of its feature dict."""

    def __init__(self, model: torch.nn.Module, names: list[str], output: str) -> None:
        super().__init__()
        self.model, self.names, self.output = model, names, output

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, tensors, strict=True)))[self.output]


def _example_features(model: Any) -> dict[str, torch.Tensor]:
    is_pairs = hasattr(model, "activation_fn")  # a CrossEncoder scores pairs of texts
    batch = [(_EXAMPLE[0], _EXAMPLE[1]), (_EXAMPLE[1], _EXAMPLE[0])] if is_pairs else _EXAMPLE
    features = model.preprocess(batch)
    return {k: v for k, v in features.items() if isinstance(v, torch.Tensor)}


def _fingerprint(model: torch.nn.Module) -> str:
    """A digest of the model's weights (names, shapes and values): about 0.1 s for a small
    BERT, and right whatever folder or hub cache the weights were read from."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def model_label(name: str) -> str:
    """A model called `name` (a hub id or a path) in the name of a folder: its last two
    parts, anything but letters, digits and `_.-` turned into `--`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "--", "/".join(Path(name).parts[-2:]))


def cache_dir(name: str, kind: str, fingerprint: str) -> Path:
    """Where the IR of a model called `name` (a hub id or a path) is kept: one folder per
    kind of export, weights (`fingerprint`) and OpenVINO version."""
    key = hashlib.sha256(f"{fingerprint} {kind} {ov.__version__}".encode()).hexdigest()[:16]
    return get_settings().models / "openvino" / f"{model_label(name)}-{kind}-{key}"


def _intact(folder: Path) -> bool:
    """Whether every file listed in the folder's SHA256SUMS is there with that checksum."""
    try:
        sums = dict(line.split("  ", 1)[::-1] for line in (folder / SUMS).read_text().splitlines())
        return bool(sums) and all(file_sha256(folder / name) == sha for name, sha in sums.items())
    except (OSError, ValueError):
        return False


_exporting = threading.Lock()


def cached(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, a folder that `build(folder)` fills with files (in subfolders too),
    checked against its SHA256SUMS; built again (atomically, with new sums) when it is
    missing or a file does not match."""
    with _exporting:
        if _intact(target):
            return target
        if target.exists():
            log.warning("rebuilding %s: a file does not match its checksum", target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            with _root_logger_kept():
                build(tmp)
            files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
            (tmp / SUMS).write_text("".join(f"{file_sha256(tmp / f)}  {f}\n" for f in files))
            shutil.rmtree(target, ignore_errors=True)  # a corrupt copy, if any
            # Another process may have won the race: then its copy stays.
            with contextlib.suppress(OSError):
                tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _root_logger_kept() -> Iterator[None]:
    """Restores the root logger's level, handlers and filters: `openvino.convert_model` sets
    it to ERROR (and may add its own handler), which hid every later warning of the process."""
    root = logging.getLogger()
    level, handlers, filters = root.level, list(root.handlers), list(root.filters)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers, root.filters = handlers, filters


def compile_model(path: Path, precision: str) -> ov.CompiledModel:
    """`path` compiled for this CPU at `precision` (a key of PRECISIONS), with this process's
    share of the cores (`pgrag.inference.weights.share_cpu_threads`)."""
    return _core().compile_model(
        path,
        "CPU",
        {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            # OpenVINO pins its threads to the first cores by default: two processes of one
            # thread each then ran both on core 0 while core 1 idled (docs/cpu.md, threads).
            "ENABLE_CPU_PINNING": False,
        },
    )


def compiled_precision(compiled: ov.CompiledModel) -> str:
    """The precision a compiled model computes at: "bf16" or "fp32"."""
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    return "bf16" if "bf16" in hint or "bfloat16" in hint else "fp32"


def _export(model: Any, output: str, folder: Path) -> None:
    """Convert `model`'s forward pass, returning `output`, into `folder`/model.xml."""
    features = _example_features(model)
    names = list(features)
    # The tracer warns of the Python branches it freezes: they hold for any batch here
    # (padding and pooling do not depend on the values traced).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        converted = ov.convert_model(
            _Traced(model, names, output), example_input=tuple(features.values())
        )
    for port, name in zip(converted.inputs, names, strict=True):
        port.get_tensor().set_names({name})
    # fp32 weights on disk: the precision is chosen when the model is compiled.
    ov.save_model(converted, folder / "model.xml", compress_to_fp16=False)


def ir_path(model: Any, name: str, output: str) -> Path:
    """The checked IR of `model` (called `name`), exported when it is missing or does not
    match its checksums."""
    target = cache_dir(name, output, _fingerprint(model))
    return cached(target, lambda folder: _export(model, output, folder)) / "model.xml"


def use_openvino(model: Any, name: str, output: str, precision: str) -> str:
    """Run `model`'s forward pass in OpenVINO from now on; returns the precision it runs at
    (fp32 for int8 asked of a model whose int8 export misses the quality bar).

    `output` is the key of the model's feature dict that callers read ("sentence_embedding"
    for a SentenceTransformer, "scores" for a CrossEncoder); only it is computed.
    """
    path = ir_path(model, name, output)
    if precision == "int8":
        from pgrag.inference.quantization import int8_ir, meets_bar

        int8 = int8_ir(model, name, output, path)
        path, precision = (int8, "int8") if meets_bar(int8) else (path, "fp32")
    compiled = compile_model(path, precision)
    names = [port.get_any_name() for port in compiled.inputs]

    def forward(features: dict[str, Any], **_: Any) -> dict[str, torch.Tensor]:
        # One infer request per call: callers in several threads never share one.
        request = compiled.create_infer_request()
        request.infer({n: np.ascontiguousarray(features[n].numpy()) for n in names})
        return {output: torch.from_numpy(request.get_output_tensor(0).data.copy())}

    model.forward = forward  # the model's own pre- and post-processing stay in use
    return precision if precision == "int8" else compiled_precision(compiled)
