"""The prompt: instructions, numbered passages [1]..[n] and the question, fitted to a context.

Passages are added best first while they fit the token budget. The first one that does not
fit whole is trimmed (at a word boundary, with its `[n] title` header intact) when enough
room is left for a useful part of it, and every later one is dropped whole. So the numbers
[1]..[n] always match `Request.passages[0..n-1]`, and a header is never cut.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pgrag.query.generation import GeneratorError, Source

SYSTEM = (
    "You answer questions using only the given context. If the context does not contain the "
    "answer, say you don't know. Answer in one short sentence that uses the exact words of the "
    "context, and cite the passage you used by its number, like [1]."
)
# Tokens a chat template adds around each message (role markers, separators).
MESSAGE_OVERHEAD = 8
# A trimmed passage shorter than this is not worth its header: it is dropped instead.
MIN_PASSAGE_TOKENS = 24

TokenCounter = Callable[[str], int]


def approx_tokens(text: str) -> int:
    """A tokenizer-free upper estimate (English BPE averages about 4 characters a token)."""
    return math.ceil(len(text) / 3)


def header(n: int, passage: Source) -> str:
    return f"[{n}] {(passage.title or '').strip() or passage.external_id}:"


def one_line(text: str) -> str:
    return " ".join(text.split())


def trim_to_tokens(text: str, max_tokens: int, count: TokenCounter) -> str:
    """The longest prefix of `text` ending at a word boundary, plus " ...", that counts at
    most `max_tokens` tokens; "" when not even one word fits."""
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    lo, hi = 0, len(ends)  # the answer is the largest word count in [lo, hi] that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[: ends[mid - 1]] + " ...") <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[: ends[lo - 1]] + " ..." if lo else ""


@dataclass
class Prompt:
    messages: list[dict[str, str]]  # chat messages: system, user
    passages: int  # passages [1]..[passages] included
    trimmed: bool  # whether the last included one was trimmed
    tokens: int  # prompt tokens, as counted by the counter


def build_prompt(
    question: str,
    passages: Sequence[Source],
    *,
    budget: int,
    count: TokenCounter = approx_tokens,
) -> Prompt:
    """Chat messages asking `question` over `passages`, at most `budget` tokens by `count`."""
    intro, outro = "Context:\n", f"\nQuestion: {one_line(question)}"
    used = count(SYSTEM) + count(intro) + count(outro) + 2 * MESSAGE_OVERHEAD
    blocks: list[str] = []
    trimmed = False
    for n, passage in enumerate(passages, 1):
        head, text = header(n, passage), one_line(passage.text)
        cost = count(f"{head} {text}\n")
        if used + cost <= budget:
            blocks.append(f"{head} {text}\n")
            used += cost
            continue
        room = budget - used - count(f"{head} \n")
        text = trim_to_tokens(text, room, count) if room >= MIN_PASSAGE_TOKENS else ""
        if text:
            blocks.append(f"{head} {text}\n")
            used += count(blocks[-1])
            trimmed = True
        break
    if not blocks and passages:
        raise GeneratorError(
            f"the question leaves no room for any passage in a context of {budget} prompt "
            "tokens: ask a shorter question or raise PGRAG_MAX_CONTEXT_TOKENS"
        )
    user = intro + "".join(blocks) + outro
    return Prompt(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        len(blocks),
        trimmed,
        used,
    )
