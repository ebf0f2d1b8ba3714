"""Token-based chunking: cut a document into spans that fit the embedding model.

A document is split into segments at line breaks and sentence ends, the segments are
tokenized with the model's fast tokenizer (for BERT's WordPiece, from a per-process memory
of every space-separated run already seen: see `_RunTokenizer`), and whole segments are
packed greedily into chunks of at most `chunk_size` tokens. Chunks are spans of the original text,
so a chunk can always be found again in its document with `doc[start:end]`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import chain

import numpy as np
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# Where a segment ends. Segments are stripped afterwards, so a boundary only has to mark a
# place; none of these patterns backtracks over long runs of spaces. (\u201c\u201d\u2018\u2019
# are curly quotes, \u3002\uff01\uff1f the CJK full stop, exclamation and question marks.)
_OPENER = r"[\"'\u201c\u2018(\[]?[A-Z0-9\u00c0-\u00d6\u00d8-\u00de]"  # how a sentence starts
_BOUNDARY = re.compile(
    r"\n\s*"  # a line break (blank lines between paragraphs included)
    rf"|(?<=[.!?])\s+(?={_OPENER})"  # "end. Next"
    rf"|(?<=[.!?][\"'\u201d\u2019)\]])\s+(?={_OPENER})"  # 'end." Next' and "end.) Next"
    r"|(?<=[\u3002\uff01\uff1f])"  # CJK sentence ends need no space
)


@dataclass(frozen=True)
class Chunk:
    ord: int  # 0-based position in the document
    text: str  # an exact span of the original text: text == doc[start:end]
    start: int
    end: int
    token_count: int  # tokens of `text` alone (no special tokens, no title)


def embed_input(title: str | None, chunk_text: str) -> str:
    """The text that gets embedded for a chunk: the document's title, a newline, the chunk."""
    title = (title or "").strip()
    return f"{title}\n{chunk_text}" if title else chunk_text


def segment_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each paragraph line or sentence of `text`, whitespace stripped,
    empty ones left out."""
    spans = []
    pos = 0
    for m in chain(_BOUNDARY.finditer(text), [None]):
        end = len(text) if m is None else m.start()
        piece = text[pos:end]
        stripped = piece.strip()
        if stripped:
            start = pos + len(piece) - len(piece.lstrip())
            spans.append((start, start + len(stripped)))
        if m is not None:
            pos = m.end()
    return spans


# Characters per batched tokenizer call: enough to keep the tokenizer's threads busy, few
# enough that its per-token objects do not pile up (one call over a 20 MB document peaks
# at 2.3 GB; calls of 1 MB keep the whole chunking under 300 MB).
_TOKENIZE_CHARS = 1_000_000


def _token_offsets(
    tokenizer: PreTrainedTokenizerFast, texts: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Tokens per text, and the (start, end) character offsets of all their tokens, one row
    per token, in order: no special tokens, no truncation. Offsets are int32: documents
    are limited to tens of MB (`max_document_mb`), far below 2**31 characters."""
    counts, offsets = [], []
    first = 0
    while first < len(texts):
        last, size = first, 0
        while last < len(texts) and size < _TOKENIZE_CHARS:
            size += len(texts[last])
            last += 1
        part = _batch_offsets(tokenizer, texts[first:last])
        n = np.fromiter(map(len, part), dtype=np.int64, count=len(part))
        flat = chain.from_iterable(chain.from_iterable(part))
        counts.append(n)
        offsets.append(np.fromiter(flat, dtype=np.int32, count=2 * int(n.sum())).reshape(-1, 2))
        first = last
    return np.concatenate(counts), np.concatenate(offsets)


def _batch_offsets(
    tokenizer: PreTrainedTokenizerFast, texts: list[str]
) -> list[list[tuple[int, int]]]:
    """Token offsets of each text, in one batched call (the fast tokenizer works through the
    texts in parallel)."""
    backend = tokenizer.backend_tokenizer
    if backend.truncation is None and backend.padding is None:
        # The Rust tokenizer directly: the same tokens, without the cost of building a
        # BatchEncoding (more than half the time on a large document).
        return [e.offsets for e in backend.encode_batch(texts, add_special_tokens=False)]
    # A tokenizer left set up for truncation or padding: let transformers switch that off.
    encoded = tokenizer(
        texts,
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        truncation=False,
        padding=False,
        verbose=False,
    )
    return encoded["offset_mapping"]


