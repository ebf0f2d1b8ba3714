"""Lexical analysis for BM25: text to lexemes, in the worker, the same way for chunks and
queries.

A text is lower-cased and split into words (see `_WORD`: close to PostgreSQL's parser); stop
words are dropped and the rest stemmed with the Snowball stemmer of the collection's
language (the algorithm of PostgreSQL's `english_stem` dictionary). PostgreSQL's
`to_tsvector` gives nearly the same lexemes, but costs about 180 µs of server CPU per
abstract-sized chunk; here the work is done in the worker processes, which scale out, and
the server only stores the result.

Collections name their language in `text_config` (a PostgreSQL text search configuration
name, e.g. 'english'); 'simple' keeps every word unstemmed.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

import Stemmer

# A word: a decimal number ("0.05") or runs of letters and digits joined by hyphens
# ("cell-cycle"), in a text whose underscores became spaces. As PostgreSQL's parser does, a
# hyphenated word of letters counts whole (stemmed) and as its parts; one with digits
# ("covid-19", "il-6") as its parts only.
_WORD = re.compile(r"\d+(?:\.\d+)+|\w+(?:-\w+)*")
_PART = re.compile(r"\w+")

# PostgreSQL's english.stop: the stop words of the 'english' configuration.
_ENGLISH_STOP = """
i me my myself we our ours ourselves you your yours yourself yourselves he him his
himself she her hers herself it its itself they them their theirs themselves what which
who whom this that these those am is are was were be been being have has had having do
does did doing a an the and but if or because as until while of at by for with about
against between into through during before after above below to from up down in out on
off over under again further then once here there when where why how all any both each
few more most other some such no nor not only own same so than too very s t can will
just don should now
"""
ENGLISH_STOP_WORDS = frozenset(_ENGLISH_STOP.split())

_CACHE_LIMIT = 1_000_000  # distinct words remembered; the vocabulary of a corpus is Zipfian


class Analyzer:
    """Turns text into lexeme counts; remembers each word's lexeme ('' for one that has
    none: a stop word, a hyphenated word with digits)."""

    def __init__(self, config: str) -> None:
        if config == "simple":
            self._stem = None
            self._stop: frozenset[str] = frozenset()
        else:
            try:
                self._stem = Stemmer.Stemmer(config)
            except KeyError:
                raise ValueError(
                    f"no stemmer for text_config {config!r}: use 'simple' or one of"
                    f" {', '.join(Stemmer.algorithms())}"
                ) from None
            self._stop = ENGLISH_STOP_WORDS if config == "english" else frozenset()
        self._lexeme: dict[str, str] = {}

    def lexemes(self, text: str) -> Counter[str]:
        """Each lexeme of `text` with its count (stop words left out)."""
        words = _WORD.findall(text.lower().replace("_", " "))
        if "-" in text:
            words += _PART.findall(" ".join(w for w in words if "-" in w))
        known = self._lexeme
        if new := {w for w in words if w not in known}:
            if len(known) > _CACHE_LIMIT:
                known.clear()
                new = set(words)
            kept = [w for w in new if w not in self._stop and not _numbered_compound(w)]
            stems = self._stem.stemWords(kept) if self._stem else kept
            known.update(zip(kept, stems, strict=True))
            known.update((w, "") for w in new if w not in known)
        counts = Counter(map(known.__getitem__, words))
        del counts[""]
        return counts


def _numbered_compound(word: str) -> bool:
    """A hyphenated word with digits: it counts as its parts only."""
    return "-" in word and any(c.isdigit() for c in word)


@cache
def analyzer(config: str) -> Analyzer:
    """One analyzer per text configuration and process."""
    return Analyzer(config)
