"""Inference backends: the choice from device and settings, the OpenVINO export and its cache,
and a collection that keeps the backend of its vectors (real PostgreSQL, Redis and workers).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from pgrag.inference import quantization
from pgrag.inference.embedding import BackendMismatch, collection_embedder, load_embedder
from pgrag.inference.openvino import (
    SUMS,
    best_precision,
    ir_path,
    precision_for,
    use_openvino,
)
from pgrag.inference.quantization import MIN_AGREEMENT, calibration_text, int8_ir, quality
from pgrag.inference.rerank import load_reranker, rerank_scores
from pgrag.inference.weights import pick_backend, resolve_model
from pgrag.ingest import jobs, pipeline
from pgrag.query.retrieval import embed_query, search
from pgrag.runtime import db
from pgrag.runtime.settings import DEFAULT_EMBED_MODEL, get_settings
from pgrag.store.collections import create_collection, get_collection
from pgrag.store.schema import Collection
from tests.conftest import Worker, sample_text

TEXTS = ["Backups are kept for thirty days.", "Keys rotate every ninety days.", "Hello."]
OPENVINO = f"openvino-{best_precision()}"
# The lowest cosine to torch fp32 of each backend's vectors.
CLOSE_TO_FP32 = {"openvino-bf16": 0.9995, "openvino-fp32": 0.9995, "openvino-int8": MIN_AGREEMENT}


@pytest.fixture
def backend_setting(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Lets a test set PGRAG_INFERENCE_BACKEND; the settings are read again after it."""
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("PGRAG_INFERENCE_BACKEND", raising=False)
    get_settings.cache_clear()


