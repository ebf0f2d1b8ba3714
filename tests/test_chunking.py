"""Chunking on real text with the default model's tokenizer (no services needed)."""

from __future__ import annotations

import copy
import json
import os
import re
from itertools import pairwise
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pgrag.inference.weights import resolve_model
from pgrag.ingest.chunking import (
    Chunk,
    chunk_text,
    chunk_texts,
    embed_input,
    segment_spans,
    truncate_tokens,
)
from pgrag.runtime.settings import DEFAULT_EMBED_MODEL

PROSE = """\
PostgreSQL began as the POSTGRES project at the University of California, Berkeley, in 1986. \
Its authors wanted a database that understood more than numbers and short strings. \
Over the following decade the project grew a query language, a rule system and a storage \
manager that never overwrote data in place. In 1996 it was renamed to reflect its support \
for SQL!

Extensions are what keep it current. A type, an index access method or a set of functions \
can be added without touching the server's source code. The pgvector extension is one of \
them: it stores vectors next to ordinary rows and answers nearest-neighbour queries with an \
HNSW or IVFFlat index. Is that enough for a search engine? For many collections it is, \
because the documents, their metadata and their embeddings stay in one transaction.

"Keep the data where it already lives," one of the maintainers wrote. Backups, replication \
and access control then cover the vectors as well. 3 kinds of index are common: B-tree for \
equality and ranges, GIN for full-text search, and HNSW for embeddings.
"""

SENTENCES = [
    "The river rose quickly after the storm.",
    "Farmers moved their cattle to higher ground before dawn.",
    "By noon the bridge was closed to traffic.",
    "Engineers inspected the pillars for cracks.",
    "Nobody expected the water to reach the old mill.",
    "It did, and the wheel turned for the first time in forty years.",
    "Children gathered on the hill to watch.",
    "The mayor promised a new levee by spring.",
]

WORDS = [
    *("the", "river", "data", "table", "index", "query", "vector"),
    *("house", "green", "small", "city", "water", "light"),
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_EMBED_MODEL))
    assert isinstance(tok, PreTrainedTokenizerFast)
    return tok


