"""The local generator's model in OpenVINO: greedy decoding with the KV cache in the model.

Exported once from the model's local folder (for the default model, the safetensors copy
of its GGUF file: `pgrag.query.generation.local.model_path`) and cached with checksums under
`<PGRAG_MODEL_DIR>/openvino/` (`pgrag.inference.openvino.cached`):

- the forward pass with the past keys and values as tensors is traced
  (`openvino.convert_model`), and its weight matrices stored as int8, one scale per output
  channel: decoding reads every weight once per token, so it is bound by their size;
- `prefill.xml`: that model as is; the prompt goes through it in one call (with an empty
  past), which returns the logits of its last token and every layer's keys and values;
- `decode.xml`: the same made stateful, the keys and values kept inside the model between
  calls, as OpenVINO's fused attention with a KV cache expects them (read through a
  reorder by `beam_idx`); one token a call.

Two models, because the fused KV-cache attention, the fastest for one token, took 2.5 s for
a 924-token prompt that the unfused model reads in 0.4 s (2-core Xeon with AMX).
Measured there (SmolLM2-135M, bf16 activations): about 45 tokens/s at a 924-token context,
against 22 for transformers in fp32; the greedy tokens of the test prompts are the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.opset6 as ops6
import openvino.opset13 as ops
import torch
from openvino._offline_transformations import apply_make_stateful_transformation
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PretrainedConfig

from pgrag.inference.openvino import cache_dir, cached, compile_model, compiled_precision

FIXED_INPUTS = ["input_ids", "attention_mask", "position_ids"]


def _shape(config: PretrainedConfig) -> tuple[int, int, int]:
    """Layers, key/value heads and head size of a decoder."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", heads), head_dim


