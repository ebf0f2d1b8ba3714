"""Words and sentences of a text as the extractive generator compares them: words lower
case, lightly stemmed, stop words (and question words) left out."""

from __future__ import annotations

import re

_STOPWORDS = (
    "a an and are as at be by can do does did for from has have how i in is it its of on or "
    "our should the their there this to was we what when where which who why will with you "
    "your many much long often per any each"
)
STOPWORDS = frozenset(_STOPWORDS.split())
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_NO_END = re.compile(
    r"(\b[A-Z]|\b(Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|No|vs|Inc|Ltd|Co|Gen|Gov|Mt|Ft|Lt|Col|Rev))\.$"
)


def stem(word: str) -> str:
    """A light stemmer: plural "s" off, so "snapshots" matches "snapshot"."""
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def content_words(text: str) -> set[str]:
    return {stem(w) for w in re.findall(r"[a-z0-9]+", text.lower())} - STOPWORDS


# A citation marker as answers write it: "[2]", "[1, 3]".
MARKER = r"\[\d+(?:\s*,\s*\d+)*\]"

# The words with which an answer points at its sources instead of saying something ("Based
# on the context provided, ...", "This can be found in passage [2]."): no evidence of the
# passage it came from, and no part of its short answer.
_POINTER_WORDS = (
    "according based cited context evident found information mentioned passage provided stated "
    "states this shown"
)
POINTER_WORDS = frozenset(stem(w) for w in _POINTER_WORDS.split())


_SOURCE = (
    r"(?:the\s+)?(?:provided\s+|given\s+|first\s+|second\s+|third\s+|fourth\s+|fifth\s+)?"
    r"(?:context\s+)?(?:context|passages?|text|\[\d+\])"
)
# "..., as stated in [1]", "... is mentioned in the context.", "..., as stated in" (before
# the sentence's [n])
_POINTING = re.compile(
    rf",?\s*\b(?:as\s+)?(?:(?:is|are|was|were)\s+)?(?:stated|mentioned|shown|described|noted|"
    rf"seen|found|given|explained|cited)\s+in(?:\s+{_SOURCE}.*)?\s*$",
    re.IGNORECASE,
)
# "According to the context, ...", "Based on [2], ...", "The context states that ..."
_LEADING_POINTING = re.compile(
    rf"^\s*(?:(?:according\s+to|based\s+on)\s+{_SOURCE}(?:\s*{MARKER})?\s*,?"
    rf"|{_SOURCE}(?:\s*{MARKER})?\s+(?:states|says|mentions|shows)(?:\s+that)?)\s*",
    re.IGNORECASE,
)
_DEMONSTRATIVE = re.compile(r"\s*(?:this|that|these|those)\b", re.IGNORECASE)


def without_pointers(sentence: str) -> str:
    """`sentence` without the words at its end that point at its source (", as stated in
    [1]"); as it is when nothing else would be left."""
    return _POINTING.sub("", sentence).strip() or sentence


def leading_pointer(text: str) -> str:
    """The words opening `text` that point at its source ("According to the context, ",
    "Based on [2], ", "The context states that "), or ""."""
    found = _LEADING_POINTING.match(text)
    return found.group() if found else ""


def is_pointer(sentence: str) -> bool:
    """Whether a sentence only says where its answer is ("This is stated in passage [3].",
    "This can be seen in the passage", "This figure is cited in [2].")."""
    said = _POINTING.sub("", sentence)
    rest = content_words(said) - POINTER_WORDS
    return not rest or (len(rest) == 1 and bool(_DEMONSTRATIVE.match(said)))


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph; a period after an initial ("James O. McKinsey") or a common
    abbreviation ("St. Johns", "No. 182") ends none."""
    found: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if found and _NO_END.search(found[-1]):
            found[-1] += " " + piece
        else:
            found.append(piece)
    return found