def chunk_text(
    text: str, tokenizer: PreTrainedTokenizerFast, *, chunk_size: int, overlap: int
) -> list[Chunk]:
    """Cut `text` into chunks of at most `chunk_size` tokens of `tokenizer`.

    Chunks end at a segment boundary (a line break or a sentence end) when one lies within
    reach; a segment longer than `chunk_size` is cut between words (between tokens when a
    word run is longer than a chunk). Each chunk after the first starts with up to `overlap`
    tokens taken from the end of the previous one: whole trailing segments where they fit,
    else the last `overlap` tokens. The overlap is shortened when that lets the next segment
    fit whole.

    `token_count` is counted on the segments as tokenized here. With a WordPiece tokenizer
    (BERT, MiniLM) that equals the count of `tokenizer(chunk.text)`; other tokenizers may
    differ by a token or two where a chunk was cut inside a word.

    The caller guarantees `chunk_size + title tokens + 2 special tokens <= max_seq_length`
    of the embedding model (see `embed_input`), so a chunk is embedded whole; anything past
    that is truncated by the embedder.

    The document is tokenized once, in batched calls, and every search is a bisection:
    a 5 MB document takes about 3 s on 2 cores. A document of only whitespace (or of
    nothing the tokenizer keeps) gives [].
    """
    return chunk_texts([text], tokenizer, chunk_size=chunk_size, overlap=overlap)[0]


