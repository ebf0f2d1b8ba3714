"""The runtimes of a cross-encoder: padded features in, one logit per pair out.

Two kinds of model folder:

- an **ONNX cross-encoder**: `model.onnx` with its tokenizer files (`tokenizer.json`,
  `tokenizer_config.json`), as the packaged ms-marco-MiniLM-L-12-v2 ships (int8 weights,
  activations quantized on the fly). On a CPU, ONNX Runtime runs it where it is installed
  (`make install` adds it), else OpenVINO reads the ONNX file (or with
  `PGRAG_INFERENCE_BACKEND=openvino`); on the 2-core AMD EPYC of the development machine
  (AVX512-VNNI) ONNX Runtime scored pairs 2-3 times as fast as OpenVINO (docs/cpu.md). On
  CUDA (or with `PGRAG_INFERENCE_BACKEND=torch`) it runs as a torch copy with its weights
  de-quantized (`pgrag.inference.onnx_torch`): ONNX Runtime's CUDA provider has no kernels
  for its int8 operators;
- a **sentence-transformers CrossEncoder** (a folder with `config.json`, or a hub id): torch
  (fp16 on CUDA), or on a CPU its forward pass exported to OpenVINO
  (`pgrag.inference.openvino`), as the embedder.

Either way the caller (`pgrag.inference.rerank`) tokenizes, batches and pads; a runtime
only computes. Every runtime here may be called from several threads at once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer, PreTrainedTokenizerBase

ONNX_FILE = "model.onnx"
Features = dict[str, np.ndarray]


def is_onnx_model(path: str) -> bool:
    return (Path(path) / ONNX_FILE).is_file()


def onnx_runtime(backend_setting: str, device: str) -> str:
    """What runs an ONNX cross-encoder on `device` for a backend setting: "torch" (its
    de-quantized copy) on CUDA or when the setting names torch, "openvino" when it names
    OpenVINO or ONNX Runtime is not installed, else "onnxruntime"."""
    setting = backend_setting.strip()
    if setting.startswith("openvino"):
        return "openvino"
    if setting.startswith("torch") or device.startswith("cuda"):
        return "torch"
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


def load_onnx(path: str, runtime: str) -> Model:
    """An ONNX cross-encoder folder on the CPU, run by `runtime` ("onnxruntime" or
    "openvino")."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    onnx = Path(path) / ONNX_FILE
    forward = _openvino(onnx) if runtime == "openvino" else _onnxruntime(onnx)
    return Model(tokenizer, forward, f"{runtime}-cpu")


def _onnxruntime(onnx: Path) -> Callable[[Features], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # this process's share of cores
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def forward(features: Features) -> np.ndarray:
        return session.run(None, {n: features[n] for n in names})[0]

    return forward


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