def _kv_names(layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


class _Step(torch.nn.Module):
    """One forward pass with the past keys and values as plain tensors (what the tracer
    feeds); returns the last position's logits and the new keys and values."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> Any:
        cache = DynamicCache(config=self.model.config)
        layers: list[Any] = cache.layers
        for layer, keys, values in zip(layers, past[::2], past[1::2], strict=True):
            # Filled as a layer that has seen the past already, so the tracer records a
            # plain concatenation (a fresh layer starts from an empty, shapeless tensor).
            layer.keys, layer.values, layer.device = keys, values, keys.device
            layer.is_initialized = True
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return (out.logits, *(t for layer in out.cache.layers for t in (layer.keys, layer.values)))


def _int8_weights(model: ov.Model) -> None:
    """Store the weight matrix of every MatMul as int8 with one scale per output channel;
    OpenVINO's CPU plugin multiplies with such weights directly."""
    for node in model.get_ordered_ops():
        weights = node.input_value(1).get_node() if node.get_type_name() == "MatMul" else None
        if weights is None or weights.get_type_name() != "Constant" or len(weights.shape) != 2:
            continue
        w = weights.get_data().astype(np.float32)
        axis = 1 if node.get_attributes()["transpose_b"] else 0  # the input axis
        scale = np.abs(w).max(axis=axis, keepdims=True) / 127
        scale[scale == 0] = 1
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        dequantized = ops.multiply(
            ops.convert(ops.constant(q), ov.Type.f32), ops.constant(scale.astype(np.float32))
        )
        node.input(1).replace_source_output(dequantized.output(0))


def _make_stateful(model: ov.Model, config: PretrainedConfig) -> None:
    """Keep the keys and values in the model (variables), in the form of OpenVINO's
    KV-cache attention fusion: each past read through a Gather by `beam_idx` (int32), and
    starting empty, [batch, kv heads, 0, head size]."""
    layers, kv_heads, head_dim = _shape(config)
    apply_make_stateful_transformation(
        model,
        dict(zip(_kv_names(layers, "past"), _kv_names(layers, "present"), strict=True)),
    )
    beam_idx = ops.parameter([-1], ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    batch = ops.gather(
        ops.shape_of(model.input("input_ids").get_node()), ops.constant([0]), ops.constant(0)
    )
    empty = ops.broadcast(
        ops.constant(np.float32(0)),
        ops.concat([batch, ops.constant(np.array([kv_heads, 0, head_dim]))], 0),
    )
    for old in [op for op in model.get_ops() if op.get_type_name() == "ReadValue"]:
        past = ops6.read_value(empty, model.get_variable_by_id(old.get_variable_id()))
        old.output(0).replace(past.output(0))
        for target in list(past.output(0).get_target_inputs()):
            if target.get_node().get_type_name() == "Concat":
                target.replace_source_output(
                    ops.gather(past.output(0), beam_idx, ops.constant(0)).output(0)
                )
    model.add_parameters([beam_idx])
    model.validate_nodes_and_infer_types()


def _export(path: str, folder: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    layers, kv_heads, head_dim = _shape(model.config)
    # Traced with a past of 2 positions and 3 new ones: every dimension differs, so none is
    # taken for a constant.
    example = (
        torch.ones(1, 3, dtype=torch.long),
        torch.ones(1, 5, dtype=torch.long),
        torch.arange(2, 5).unsqueeze(0),
        *(torch.zeros(1, kv_heads, 2, head_dim) for _ in range(2 * layers)),
    )
    with torch.no_grad():
        converted = ov.convert_model(_Step(model), example_input=example)
    for port, name in zip(converted.inputs, FIXED_INPUTS + _kv_names(layers, "past"), strict=True):
        port.get_tensor().set_names({name})
    outputs = ["logits", *_kv_names(layers, "present")]
    for port, name in zip(converted.outputs, outputs, strict=True):
        port.get_tensor().set_names({name})
    _int8_weights(converted)
    ov.save_model(converted, folder / "prefill.xml", compress_to_fp16=False)
    _make_stateful(converted, model.config)
    ov.save_model(converted, folder / "decode.xml", compress_to_fp16=False)


def _fingerprint(path: str) -> str:
    """The model folder's files: names, sizes and modification times."""
    files = sorted(p for p in Path(path).iterdir() if p.is_file())
    return json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])


class OpenVINOLM:
    """A causal LM from a local folder, run by OpenVINO on the CPU at `precision`."""

    def __init__(self, path: str, precision: str) -> None:
        self.config = AutoConfig.from_pretrained(path)
        folder = cached(
            cache_dir(path, "causal-lm", _fingerprint(path)), lambda f: _export(path, f)
        )
        decode = compile_model(folder / "decode.xml", precision)
        self.precision = compiled_precision(decode)
        self._prefill = compile_model(folder / "prefill.xml", precision).create_infer_request()
        self._decode = decode.create_infer_request()
        layers, kv_heads, head_dim = _shape(self.config)
        self._empty_past = {
            name: np.zeros((1, kv_heads, 0, head_dim), np.float32)
            for name in _kv_names(layers, "past")
        }
        # make_stateful names each variable after its input and output: state -> output.
        presents = _kv_names(layers, "present")
        self._states = {p + q: q for p, q in zip(self._empty_past, presents, strict=True)}

    def tokens(self, prompt: Sequence[int]) -> Iterator[int]:
        """Greedy continuation of `prompt` (token ids), one token at a time, for as long as
        the caller reads (one caller at a time)."""
        n = len(prompt)
        self._prefill.infer(
            {
                "input_ids": np.asarray([prompt], np.int64),
                "attention_mask": np.ones((1, n), np.int64),
                "position_ids": np.arange(n, dtype=np.int64)[None],
                **self._empty_past,
            }
        )
        self._decode.reset_state()
        for state in self._decode.query_state():
            state.state = self._prefill.get_tensor(self._states[state.name])
        token = int(self._prefill.get_tensor("logits").data[0, -1].argmax())
        beam_idx = np.zeros(1, np.int32)
        while True:
            yield token
            self._decode.infer(
                {
                    "input_ids": np.asarray([[token]], np.int64),
                    "attention_mask": np.ones((1, n + 1), np.int64),
                    "position_ids": np.asarray([[n]], np.int64),
                    "beam_idx": beam_idx,
                }
            )
            n += 1
            token = int(self._decode.get_tensor("logits").data[0, -1].argmax())
