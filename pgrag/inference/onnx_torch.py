"""A torch copy of an int8 ONNX BERT encoder (cross-encoder or embedder), for CUDA.

ONNX Runtime's CUDA provider has no kernels for the operators of a dynamically quantized
model (DynamicQuantizeLinear, MatMulInteger): it would run them on the CPU, copying every
activation between host and GPU. So on CUDA a packaged ONNX encoder runs as what it was
before quantization, a transformers BERT: its int8 weights are de-quantized
((q - zero point) x scale) into a `BertForSequenceClassification` (`torch_copy`, the
reranker) or a sentence-transformers model around a `BertModel` (`embedder_copy`), which
then runs in fp16 as any such model does. The copy is made once, saved under
`<PGRAG_MODEL_DIR>/` with checksums (`pgrag.inference.openvino.cached`), and checked before
it is kept: on examples it must compute what the ONNX file does (OpenVINO computing it),
within the int8 model's own noise, or loading fails with the reason.

The ONNX graph names the weight of each matrix product by a number; the bias added right
after it carries the module's name, which is how each weight finds its place.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.models import Normalize, Pooling, Transformer
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from pgrag.inference.openvino import cached, model_label
from pgrag.runtime.settings import get_settings

ONNX_FILE = "model.onnx"
HEAD_DIM = 32  # MiniLM's attention heads are 32 wide (12 heads of a 384 hidden size)
# The largest difference of a logit between the copy and the ONNX file that passes the
# check: the ONNX file quantizes activations too (about 0.3 on the example pairs).
TOLERANCE = 1.0
# The least cosine of a sentence vector of the copy to the ONNX file's that passes the check.
MIN_COSINE = 0.99
_CHECK = [
    ("What is the capital of France?", "Paris is the capital and largest city of France."),
    ("What is the capital of France?", "Berlin is the capital of Germany."),
    ("How long are backups kept?", "The office is closed on public holidays."),
]


def torch_copy(name: str, folder: str) -> str:
    """The folder of the transformers copy of the ONNX cross-encoder in `folder` (called
    `name`), made on first use; ValueError when the file is not a BERT this can copy."""
    return _copy(name, folder, "torch", _convert)


def embedder_copy(name: str, folder: str) -> str:
    """The folder of the sentence-transformers copy of the ONNX BERT embedder in `folder`
    (called `name`): the de-quantized `BertModel`, the last hidden state of its [CLS] token
    (how BGE models pool, the packaged one among them), unit length. Made on first use;
    ValueError when the file is not a BERT this can copy."""
    return _copy(name, folder, "st", _convert_embedder)


def _copy(name: str, folder: str, kind: str, convert: Callable[[Path, Path], None]) -> str:
    digest = hashlib.sha256((Path(folder) / ONNX_FILE).read_bytes()).hexdigest()[:16]
    target = get_settings().models / f"{model_label(name)}-{kind}-{digest}"
    return str(cached(target, lambda out: convert(Path(folder), out)))


def _load_state(model: torch.nn.Module, state: dict[str, np.ndarray], what: str) -> None:
    """`state` into `model`; ValueError when a parameter is missing or a weight unused."""
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(v) for k, v in state.items()}, strict=False
    )
    parameters = dict(model.named_parameters())
    if unexpected or [k for k in missing if k in parameters]:
        raise ValueError(f"not a {what}: missing {missing}, unexpected {unexpected}")


def _convert(folder: Path, out: Path) -> None:
    state = state_dict(folder / ONNX_FILE)
    model = BertForSequenceClassification(config_of(state, "bert.")).eval()
    _load_state(model, state, "BERT cross-encoder")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    _check(model, tokenizer, folder / ONNX_FILE)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _convert_embedder(folder: Path, out: Path) -> None:
    state = state_dict(folder / ONNX_FILE)
    bert = BertModel(config_of(state, ""), add_pooling_layer=False).eval()
    _load_state(bert, state, "BERT encoder")
    # sentence-transformers builds its modules from folders: the BERT's goes beside the copy.
    with tempfile.TemporaryDirectory() as tmp:
        bert.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(folder).save_pretrained(tmp)
        transformer = Transformer(tmp, max_seq_length=bert.config.max_position_embeddings)
        pool = Pooling(bert.config.hidden_size, pooling_mode="cls")
        model = SentenceTransformer(modules=[transformer, pool, Normalize()]).eval()
        _check_embedder(model, folder / ONNX_FILE)
        model.save(str(out))


def state_dict(onnx_file: Path) -> dict[str, np.ndarray]:
    """The model's weights by their transformers names, de-quantized to float32."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_file)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    state: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if key.endswith("_quantized"):
            base = key.removesuffix("_quantized")
            zero = arrays[f"{base}_zero_point"].astype(np.float32)
            weight = (value.astype(np.float32) - zero) * arrays[f"{base}_scale"]
            products = [n for n in consumers[key] if n.op_type == "MatMulInteger"]
            if products:  # a matrix product's (in, out) weight: a Linear's is (out, in)
                base = _bias_after(products[0], consumers).removesuffix(".bias") + ".weight"
                weight = weight.T
            state[base] = np.ascontiguousarray(weight, dtype=np.float32)
        elif not key.startswith(("onnx::", "/")) and not key.endswith(("_scale", "_zero_point")):
            state[key] = value.astype(np.float32)
    return state