def set_backend(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PGRAG_INFERENCE_BACKEND", value)
    get_settings.cache_clear()


@pytest.fixture(scope="module", autouse=True)
def short_calibration(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The int8 exports of this module calibrate on a slice of the shipped text (64 passages,
    16 questions): the same recipe, checks and cache at a fraction of the cost. The shipped
    sample's own figures are docs/cpu.md's (bench/encoder_precisions.py)."""
    text = calibration_text()
    path = tmp_path_factory.mktemp("calibration") / "calibration.json"
    path.write_text(
        json.dumps({"passages": text["passages"][:64], "questions": text["questions"][:16]})
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quantization, "CALIBRATION", path)
        calibration_text.cache_clear()
        yield
    calibration_text.cache_clear()


def test_pick_backend() -> None:
    assert pick_backend("", "cpu") == pick_backend("auto", "cpu") == OPENVINO
    assert pick_backend("auto", "cuda") == "torch-fp16"  # the GPU path, unchanged
    assert pick_backend("torch", "cuda:1") == "torch-fp16"
    assert pick_backend("torch", "cpu") == "torch-fp32"
    assert pick_backend("openvino", "cuda") == OPENVINO  # OpenVINO runs on the CPU
    assert pick_backend("openvino-fp32", "cpu") == "openvino-fp32"
    with pytest.raises(ValueError, match="unknown inference backend 'onnx'"):
        pick_backend("onnx", "cpu")


def test_openvino_embedder_matches_torch(backend_setting: None) -> None:
    fast = load_embedder(DEFAULT_EMBED_MODEL, "cpu")  # auto on a CPU
    torch_ = load_embedder(DEFAULT_EMBED_MODEL, "cpu", "torch")
    # int8 runs fp32 where its export misses the quality bar
    assert fast.backend in (OPENVINO, "openvino-fp32") and torch_.backend == "torch-fp32"
    a, b = fast.encode(TEXTS), torch_.encode(TEXTS)
    assert a.shape == b.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() > CLOSE_TO_FP32[fast.backend]


class Passage:
    """What the reranker reads of a passage."""

    def __init__(self, title: str | None, text: str) -> None:
        self.title, self.text = title, text


def test_openvino_reranker_matches_torch(tiny_cross_encoder: str) -> None:
    fast = load_reranker(tiny_cross_encoder, "cpu", "openvino")
    torch_ = load_reranker(tiny_cross_encoder, "cpu", "torch")
    passages = [Passage(None, t) for t in TEXTS]
    a = rerank_scores("how long are backups kept", passages, model=fast)
    b = rerank_scores("how long are backups kept", passages, model=torch_)
    np.testing.assert_allclose(a, b, atol=0.01)


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real CrossEncoder from the packaged MiniLM weights (an untrained head)."""
    from sentence_transformers import CrossEncoder

    path = tmp_path_factory.mktemp("reranker") / "model"
    CrossEncoder(resolve_model(DEFAULT_EMBED_MODEL), num_labels=1, device="cpu").save(str(path))
    return str(path)


def test_export_is_cached_and_a_corrupt_copy_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend_setting: None
) -> None:
    monkeypatch.setenv("PGRAG_MODEL_DIR", str(tmp_path / "models"))  # its exports alone
    get_settings.cache_clear()
    model = SentenceTransformer(resolve_model(DEFAULT_EMBED_MODEL), device="cpu").eval()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    xml = ir_path(model, DEFAULT_EMBED_MODEL, "sentence_embedding")
    assert xml.is_relative_to(tmp_path / "models" / "openvino")
    # The converter sets the root logger to ERROR: the export puts it back.
    assert (root.level, root.handlers) == (level, handlers)
    sums = xml.parent / SUMS
    assert sorted(line.split()[1] for line in sums.read_text().splitlines()) == [
        "model.bin",
        "model.xml",
    ]
    stamp = (xml.parent / "model.bin").stat().st_mtime_ns

    assert ir_path(model, DEFAULT_EMBED_MODEL, "sentence_embedding") == xml  # reused
    assert (xml.parent / "model.bin").stat().st_mtime_ns == stamp

    weights = xml.parent / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    weights.write_bytes(bytes(data))
    assert ir_path(model, DEFAULT_EMBED_MODEL, "sentence_embedding") == xml
    assert weights.read_bytes() != bytes(data)  # exported again, not trusted
    sums.unlink()  # no checksums: rebuilt too
    assert ir_path(model, DEFAULT_EMBED_MODEL, "sentence_embedding") == xml
    assert sums.is_file()


def test_collection_embedder_keeps_the_recorded_backend(
    monkeypatch: pytest.MonkeyPatch, backend_setting: None
) -> None:
    kb = Collection(name="kb", model=DEFAULT_EMBED_MODEL, embed_backend="torch-fp32")
    assert collection_embedder(kb).backend == "torch-fp32"  # auto follows the collection
    legacy = Collection(name="old", model=DEFAULT_EMBED_MODEL, embed_backend="torch")
    assert collection_embedder(legacy).backend == "torch-fp32"  # torch at the CPU's precision
    empty = Collection(name="new", model=DEFAULT_EMBED_MODEL, embed_backend=None)
    auto = load_embedder(DEFAULT_EMBED_MODEL, "cpu").backend
    assert collection_embedder(empty).backend == auto  # the setting decides

    set_backend(monkeypatch, "torch")
    assert collection_embedder(kb).backend == "torch-fp32"  # the same one, said explicitly
    set_backend(monkeypatch, "openvino")
    with pytest.raises(BackendMismatch, match=r"'kb' was embedded with the torch-fp32 backend"):
        collection_embedder(kb)


def test_auto_precision_follows_the_cpu() -> None:
    """bf16 where native; int8 only with int8 dot products (on AVX2 alone it is no faster
    than fp32: docs/cpu.md); fp32 elsewhere."""
    assert precision_for(["FP32", "INT8", "BF16"], {"avx2", "avx512_bf16"}) == "bf16"
    assert precision_for(["FP32", "INT8"], {"avx2", "avx512_vnni"}) == "int8"
    assert precision_for(["FP32", "INT8"], {"avx2", "avx_vnni"}) == "int8"
    assert precision_for(["FP32", "INT8"], {"avx2", "fma"}) == "fp32"


def test_int8_export_is_calibrated_checked_and_cached(backend_setting: None) -> None:
    """The int8 export: quantized from the fp32 one on the shipped calibration text, measured
    against it on the held-out half, kept with checksums over the weights and the report, and
    reused; the embedder runs it and stays within the bar of torch fp32."""
    model = SentenceTransformer(resolve_model(DEFAULT_EMBED_MODEL), device="cpu").eval()
    fp32 = ir_path(model, DEFAULT_EMBED_MODEL, "sentence_embedding")
    xml = int8_ir(model, DEFAULT_EMBED_MODEL, "sentence_embedding", fp32)
    assert xml.parent.parent == fp32.parent.parent and "-sentence_embedding-int8-" in str(xml)
    sums = (xml.parent / SUMS).read_text().splitlines()
    assert sorted(line.split()[1] for line in sums) == ["model.bin", "model.xml", "quality.json"]
    report = quality(xml)
    assert report["held_out"] == len(calibration_text()["passages"]) // 2
    assert report["bar"] == MIN_AGREEMENT and report["min"] > 0.98  # 0.990 on an AVX2 EPYC
    stamp = (xml.parent / "model.bin").stat().st_mtime_ns
    assert int8_ir(model, DEFAULT_EMBED_MODEL, "sentence_embedding", fp32) == xml  # reused
    assert (xml.parent / "model.bin").stat().st_mtime_ns == stamp

    int8 = load_embedder(DEFAULT_EMBED_MODEL, "cpu", "openvino-int8")
    assert int8.backend == ("openvino-int8" if report["min"] >= MIN_AGREEMENT else "openvino-fp32")
    reference = load_embedder(DEFAULT_EMBED_MODEL, "cpu", "torch").encode(TEXTS)
    assert (int8.encode(TEXTS) * reference).sum(axis=1).min() > CLOSE_TO_FP32["openvino-int8"]


def test_int8_below_the_bar_runs_fp32(
    monkeypatch: pytest.MonkeyPatch, backend_setting: None
) -> None:
    model = SentenceTransformer(resolve_model(DEFAULT_EMBED_MODEL), device="cpu").eval()
    monkeypatch.setattr(quantization, "MIN_AGREEMENT", 1.01)  # no int8 model meets this
    assert use_openvino(model, DEFAULT_EMBED_MODEL, "sentence_embedding", "int8") == "fp32"


def test_a_collection_keeps_int8(monkeypatch: pytest.MonkeyPatch, backend_setting: None) -> None:
    kb = Collection(name="kb8", model=DEFAULT_EMBED_MODEL, embed_backend="openvino-int8")
    if load_embedder(DEFAULT_EMBED_MODEL, "cpu", "openvino-int8").backend == "openvino-int8":
        assert collection_embedder(kb).backend == "openvino-int8"  # whatever auto picks here
    else:  # the model's int8 export misses the bar on this CPU: it cannot compute them
        with pytest.raises(BackendMismatch, match="which this machine cannot run"):
            collection_embedder(kb)
    set_backend(monkeypatch, "openvino-fp32")
    with pytest.raises(BackendMismatch, match="'kb8' was embedded with the openvino-int8"):
        collection_embedder(kb)


def test_int8_cross_encoder(
    tiny_cross_encoder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sentence-transformers cross-encoder runs int8 where its export meets the bar (its
    scores' correlation with fp32's, per held-out question), else fp32."""
    monkeypatch.setenv("PGRAG_MODEL_DIR", str(tmp_path / "models"))  # its exports alone
    get_settings.cache_clear()
    int8 = load_reranker(tiny_cross_encoder, "cpu", "openvino-int8")
    exports = get_settings().models / "openvino"
    (report,) = [quality(p / "model.xml") for p in exports.glob("*-scores-int8-*")]
    assert report["held_out"] == len(calibration_text()["passages"]) // 2 // 8  # questions
    assert int8.runtime == ("openvino-int8" if report["min"] >= MIN_AGREEMENT else "openvino-fp32")
    scores = rerank_scores(
        "how long are backups kept", [Passage(None, t) for t in TEXTS], model=int8
    )
    assert scores.shape == (3,) and np.isfinite(scores).all()


# End to end: real services and workers.


def write_source(path: Path, first: int, n: int) -> Path:
    rows = ({"id": f"d{i}", "text": sample_text(i, 40)} for i in range(first, first + n))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def wait_done(job_id: int) -> jobs.Job:
    deadline = time.monotonic() + 240
    while not (job := jobs.get_job(job_id)).finished:
        assert time.monotonic() < deadline, f"job {job_id} still {job.state}"
        time.sleep(0.2)
    return job


@pytest.mark.slow
def test_a_collection_keeps_its_backend(
    own_broker: None,
    tmp_path: Path,
    collection_name: str,
    monkeypatch: pytest.MonkeyPatch,
    backend_setting: None,
) -> None:
    """Embedded by a worker set to torch-fp32, the collection records it; a query process on
    auto embeds its questions with torch-fp32 too; a worker or a query process set to another
    backend is refused with a message that says why."""
    create_collection(collection_name)
    assert get_collection(collection_name).embed_backend is None
    home = Path(os.environ["PGRAG_HOME"])
    worker = Worker(home, "ingest,embed", "torch-worker", {"PGRAG_INFERENCE_BACKEND": "torch-fp32"})
    try:
        first = pipeline.submit(write_source(tmp_path / "a.jsonl", 0, 6), collection_name)
        job = wait_done(first.id)
        assert job.state == "done", job.error
        collection = get_collection(collection_name)
        assert collection.embed_backend == "torch-fp32"

        # This process is on auto (OpenVINO on a CPU), yet embeds the collection's queries
        # with torch-fp32, as its vectors were.
        question = sample_text(3, 40)
        reference = load_embedder(DEFAULT_EMBED_MODEL, "cpu", "torch").encode([question])[0]
        np.testing.assert_allclose(embed_query(collection, question), reference, atol=1e-6)
        assert search(question, collection_name, k=1, mode="dense")[0].external_id == "d3"

        # A collection whose first vectors came from another backend: the worker refuses.
        with db.connect() as conn:
            conn.execute(
                "UPDATE pgrag.collections SET embed_backend = 'openvino-fp32' WHERE id = %s",
                (collection.id,),
            )
        more = pipeline.submit(write_source(tmp_path / "b.jsonl", 6, 2), collection_name)
        job = wait_done(more.id)
    finally:
        worker.stop()
    assert job.state == "failed"
    assert "was embedded with the openvino-fp32 backend" in (job.error or "")
    assert "PGRAG_INFERENCE_BACKEND=torch-fp32" in (job.error or "")

    set_backend(monkeypatch, "torch")
    with pytest.raises(BackendMismatch, match="unset it"):
        search(question, collection_name, k=1)
