"""The runtimes of a cross-encoder: padded features in, one logit per pair out.

Two kinds of model folder:

- an **ONNX cross-encoder**: `model.onnx` with its tokenizer files (`tokenizer.json`,
  `tokenizer_config.json`), as the packaged ms-marco-MiniLM-L-12-v2 ships (int8 weights,
  activations quantized on the fly). ONNX Runtime runs it where it is installed (`make
  install` adds it; on a GPU, `onnxruntime-gpu` brings its CUDA provider, which runs the
  model with the CPU provider taking the operators it has no CUDA kernel for); otherwise,
  or with `PGRAG_INFERENCE_BACKEND=openvino`, OpenVINO reads the ONNX file on the CPU. On
  a 2-core AMD EPYC (AVX512-VNNI) ONNX Runtime scored pairs 2-3 times as fast as OpenVINO
  (`bench/rerank_speed.py`, docs/quality.md#rerank);
- a **sentence-transformers CrossEncoder** (a folder with `config.json`, or a hub id): torch
  (fp16 on CUDA), or on a CPU its forward pass exported to OpenVINO
  (`pgrag.inference.openvino`), as the embedder.

Either way the caller (`pgrag.inference.rerank`) tokenizes, batches and pads; a runtime
only computes. Every runtime here may be called from several threads at once.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
Features = dict[str, np.ndarray]


def is_onnx_model(path: str) -> bool:
    return (Path(path) / ONNX_FILE).is_file()


def onnx_runtime(backend_setting: str) -> str:
    """The runtime of an ONNX cross-encoder: "openvino" when the backend setting names it or
    ONNX Runtime is not installed, else "onnxruntime"."""
    if backend_setting.strip().startswith("openvino"):
        return "openvino"
    return "onnxruntime" if importlib.util.find_spec("onnxruntime") else "openvino"


class Model:
    """A loaded cross-encoder: its tokenizer and its forward pass (`logits`)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        forward: Callable[[Features], np.ndarray],
        runtime: str,
    ) -> None:
        self.tokenizer = tokenizer
        self._forward = forward
        self.runtime = runtime  # what computes it, e.g. "onnxruntime-cpu", "openvino-bf16"

    def logits(self, features: Features) -> np.ndarray:
        """One float32 logit per row of the padded int64 `features`."""
        return np.asarray(self._forward(features), dtype=np.float32).reshape(-1)


def load_onnx(path: str, device: str, runtime: str) -> Model:
    """An ONNX cross-encoder folder on `device`, run by `runtime` ("onnxruntime" or
    "openvino")."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    onnx = Path(path) / ONNX_FILE
    if runtime == "openvino":
        forward, name = _openvino(onnx), "openvino-cpu"
    else:
        forward, name = _onnxruntime(onnx, device)
    return Model(tokenizer, forward, name)


def _onnxruntime(onnx: Path, device: str) -> tuple[Callable[[Features], np.ndarray], str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # this process's share of cores
    providers: list[Any] = ["CPUExecutionProvider"]
    where = "cpu"
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.partition(":")[2] or 0)
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
            where = "cuda"
        else:
            log.warning(
                "ONNX Runtime has no CUDA provider here (pip install onnxruntime-gpu): "
                "the reranker runs on the CPU"
            )
    session = ort.InferenceSession(str(onnx), options, providers=providers)
    names = [i.name for i in session.get_inputs()]

    def forward(features: Features) -> np.ndarray:
        return session.run(None, {n: features[n] for n in names})[0]

    return forward, f"onnxruntime-{where}"


def _openvino(onnx: Path) -> Callable[[Features], np.ndarray]:
    from pgrag.inference.openvino import compile_model

    # fp32: the int8 graph gains nothing from a bf16 hint (measured slower on AVX512-BF16).
    compiled = compile_model(onnx, "fp32")
    names = [port.get_any_name() for port in compiled.inputs]

    def forward(features: Features) -> np.ndarray:
        # One infer request per call: callers in several threads never share one.
        request = compiled.create_infer_request()
        request.infer({n: features[n] for n in names})
        return request.get_output_tensor(0).data.copy()

    return forward


def load_sentence_transformers(name: str, path: str, device: str, backend: str) -> Model:
    """A sentence-transformers CrossEncoder (`path`, called `name`) on `device` in `backend`
    ("torch-fp16", "openvino-bf16", ...); OSError or ValueError when it cannot be loaded."""
    runtime, precision = backend.split("-")
    device = "cpu" if runtime == "openvino" else device
    kwargs = {"torch_dtype": torch.float16} if precision == "fp16" else {}
    model = CrossEncoder(path, device=device, model_kwargs=kwargs).eval()
    if runtime == "openvino":
        from pgrag.inference.openvino import use_openvino

        precision = use_openvino(model, name, "scores", precision)

    def forward(features: Features) -> np.ndarray:
        with torch.inference_mode():
            tensors = {k: torch.from_numpy(v).to(model.device) for k, v in features.items()}
            return model(tensors)["scores"].float().cpu().numpy()

    return Model(model.tokenizer, forward, f"{runtime}-{precision}")
