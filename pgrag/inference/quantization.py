"""Calibrated int8 encoders: static post-training quantization of an exported model with NNCF.

The model's fp32 IR (`pgrag.inference.openvino.ir_path`) goes through `nncf.quantize`: the
inputs of its matrix products are observed on real text, each given an int8 scale (weights
per output channel), and the transformer's sensitive parts (softmax, layer norms, GELU)
stay in floating point (`ModelType.TRANSFORMER`, with SmoothQuant moving activation
outliers into the weights). The second matrix of each feed-forward block (`FP32_LAYERS`),
whose input is the GELU's output with its long tail, stays in fp32 too: quantized, it took
the held-out agreement of all-MiniLM-L6-v2 from 0.990 to 0.986 (and to 0.966 with every
weight kept within 7 bits, NNCF's fix for 16-bit overflow on CPUs without VNNI; measured on
an AVX2 CPU, so what overflow does there is counted).

The calibration text ships with pgrag (`calibration.json`): 434 passages of 12-180 words
and 54 questions of its own prose (the sample corpus of `examples/corpus`, the docs and the
README). Shipped rather than drawn from the collection being ingested, because the int8 model
is part of a collection's backend: one export per model, the same on every machine and for
every collection, made before the first batch (a collection's own text would make an export
per collection, and a query worker elsewhere could not rebuild it without that text). It
also keeps the calibration apart from every evaluation set.

The even passages (or pairs) calibrate; the odd ones are held out and, right after the
export, embedded (or scored) by the int8 and the fp32 models. The agreement is written to
`quality.json` in the export's folder, under its checksums: for an embedder the cosine of
each held-out text's vector to its fp32 twin, for a cross-encoder the correlation of each
held-out question's scores with the fp32 ones. A model whose lowest agreement is under
`MIN_AGREEMENT` runs in fp32 instead (`int8_ir`); see docs/cpu.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from pgrag.inference.openvino import cache_dir, cached, compile_model

log = logging.getLogger(__name__)

CALIBRATION = Path(__file__).with_name("calibration.json")
QUALITY = "quality.json"
# The lowest agreement (cosine, or correlation of scores) of a held-out text with fp32 that
# the int8 model may show.
MIN_AGREEMENT = 0.99
# Left in fp32: the feed-forward blocks' output projections (BERT's naming).
FP32_LAYERS = r".*layer\.\d+\.output\.dense.*"
BATCH = 8  # texts per calibration sample
CANDIDATES = 8  # held-out passages a question's scores are compared over


@cache
def calibration_text() -> dict[str, list[str]]:
    """The shipped sample: {"passages": [...], "questions": [...]}."""
    text: dict[str, list[str]] = json.loads(CALIBRATION.read_text())
    return text


def _inputs(model: Any, part: int) -> list[Any]:
    """The calibration (`part` 0) or held-out (`part` 1) inputs of `model`: passages for a
    SentenceTransformer, (question, passage) pairs for a CrossEncoder, each question paired
    with `CANDIDATES` passages in turn."""
    text = calibration_text()
    passages = text["passages"][part::2]
    if not hasattr(model, "activation_fn"):  # a CrossEncoder scores pairs of texts
        return passages
    questions = text["questions"]
    rows = len(passages) // CANDIDATES
    return [(questions[i % len(questions)], p) for i, p in enumerate(passages[: rows * CANDIDATES])]


def _batches(model: Any, inputs: list[Any]) -> list[dict[str, np.ndarray]]:
    """`inputs` as the model's padded features, `BATCH` at a time."""
    batches = []
    for i in range(0, len(inputs), BATCH):
        features = model.preprocess(inputs[i : i + BATCH])
        batches.append({k: v.numpy() for k, v in features.items() if hasattr(v, "numpy")})
    return batches


def _outputs(compiled: ov.CompiledModel, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    names = [port.get_any_name() for port in compiled.inputs]
    request = compiled.create_infer_request()
    outputs = []
    for batch in batches:
        request.infer({n: batch[n] for n in names})
        outputs.append(request.get_output_tensor(0).data.copy())
    return np.concatenate(outputs)


def agreement(int8: np.ndarray, fp32: np.ndarray, *, group: int = 0) -> np.ndarray:
    """How closely int8 follows fp32: per row, the cosine of two embeddings; or, for scores
    in groups of `group` (one question's candidates), the correlation of each group's two
    sets of scores."""
    a, b = int8.astype(np.float64), fp32.astype(np.float64)
    if group:
        a, b = a.reshape(-1, group), b.reshape(-1, group)
        a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


def _export(model: Any, fp32_xml: Path, folder: Path) -> None:
    """Quantize the IR at `fp32_xml` into `folder`/model.xml, and measure it (QUALITY)."""
    import nncf

    fp32 = ov.Core().read_model(fp32_xml)
    calibration = _batches(model, _inputs(model, 0))
    int8 = nncf.quantize(
        fp32,
        nncf.Dataset(calibration),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
        ignored_scope=nncf.IgnoredScope(patterns=[FP32_LAYERS], validate=False),
    )
    ov.save_model(int8, folder / "model.xml", compress_to_fp16=False)

    held_out = _batches(model, _inputs(model, 1))
    rows = agreement(
        _outputs(compile_model(folder / "model.xml", "int8"), held_out),
        _outputs(compile_model(fp32_xml, "fp32"), held_out),
        group=CANDIDATES if hasattr(model, "activation_fn") else 0,
    )
    report = {
        "held_out": len(rows),
        "min": round(float(rows.min()), 6),
        "p1": round(float(np.percentile(rows, 1)), 6),
        "mean": round(float(rows.mean()), 6),
        "bar": MIN_AGREEMENT,
    }
    (folder / QUALITY).write_text(json.dumps(report, indent=1) + "\n")


def quality(xml: Path) -> dict[str, Any]:
    """The held-out agreement of the int8 export whose model is `xml`."""
    report: dict[str, Any] = json.loads((xml.parent / QUALITY).read_text())
    return report


def int8_ir(model: Any, name: str, output: str, fp32_xml: Path) -> Path:
    """The checked int8 IR of `model` (called `name`, its fp32 IR at `fp32_xml`), exported when
    it is missing or does not match its checksums. The key of its folder adds the calibration
    text, the layers left in fp32 and the NNCF version to the fp32 export's."""
    import nncf

    calibration = hashlib.sha256(CALIBRATION.read_bytes()).hexdigest()
    key = f"{fp32_xml.parent.name} {calibration} {BATCH} {FP32_LAYERS} nncf {nncf.__version__}"
    folder = cached(cache_dir(name, f"{output}-int8", key), lambda f: _export(model, fp32_xml, f))
    return folder / "model.xml"


def meets_bar(xml: Path) -> bool:
    """Whether the int8 export at `xml` agrees with fp32 well enough to be used."""
    report = quality(xml)
    if report["min"] >= MIN_AGREEMENT:
        return True
    log.warning(
        "the int8 export %s agrees with fp32 down to %.4f on held-out text (the bar is %.2f): "
        "running fp32",
        xml.parent.name,
        report["min"],
        MIN_AGREEMENT,
    )
    return False
