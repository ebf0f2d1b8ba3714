"""Short answers without a model: the phrase of a sentence that answers a question.

    short_answer("When was the exchange re-established?", "It was re-established in April 1991.")
    -> "April 1991"
    concise(question, answer) -> "April 1991 [2]"   # from an answer's first cited sentence

The question's wording says what kind of answer it wants (`answer_kind`: a number, a date, a
name or place, or anything else). The sentence is cut into phrases at the question's own
words and at punctuation, as SQuAD-style answers are the part of the sentence that the
question does not already say; each phrase loses the function words at its ends, and the
best is the one that holds words of the wanted kind, lies closest to the question's words,
and is short. A heuristic, measured by `bench/qa_eval.py` (token F1 against gold answers).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pgrag.query.generation.words import (
    MARKER,
    STOPWORDS,
    is_pointer,
    leading_pointer,
    split_sentences,
    stem,
    without_pointers,
)

# A sentence of an answer and the citation markers after it: "It was ... 1991. [2]".
_CITED = re.compile(rf"(.+?)((?:\s*{MARKER})+)", re.DOTALL)

_NUMBER_WORDS = (
    "one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty "
    "forty fifty hundred thousand million billion trillion dozen half percent"
)
NUMBER_WORDS = frozenset(_NUMBER_WORDS.split())
_MONTHS = "january february march april may june july august september october november december"
MONTHS = frozenset(_MONTHS.split())
# Words a short answer neither starts nor ends with.
_EDGE_WORDS = (
    "about after against also although among around because been before being between both "
    "but during had into like more most not nor only other over since some such than that "
    "then these they those through under until upon very were while within without would "
    "he she his her him it them they which who whom whose"
)
EDGE_WORDS = STOPWORDS | frozenset(_EDGE_WORDS.split())
QUOTES_AND_PUNCTUATION = "\"'()[]{},;:.!?\u201c\u201d\u2018\u2019"
# What a "what/which ..." question asks for when its answer is a proper name.
_NAMED = (
    "company|country|city|town|team|person|poet|general|actor|chemist|group|party|river|state|"
    "continent|organi[sz]ation|university|stadium|area|region|entity|division|player|king|"
    "emperor|author|writer|scientist|president|family|tribe|language|nation|island|treaty|"
    "proclamation|museum|school|newspaper|club|street|building|church|station|network"
)
_KINDS = [
    # (kind, question pattern), the first that matches wins
    ("percent", r"\b(percentage|percent)\b"),
    (
        "number",
        r"\bhow (many|much|long|old|far|large|big|tall|high|deep|wide|fast|often)\b"
        r"|\bwhat (number|amount|proportion|share)\b",
    ),
    ("date", r"\bwhen\b|\b(what|which|in what) (year|date|time|century|decade|month|day|era)\b"),
    ("name", rf"\b(who|whom|whose|where)\b|\bname\b|\b(what|which) (\w+ ){{0,2}}({_NAMED})s?\b"),
]
JOINERS = frozenset({"and", "of", "de", "von", "van", "&", "-", "\u2013", "to"})  # in a run
MAX_WORDS = 6  # longer phrases are cut to the words nearest the question's
PROXIMITY_WEIGHT = 0.5
KIND_BONUS = 1.0
LENGTH_PENALTY = 0.05  # per word beyond MAX_WORDS / 2


def answer_kind(question: str) -> str:
    """The kind of answer a question wants: "percent", "number", "date", "name" (people and
    places) or "other"."""
    q = question.lower()
    return next((kind for kind, pattern in _KINDS if re.search(pattern, q)), "other")


def kind_strength(word: str, kind: str, first: bool = False) -> int:
    """How surely `word` (punctuation stripped) is an answer of `kind`: 2 surely (a year
    for a date, digits for a number, a capitalised word for a name), 1 maybe (a number
    word, a capitalised word for any other question), 0 not. A capital at the start of a
    sentence (`first`) says nothing."""
    low = word.lower()
    digits = any(ch.isdigit() for ch in word)
    capital = word[:1].isupper() and not first
    if kind == "percent":  # "56.2%"; a bare number maybe ("56 percent": the run holds both)
        return 2 if "%" in word or low in ("percent", "per cent") else int(digits)
    if kind == "number":
        year = bool(re.fullmatch(r"1[0-9]{3}|20[0-9]{2}", word))
        return 1 if year or low in NUMBER_WORDS else 2 * digits
    if kind == "date":
        if re.fullmatch(r"[0-9]{3,4}s?|[0-9]{1,2}(st|nd|rd|th)", low) or low in MONTHS:
            return 2
        return 1 if digits or low == "century" else 0
    if kind == "name":
        return 2 * capital
    return int(capital)


def holds_kind(question: str, sentence: str) -> bool:
    """Whether `sentence` has a word, not said by the question, surely of the kind of
    answer the question asks for (a year for "when", digits for "how many")."""
    kind = answer_kind(question)
    return kind != "other" and any(
        not w.asked and kind_strength(w.text, kind, w.at == 0) == 2
        for w in words_of(question, sentence)
    )


@dataclass
class Word:
    text: str  # edge punctuation removed
    raw: str  # as written
    at: int  # index in the sentence
    asked: bool  # the question says it too
    breaks_after: bool  # punctuation ends a phrase here


def words_of(question: str, sentence: str) -> list[Word]:
    """The words of `sentence`, each marked when the question says it too."""
    asked = {stem(w) for w in re.findall(r"[a-z0-9]+", question.lower())} - STOPWORDS
    found = []
    for i, raw in enumerate(sentence.split()):
        text = raw.strip(QUOTES_AND_PUNCTUATION)
        parts = [stem(w) for w in re.findall(r"[a-z0-9]+", text.lower())]
        found.append(
            Word(text, raw, i, bool(parts) and all(p in asked for p in parts), raw[-1:] in ',;:)”"')
        )
    return found


def _named(w: Word) -> bool:
    """Capitalised, and no function word ("The" opening a sentence is no part of a name)."""
    return w.text[:1].isupper() and w.text.lower() not in EDGE_WORDS


def join_names(words: list[Word]) -> None:
    """A name the question says in part ("Who founded McKinsey?": "James O. McKinsey") is
    one phrase: in a run of capitalised words that the question says only some of, none
    counts as `asked`."""
    run: list[Word] = []
    for w in [*words, None]:
        if w is not None and _named(w) and not (run and run[-1].breaks_after):
            run.append(w)
            continue
        if any(x.asked for x in run) and not all(x.asked for x in run):
            for x in run:
                x.asked = False
        run = [w] if w is not None and _named(w) else []


def phrases(words: list[Word]) -> list[list[Word]]:
    """Runs of words the question does not say, cut at punctuation, function words trimmed
    off both ends."""
    runs: list[list[Word]] = [[]]
    for w in words:
        if w.asked or not w.text:
            runs.append([])
            continue
        runs[-1].append(w)
        if w.breaks_after:
            runs.append([])
    trimmed = []
    for run in runs:
        while run and run[0].text.lower() in EDGE_WORDS:
            run = run[1:]
        while run and run[-1].text.lower() in EDGE_WORDS:
            run = run[:-1]
        if run:
            trimmed.append(run)
    return trimmed


def short_answer(question: str, sentence: str, opens: bool = True) -> str:
    """The phrase of `sentence` that best answers `question`; the sentence itself when it
    has no phrase the question does not already say. `opens`: whether the sentence's first
    word opens a sentence (its capital then says nothing)."""
    words = words_of(question, sentence)
    kind = answer_kind(question)
    if kind == "name":
        join_names(words)
    anchors = [w.at for w in words if w.asked]

    def distance(w: Word) -> int:
        return min((abs(w.at - a) for a in anchors), default=0)

    def strength(w: Word) -> int:
        found = kind_strength(w.text, kind, opens and w.at == 0)
        return 2 if kind == "date" and found and day_of_month(words, w) else found

    def closeness(run: list[Word]) -> float:
        """How much of the question surrounds the phrase: each of its words said in the
        sentence counts 1 / (1 + its distance in words from the phrase)."""
        return sum(1 / (1 + min(abs(w.at - a) for w in run)) for a in anchors)

    def score(run: list[Word]) -> float:
        typed = max(strength(w) for w in run) / 2
        extra = max(len(run) - MAX_WORDS / 2, 0)
        return KIND_BONUS * typed + PROXIMITY_WEIGHT * closeness(run) - LENGTH_PENALTY * extra

    candidates = phrases(words)
    if not candidates:
        return sentence
    best = max(candidates, key=score)
    top = max(strength(w) for w in best)
    if top == 2:  # the run of words of the wanted kind nearest to the question's words
        best = min(typed_runs(best, strength), key=lambda run: min(map(distance, run)))
    if len(best) > MAX_WORDS:
        centre = sorted(best, key=distance)[0].at
        start = max(best[0].at, min(centre - MAX_WORDS // 2, best[-1].at - MAX_WORDS + 1))
        best = [w for w in best if start <= w.at < start + MAX_WORDS]
    return as_written(best)


def day_of_month(words: list[Word], w: Word) -> bool:
    """Whether `w` is the day of a date beside its month ("28 February", "February 28")."""
    beside = words[max(w.at - 1, 0) : w.at + 2]
    return bool(re.fullmatch(r"[0-9]{1,2}", w.text)) and any(
        x.text.lower() in MONTHS for x in beside
    )


def typed_runs(words: list[Word], strength: Callable[[Word], int]) -> list[list[Word]]:
    """Runs of words surely of the wanted kind, with the words that join them inside a
    name or a range ("Robert Lane and Benjamin Vail", "1500 to 1850")."""
    runs: list[list[Word]] = []
    current: list[Word] = []
    joiner: Word | None = None  # a joining word after the run's last typed word
    for w in words:
        if strength(w) == 2:
            current += [joiner, w] if joiner else [w]
            joiner = None
        elif current and joiner is None and w.text.lower() in JOINERS:
            joiner = w
        else:
            runs += [current] if current else []
            current, joiner = [], None
    return runs + ([current] if current else [])


def as_written(words: list[Word]) -> str:
    """The words as the sentence has them, without the punctuation around the phrase (the
    period of an initial stays: "James O.")."""
    text = " ".join(w.raw for w in words)
    initial = re.search(r"\b[A-Z]\.$", text)
    text = text.strip(QUOTES_AND_PUNCTUATION)
    if text.count("(") > text.count(")"):  # "NFL (National Football League": "NFL"
        return text[: text.rindex("(")].rstrip() or text
    return text + ("." if initial else "")


def concise(question: str, answer: str) -> str:
    """The short answer inside `answer`'s first cited sentence, followed by that sentence's
    citation markers (any generator's answer: it cites passages as [n])."""
    answer = answer.strip()
    lead = leading_pointer(answer)  # "According to [1], ..." cites, and says nothing
    answer = answer[len(lead) :]
    found = _CITED.match(answer)
    if found:  # the last sentence before the first marker that says more than where it is
        sentences, markers = split_sentences(found.group(1).strip()), found.group(2).strip()
        sentence = next((s for s in reversed(sentences) if not is_pointer(s)), sentences[-1])
    else:
        sentence = split_sentences(answer)[0]
        markers = " ".join(re.findall(MARKER, lead))
    pointing = leading_pointer(sentence)
    opens = not pointing and not (lead and answer.startswith(sentence))
    phrase = short_answer(question, without_pointers(sentence[len(pointing) :]), opens)
    return f"{phrase} {markers}".strip()