def token_counts(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[int]:
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return [len(x) for x in ids]


def check_chunks(
    doc: str,
    chunks: list[Chunk],
    tokenizer: PreTrainedTokenizerFast,
    chunk_size: int,
    overlap: int,
    exact_counts: bool = True,
) -> None:
    """What every chunking must satisfy: exact spans, the size limit, order, overlap within
    bounds, and no text the model would see left out between chunks."""
    assert chunks
    counts = token_counts(tokenizer, [c.text for c in chunks])
    for i, (c, n) in enumerate(zip(chunks, counts, strict=True)):
        assert c.ord == i
        assert c.text == doc[c.start : c.end]
        assert c.text and c.text == c.text.strip()
        assert n <= chunk_size
        if exact_counts:
            assert c.token_count == n
    gaps, overlaps = [doc[: chunks[0].start], doc[chunks[-1].end :]], []
    for prev, nxt in pairwise(chunks):
        assert prev.start < nxt.start and prev.end < nxt.end
        if nxt.start < prev.end:
            overlaps.append(doc[nxt.start : prev.end])
        else:
            gaps.append(doc[prev.end : nxt.start])
    assert all(n == 0 for n in token_counts(tokenizer, gaps))
    assert all(n <= overlap for n in token_counts(tokenizer, overlaps))


@pytest.mark.parametrize(("chunk_size", "overlap"), [(24, 0), (64, 16), (200, 32)])
def test_real_text(tokenizer: PreTrainedTokenizerFast, chunk_size: int, overlap: int) -> None:
    chunks = chunk_text(PROSE, tokenizer, chunk_size=chunk_size, overlap=overlap)
    check_chunks(PROSE, chunks, tokenizer, chunk_size, overlap)


def test_overlap_is_whole_sentences(tokenizer: PreTrainedTokenizerFast) -> None:
    # The longest sentence of PROSE has 35 tokens: with a larger overlap, every chunk after
    # the first starts with the last whole sentence(s) of the one before.
    chunks = chunk_text(PROSE, tokenizer, chunk_size=80, overlap=36)
    check_chunks(PROSE, chunks, tokenizer, 80, 36)
    assert len(chunks) > 3
    starts = {s for s, _ in segment_spans(PROSE)}
    for prev, nxt in pairwise(chunks):
        assert nxt.start < prev.end
        assert nxt.start in starts


def test_markdown_model_card(tokenizer: PreTrainedTokenizerFast) -> None:
    path = os.path.join(resolve_model(DEFAULT_EMBED_MODEL), "README.md")
    with open(path, encoding="utf-8") as f:
        doc = f.read()
    chunks = chunk_text(doc, tokenizer, chunk_size=200, overlap=32)
    check_chunks(doc, chunks, tokenizer, 200, 32)


def test_chunks_end_at_sentence_ends(tokenizer: PreTrainedTokenizerFast) -> None:
    doc = " ".join(SENTENCES * 3)
    longest = max(token_counts(tokenizer, SENTENCES))
    chunk_size = 2 * longest + 2  # room for two sentences, never three whole ones plus a cut
    chunks = chunk_text(doc, tokenizer, chunk_size=chunk_size, overlap=0)
    check_chunks(doc, chunks, tokenizer, chunk_size, 0)
    for c in chunks:
        assert c.text.endswith("."), c.text
        assert c.text[0].isupper(), c.text
        assert len(re.findall(r"\.", c.text)) >= 2  # greedy: as many whole sentences as fit


def test_long_sentence_is_cut_into_windows(tokenizer: PreTrainedTokenizerFast) -> None:
    doc = " ".join(WORDS[i % len(WORDS)] for i in range(3000))  # one token per word
    assert token_counts(tokenizer, [doc]) == [3000]
    chunks = chunk_text(doc, tokenizer, chunk_size=200, overlap=32)
    check_chunks(doc, chunks, tokenizer, 200, 32)
    assert all(c.token_count == 200 for c in chunks[:-1])
    assert len(chunks) == 18  # 200 tokens, then 168 new ones per chunk: ceil(2800 / 168) + 1
    # No sentence to keep whole, so the overlap is the last 32 tokens of the previous chunk.
    for prev, nxt in pairwise(chunks):
        assert token_counts(tokenizer, [doc[nxt.start : prev.end]]) == [32]


def test_long_segment_after_short_ones(tokenizer: PreTrainedTokenizerFast) -> None:
    long_one = " ".join(WORDS[i % len(WORDS)] for i in range(150)) + "."
    doc = f"{SENTENCES[0]} {SENTENCES[1]}\n\n{long_one}\n\n{SENTENCES[2]}"
    chunks = chunk_text(doc, tokenizer, chunk_size=64, overlap=16)
    check_chunks(doc, chunks, tokenizer, 64, 16)


def test_unicode_and_emoji(tokenizer: PreTrainedTokenizerFast) -> None:
    para = (
        "Crème brûlée, naïve façade and Æsir — déjà vu. "
        "日本語の文章です。句読点で区切られます\uff01本当に\uff1f "
        "Emoji 😀🎉 and families 👩‍👩‍👧 with skin tones 👍🏽 too. "
        "Ελληνικά κείμενα. Русский текст здесь. العربية من اليمين. "
        "Combining: e\u0301 a\u0308 and zero\u200bwidth spaces.\n"
    )
    doc = para * 20
    for chunk_size, overlap in [(16, 4), (48, 8), (200, 32)]:
        chunks = chunk_text(doc, tokenizer, chunk_size=chunk_size, overlap=overlap)
        check_chunks(doc, chunks, tokenizer, chunk_size, overlap)


@pytest.mark.parametrize("doc", ["", " ", "\n\n\t  \n", "\u3000\u00a0\n"])
def test_whitespace_only(tokenizer: PreTrainedTokenizerFast, doc: str) -> None:
    assert chunk_text(doc, tokenizer, chunk_size=200, overlap=32) == []


def test_short_document_is_one_chunk(tokenizer: PreTrainedTokenizerFast) -> None:
    doc = "\n\n  Just one line.  \n"
    [chunk] = chunk_text(doc, tokenizer, chunk_size=200, overlap=32)
    assert (chunk.ord, chunk.text, chunk.start, chunk.end) == (0, "Just one line.", 4, 18)
    assert chunk.token_count == 4


def test_five_megabyte_document(tokenizer: PreTrainedTokenizerFast) -> None:
    # Tokenized once and searched by bisection: this takes seconds; a quadratic step would
    # not finish. Varied paragraphs, so chunk boundaries fall everywhere.
    paragraphs = [PROSE, " ".join(SENTENCES), " ".join(WORDS * 40) + ".", "短い。" * 50]
    parts, size, i = [], 0, 0
    while size < 5_000_000:
        part = paragraphs[i % len(paragraphs)] + f"\n\nSection {i}.\n\n"
        parts.append(part)
        size += len(part)
        i += 1
    doc = "".join(parts)
    chunks = chunk_text(doc, tokenizer, chunk_size=200, overlap=32)
    check_chunks(doc, chunks, tokenizer, 200, 32)
    assert len(chunks) > 5000


def test_tokenizer_left_set_for_truncation(tokenizer: PreTrainedTokenizerFast) -> None:
    truncating = copy.deepcopy(tokenizer)
    truncating(["some text"], truncation=True, max_length=8, padding="max_length")
    assert truncating.backend_tokenizer.truncation is not None
    expected = chunk_text(PROSE, tokenizer, chunk_size=48, overlap=8)
    assert chunk_text(PROSE, truncating, chunk_size=48, overlap=8) == expected


@pytest.mark.parametrize(("chunk_size", "overlap"), [(0, 0), (10, 10), (10, -1)])
def test_bad_sizes(tokenizer: PreTrainedTokenizerFast, chunk_size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk_text(PROSE, tokenizer, chunk_size=chunk_size, overlap=overlap)


def test_segments() -> None:
    text = 'He said "Stop." Then he left. Was it 3 p.m. or later? 2 cats!\n\nNew para\nline'
    assert [text[s:e] for s, e in segment_spans(text)] == [
        'He said "Stop."',
        "Then he left.",
        "Was it 3 p.m. or later?",
        "2 cats!",
        "New para",
        "line",
    ]


def test_embed_input() -> None:
    assert embed_input("Title", "body") == "Title\nbody"
    assert embed_input(None, "body") == "body"
    assert embed_input("  ", "body") == "body"


def test_batched_chunking_gives_the_chunks_of_the_segment_by_segment_chunker(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    """tests/data/chunks-golden.json holds the chunks that the segment-by-segment chunker
    (before texts were tokenized whole and in batches) made of prose, the sample corpus and
    random texts with CJK, accents, control characters, long words and odd spacing."""
    golden = json.loads((Path(__file__).parent / "data" / "chunks-golden.json").read_text())
    texts = golden["texts"]
    for setting, expected in golden["chunks"].items():
        size, overlap = map(int, setting.split("/"))
        got = chunk_texts(texts, tokenizer, chunk_size=size, overlap=overlap)
        for text, chunks, want in zip(texts, got, expected, strict=True):
            assert [[c.start, c.end, c.token_count] for c in chunks] == want, (setting, text[:80])
            assert [c.text for c in chunks] == [text[s:e] for s, e, _ in want]
            assert [c.ord for c in chunks] == list(range(len(want)))
        # One text at a time, the same chunks.
        assert [
            chunk_text(t, tokenizer, chunk_size=size, overlap=overlap) for t in texts[:5]
        ] == got[:5]


def test_truncate_tokens_cuts_where_the_tokenizer_does(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    """Titles are cut to the room a chunk leaves them, at the end of the same token as the
    tokenizer's own offsets of the whole text say (the golden texts have CJK, accents,
    control characters, long words and odd spacing)."""
    golden = json.loads((Path(__file__).parent / "data" / "chunks-golden.json").read_text())
    for text in [PROSE, *golden["texts"]]:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ends = [end for _, end in encoded["offset_mapping"]]
        for n in (0, 1, 7, 54, len(ends) - 1, len(ends), len(ends) + 5):
            want = "" if n <= 0 else text if n >= len(ends) else text[: ends[n - 1]]
            assert truncate_tokens(text, tokenizer, n) == want, (n, text[:80])
