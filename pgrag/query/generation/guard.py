"""The repetition guard: an answer never says the same sentence twice.

A small model can fall into a loop, writing one sentence again and again until the token
limit (SmolLM2-135M once wrote the same sentence fifteen times). `RepetitionGuard` wraps any
generator's stream and ends it where the answer begins a sentence it has already written:

    guard = RepetitionGuard(generator.stream(request))
    for piece in guard:
        ...
    guard.repeated   # the sentence that was about to come again, or None

Pieces pass through as they come, except while the sentence being written could still turn
out to be a repeat (its words so far begin an earlier sentence): those are held back, and
let through as soon as the sentence says something new. So the answer keeps every sentence
once, the repeat is never shown, and streaming waits only on text that looks like a loop.

Sentences are compared by their words, ignoring case, spacing, punctuation and [n]
citations; a sentence ends at ., ! or ? followed by a space, or at a line break.
Sentences of fewer than MIN_WORDS words ("Yes.", a list's "1.") may repeat.

A loop need not be made of sentences: "1.67 cubic kilometers; 1.67 cubic kilometers; ...",
"-PQP-PQP-PQP", "[25]. [26]. [27]." ran SmolLM2 to its token limit too. So the guard also
ends the answer where its last words are one short phrase said again and again, back to
back (`loops`: a phrase of up to MAX_PHRASE words, [n] citations counted as one word,
repeated until it makes LOOP_WORDS words, three times at least). Those repeats were already
streamed; the answer stops before the next.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

MIN_WORDS = 3
MAX_PHRASE = 16
LOOP_WORDS = 12
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*\s+|\n+")
_CITATION = re.compile(r"\[\s*\d+(?:\s*,\s*\d+)*\s*\]")
_UNFINISHED_CITATION = re.compile(r"\[[\d,\s]*$")
_WORD = re.compile(r"\w+")
_WORD_OR_CITATION = re.compile(r"\[\s*\d+(?:\s*,\s*\d+)*\s*\]|\w+")


def words(sentence: str) -> tuple[str, ...]:
    """What a sentence is compared by: its words, lower-cased, citations left out."""
    return tuple(_WORD.findall(_CITATION.sub(" ", sentence).lower()))


def loops(text: str) -> str | None:
    """The phrase that the end of `text` repeats back to back (see the module's docstring),
    or None."""
    tokens = ["[n]" if t.startswith("[") else t for t in _WORD_OR_CITATION.findall(text.lower())]
    for size in range(1, MAX_PHRASE + 1):
        times = max(3, -(-LOOP_WORDS // size))  # ceil(LOOP_WORDS / size), at least 3
        tail = tokens[-size * times :]
        if len(tail) == size * times and tail == tail[:size] * times:
            return " ".join(tail[:size])
    return None


class RepetitionGuard:
    """Iterates over the pieces of `stream` until the answer would repeat a sentence."""

    def __init__(self, stream: Iterable[str]) -> None:
        self._stream = stream
        self.repeated: str | None = None  # the sentence or phrase that came again, if one did
        self._said: set[tuple[str, ...]] = set()
        self._prefixes: set[tuple[str, ...]] = set()  # word prefixes of the sentences said

    def __iter__(self) -> Iterator[str]:
        pending = ""  # the sentence being written (text after the last sentence's end)
        held = ""  # the text not yet let through: empty, or ends with `pending`
        text = ""  # the whole answer so far
        pieces = iter(self._stream)
        try:
            for piece in pieces:
                text += piece
                if phrase := loops(text):
                    self.repeated = phrase
                    return  # what is held (part of the loop) is dropped with this piece
                pending += piece
                held += piece
                while found := _SENTENCE_END.search(pending):
                    sentence, pending = pending[: found.end()], pending[found.end() :]
                    if self._repeats(sentence):
                        # Let through what came before the repeat, never the repeat itself.
                        before = held[: max(len(held) - len(sentence) - len(pending), 0)]
                        if before:
                            yield before
                        return
                if self._could_repeat(pending):
                    before, held = held[: len(held) - len(pending)], pending
                else:
                    before, held = held, ""
                if before:
                    yield before
            # The last sentence may end the answer without a space after it.
            if held and not (_SENTENCE_END.search(pending + " ") and self._repeats(pending)):
                yield held
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # a generator stopped early releases its model at once

    def _repeats(self, sentence: str) -> bool:
        """Whether `sentence` was said before (then it is recorded as `repeated`); else it
        is remembered."""
        said = words(sentence)
        if len(said) < MIN_WORDS:
            return False
        if said in self._said:
            self.repeated = sentence.strip()
            return True
        self._said.add(said)
        self._prefixes.update(said[:n] for n in range(1, len(said) + 1))
        return False

    def _could_repeat(self, pending: str) -> bool:
        """Whether the unfinished sentence `pending` begins as a sentence said before."""
        said = words(_UNFINISHED_CITATION.sub("", pending))
        if not said:
            return bool(self._said)
        # The last word may be cut short: it matches the start of a word.
        *whole, last = said
        return any(
            len(p) == len(said) and list(p[:-1]) == whole and p[-1].startswith(last)
            for p in self._prefixes
        )