def chunk_texts(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerFast, *, chunk_size: int, overlap: int
) -> list[list[Chunk]]:
    """`chunk_text` of each text.

    With a tokenizer that splits words at whitespace and punctuation before anything else
    (BERT's WordPiece), a text's tokens are those of its space-separated runs, each of
    which is tokenized once per process and remembered (`_RunTokenizer`): a corpus repeats
    its words, so most documents cost no tokenizer call at all. The tokens are then shared
    out among the text's segments (a segment boundary is always a space or a punctuation
    mark, so they are the segments' own tokens). Other tokenizers get each segment apart,
    as the chunks are defined.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if not 0 <= overlap < chunk_size:
        raise ValueError(f"overlap must be in [0, chunk_size), got {overlap} for {chunk_size}")
    runs = _run_tokenizer(tokenizer)
    chunked: list[list[Chunk]] = []
    for text in texts:
        spans = segment_spans(text)
        if not spans:
            chunked.append([])
            continue
        starts = np.array([s for s, _ in spans], dtype=np.int32)
        if runs is not None:
            tokens = runs.offsets(text)
            counts = np.diff(np.searchsorted(tokens[:, 0], starts), append=len(tokens))
            tok_start, tok_end = tokens[:, 0], tokens[:, 1]
        else:  # offsets relative to each segment's start
            counts, tokens = _token_offsets(tokenizer, [text[s:e] for s, e in spans])
            base = np.repeat(starts, counts)
            tok_start, tok_end = tokens[:, 0] + base, tokens[:, 1] + base
        chunked.append(_pack(text, counts, tok_start, tok_end, chunk_size, overlap))
    return chunked


def truncate_tokens(text: str, tokenizer: PreTrainedTokenizerFast, max_tokens: int) -> str:
    """`text` up to the end of its first `max_tokens` tokens (no special tokens), tokenized
    as `chunk_texts` does: from the memory of runs where the tokenizer allows it."""
    if max_tokens <= 0:
        return ""
    runs = _run_tokenizer(tokenizer)
    tokens = runs.offsets(text) if runs is not None else _token_offsets(tokenizer, [text])[1]
    return text if len(tokens) <= max_tokens else text[: int(tokens[max_tokens - 1, 1])]


# The characters that BERT's normalizer turns into a space or its pre-tokenizer splits on:
# no token spans them, so the text between them can be tokenized apart. (Control characters
# such as \x0b or \x1c are not among them: the normalizer deletes them, joining their sides.)
_RUN = re.compile(r"([^ \t\n\r\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+)")
_RUN_CACHE_LIMIT = 500_000  # distinct runs remembered per tokenizer
_RUN_BATCH = 10_000  # new runs per tokenizer call


class _RunTokenizer:
    """Token offsets of a text from the tokens of its runs, each run tokenized once."""

    def __init__(self, backend: Tokenizer) -> None:
        self.backend = Tokenizer.from_str(backend.to_str())  # a copy without truncation
        self.backend.no_truncation()
        self.backend.no_padding()
        self.known: dict[str, np.ndarray] = {}  # run -> (tokens, 2) offsets within the run

    def offsets(self, text: str) -> np.ndarray:
        """(start, end) character offsets of every token of `text`, int32, one row each."""
        # [space, run, space, run, ..., space]: the runs and, from the lengths, their starts.
        parts = _RUN.split(text)
        runs = parts[1::2]
        if new := list(set(runs).difference(self.known)):
            if len(self.known) + len(new) > _RUN_CACHE_LIMIT:
                self.known.clear()
                new = list(set(runs))
            for first in range(0, len(new), _RUN_BATCH):
                batch = new[first : first + _RUN_BATCH]
                encoded = self.backend.encode_batch(batch, add_special_tokens=False)
                for run, e in zip(batch, encoded, strict=True):
                    self.known[run] = np.array(e.offsets, dtype=np.int32).reshape(-1, 2)
        if not runs:
            return np.zeros((0, 2), dtype=np.int32)
        pieces = [self.known[r] for r in runs]
        counts = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        ends = np.cumsum(np.fromiter(map(len, parts), dtype=np.int64, count=len(parts)))
        starts = ends[0::2][:-1].astype(np.int32)  # each run starts where a space part ends
        return np.concatenate(pieces) + np.repeat(starts, counts)[:, None]


@cache
def _run_tokenizer(tokenizer: PreTrainedTokenizerFast) -> _RunTokenizer | None:
    """The run tokenizer of `tokenizer` when its tokens never span a space, else None."""
    backend = tokenizer.backend_tokenizer
    splits_first = isinstance(backend.pre_tokenizer, pre_tokenizers.BertPreTokenizer)
    if splits_first and isinstance(backend.normalizer, (normalizers.BertNormalizer, type(None))):
        return _RunTokenizer(backend)
    return None


def _pack(
    text: str,
    counts: np.ndarray,
    tok_start: np.ndarray,
    tok_end: np.ndarray,
    chunk_size: int,
    overlap: int,
) -> list[Chunk]:
    """Chunks of `text` from its tokens' character offsets and its segments' token counts."""
    n = len(tok_start)
    if n == 0:
        return []

    # Places a chunk may end (or the next one start), best first, as sorted token indices;
    # each array ends with n, the end of the document.
    seg_first = (np.cumsum(counts) - counts)[counts > 0]  # first token of each segment
    gap_before = np.ones(n, dtype=bool)
    gap_before[1:] = tok_start[1:] > tok_end[:-1]  # whitespace before: a word starts here
    gap_before[seg_first] = True
    char_cut = np.ones(n, dtype=bool)
    char_cut[1:] = tok_start[1:] >= tok_end[:-1]  # the two tokens do not share a character
    tiers = [
        np.append(seg_first, n),  # segment boundaries
        np.append(np.flatnonzero(gap_before), n),  # word starts
        np.append(np.flatnonzero(char_cut), n),  # character boundaries
    ]
    del gap_before, char_cut

    def last_in(lo: int, hi: int) -> int:
        """The best place in (lo, hi] to end a chunk: the last one of the best tier."""
        for places in tiers:
            i = int(np.searchsorted(places, hi, side="right")) - 1
            if i >= 0 and places[i] > lo:
                return int(places[i])
        return hi

    def first_in(lo: int, hi: int) -> int:
        """The best place in [lo, hi) to start a chunk: the first one of the best tier."""
        for places in tiers:
            i = int(np.searchsorted(places, lo, side="left"))
            if i < len(places) and places[i] < hi:
                return int(places[i])
        return lo

    chunks: list[Chunk] = []
    a, prev_b = 0, 0  # this chunk starts at token a; the previous one ended at prev_b
    while True:
        # End: the last good place within chunk_size tokens that adds new text.
        b = n if a + chunk_size >= n else last_in(prev_b, a + chunk_size)
        start, end = int(tok_start[a]), int(tok_end[b - 1])
        piece = text[start:end]
        stripped = piece.strip()
        if stripped:
            start += len(piece) - len(piece.lstrip())
            chunks.append(Chunk(len(chunks), stripped, start, start + len(stripped), b - a))
        if b == n:
            return chunks
        # Start of the next chunk: up to `overlap` tokens before b, but no further back
        # than lets the next segment fit whole, and after this chunk's start.
        next_b = int(tiers[0][np.searchsorted(tiers[0], b, side="right")])
        lo = b - overlap
        if next_b - b <= chunk_size:
            lo = max(lo, next_b - chunk_size)
        lo = max(lo, a + 1)
        a, prev_b = (first_in(lo, b) if lo < b else b), b