def _bias_after(node: Any, consumers: dict[str, list[Any]]) -> str:
    """The name of the bias added to the output of matrix product `node` (through the cast
    and the scaling that follow it)."""
    for _ in range(4):
        after = consumers[node.output[0]]
        if not after:
            break
        node = after[0]
        if node.op_type == "Add":
            biases = [name for name in node.input if name.endswith(".bias")]
            if biases:
                return biases[0]
    raise ValueError(f"no named bias follows the matrix product {node.name!r}")


def config_of(state: dict[str, np.ndarray], prefix: str) -> BertConfig:
    """The BERT configuration of the weights in `state`, named `prefix` + the `BertModel`
    name ("bert." in a cross-encoder, "" in a bare encoder)."""
    vocab, hidden = state[f"{prefix}embeddings.word_embeddings.weight"].shape
    pattern = re.compile(re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
    layers = {int(m[1]) for k in state if (m := pattern.match(k))}
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len(layers),
        num_attention_heads=hidden // HEAD_DIM,
        intermediate_size=state[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state[f"{prefix}embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state[f"{prefix}embeddings.token_type_embeddings.weight"].shape[0],
    )
    if "classifier.weight" in state:
        config.num_labels = state["classifier.weight"].shape[0]
    return config


def _onnx_output(onnx_file: Path, features: dict[str, np.ndarray]) -> np.ndarray:
    """The ONNX file's first output for `features`, as OpenVINO computes it."""
    from pgrag.inference.openvino import compile_model

    compiled = compile_model(onnx_file, "fp32")
    request = compiled.create_infer_request()
    request.infer({p.get_any_name(): features[p.get_any_name()] for p in compiled.inputs})
    return request.get_output_tensor(0).data.copy()


def _check(model: BertForSequenceClassification, tokenizer: Any, onnx_file: Path) -> None:
    """ValueError unless the copy scores the example pairs as the ONNX file does."""
    features = tokenizer(
        [q for q, _ in _CHECK], [p for _, p in _CHECK], padding=True, return_tensors="np"
    )
    expected = _onnx_output(onnx_file, features).reshape(-1)
    with torch.inference_mode():
        got = model(**{k: torch.from_numpy(v) for k, v in features.items()}).logits.reshape(-1)
    worst = float(np.abs(got.numpy() - expected).max())
    if worst > TOLERANCE:
        raise ValueError(
            f"the torch copy of {onnx_file} scores pairs {worst:.2f} away from the file itself"
        )


def _check_embedder(model: SentenceTransformer, onnx_file: Path) -> None:
    """ValueError unless the copy embeds the example texts as the ONNX file does (the last
    hidden state of [CLS], unit length)."""
    texts = [text for pair in _CHECK for text in pair]
    features = model.tokenizer(texts, padding=True, return_tensors="np")
    expected = _onnx_output(onnx_file, dict(features))[:, 0]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = model.encode(texts, normalize_embeddings=True)
    worst = float((got * expected).sum(1).min())
    if worst < MIN_COSINE:
        raise ValueError(
            f"the torch copy of {onnx_file} embeds texts at a cosine of {worst:.3f} to the file"
        )
