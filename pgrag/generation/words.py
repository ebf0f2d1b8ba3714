"""Words of a text as the extractive generator compares them: lower case, lightly stemmed,
stop words (and question words) left out."""

from __future__ import annotations

import re

_STOPWORDS = (
    "a an and are as at be by can do does did for from has have how i in is it its of on or "
    "our should the their there this to was we what when where which who why will with you "
    "your many much long often per any each"
)
STOPWORDS = frozenset(_STOPWORDS.split())


def stem(word: str) -> str:
    """A light stemmer: plural "s" off, so "snapshots" matches "snapshot"."""
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def content_words(text: str) -> set[str]:
    return {stem(w) for w in re.findall(r"[a-z0-9]+", text.lower())} - STOPWORDS
