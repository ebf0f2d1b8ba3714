"""Answer scoring against SQuAD v1.1's official evaluate script, and short answers on fixed
sentences (no services)."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest

from pgrag.evaluation.answers import (
    contains,
    f1,
    normalize_answer,
    score_answer,
    strip_citations,
    token_f1,
)
from pgrag.query.generation.spans import answer_kind, concise, short_answer

# --- SQuAD v1.1 evaluate-v1.1.py, verbatim but for names and types: the reference. --------


def squad_normalize(s: str) -> str:
    def remove_articles(text: str) -> str:
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text: str) -> str:
        return " ".join(text.split())

    def remove_punc(text: str) -> str:
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text: str) -> str:
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def squad_f1(prediction: str, ground_truth: str) -> float:
    prediction_tokens = squad_normalize(prediction).split()
    ground_truth_tokens = squad_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


CASES = [
    "The Denver Broncos",
    "an apple a day",
    "  Theatre,   the   Saxon Garden!  ",
    "Ogród Saski",
    "\u2018often damaging\u2019",  # typographic quotes are not ASCII punctuation: kept
    "1,435 mm (4 ft 8 1\u20442 in)",
    "A.D. 1066 -- the Norman conquest",
    "there'a theater",  # "a" inside a word stays
    "THE",
    "",
]


@pytest.mark.parametrize("text", CASES)
def test_normalization_is_squads(text: str) -> None:
    assert normalize_answer(text) == squad_normalize(text)


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("Denver Broncos", "The Denver Broncos"),
        ("the Broncos of Denver won", "Denver Broncos"),
        ("in April 1991", "April 1991"),
        ("Carolina Panthers", "Denver Broncos"),
        ("", "Denver Broncos"),
        ("the the the", "a"),  # both normalize to nothing
        ("308 308 points", "308"),
    ],
)
def test_token_f1_is_squads(prediction: str, gold: str) -> None:
    assert f1(prediction, gold) == pytest.approx(squad_f1(prediction, gold))


def test_best_gold_and_whole_word_containment() -> None:
    golds = ["Denver Broncos", "Broncos"]
    assert token_f1("the Broncos", golds) == pytest.approx(1.0)
    assert token_f1("nothing", []) == 0.0
    assert contains("In 2016 the Denver Broncos won.", golds)
    assert not contains("The Broncosaurus won.", ["Broncos"])  # whole words only
    assert not contains("anything", [""])  # an empty gold matches nothing


def test_citation_markers_are_not_part_of_the_answer() -> None:
    stripped = strip_citations("It was 308 points. [1] They won [2, 3]")
    assert stripped == "It was 308 points. They won"
    scored = score_answer("308 [1]", ["308"], cited=["0-0"], relevant={"0-0"})
    assert scored == {"contains": 1.0, "f1": 1.0, "cites_gold": 1.0, "words": 1.0}
    assert score_answer("308 [1]", ["308"], cited=["9-9"], relevant={"0-0"})["cites_gold"] == 0.0


# --- short answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("How many points did the Panthers defense surrender?", "number"),
        ("What percentage of Warsaw's population was Protestant?", "percent"),
        ("When was Warsaw's stock exchange brought back to life?", "date"),
        ("In what year did Tesla die?", "date"),
        ("Who founded McKinsey & Company?", "name"),
        ("Which team was suspended from the MLS?", "name"),
        ("What is the bad air theory officially known as?", "other"),
    ],
)
def test_answer_kind(question: str, kind: str) -> None:
    assert answer_kind(question) == kind


@pytest.mark.parametrize(
    ("question", "sentence", "expected"),
    [
        (
            "When was Warsaw's stock exchange re-established?",
            "It was re-established in April 1991, following the end of communist control.",
            "April 1991",
        ),
        (
            "How many points did the Panthers defense surrender?",
            "The Panthers defense gave up just 308 points, ranking sixth in the league.",
            "308",
        ),
        (
            "Who founded McKinsey & Company?",
            "The firm was founded by James O. McKinsey in Chicago.",
            "James O. McKinsey",
        ),
        # A percentage question wants the percentage, not the first number.
        (
            "Of Warsaw's inhabitants in 1901, what percentage was Catholic?",
            "Out of 711,988 inhabitants, 56.2% were Catholics.",
            "56.2%",
        ),
        # The day of the month belongs to the date.
        (
            "When did the parties sign the agreement?",
            "The parties signed the agreement on 28 February 2008.",
            "28 February 2008",
        ),
        # "The" opening the sentence is no part of the name the question says.
        (
            "Where is the Hyde Park Day School located?",
            "The Hyde Park Day School is located on the University of Chicago campus.",
            "University of Chicago",
        ),
        # A parenthesis the phrase would leave open is left out.
        (
            "The Rams are an example of what kind of sports team?",
            "The Rams are an example of a NFL (National Football League) sports team.",
            "NFL",
        ),
    ],
)
def test_short_answer_picks_the_phrase_of_the_wanted_kind(
    question: str, sentence: str, expected: str
) -> None:
    assert short_answer(question, sentence) == expected


def test_short_answer_of_a_sentence_that_only_repeats_the_question_is_the_sentence() -> None:
    assert short_answer("Where is Warsaw?", "Warsaw.") == "Warsaw."


def test_concise_keeps_the_citation_of_the_first_cited_sentence() -> None:
    answer = (
        "Warsaw's first stock exchange was established in 1817. It was re-established in "
        "April 1991. [2] The exchange trades shares. [1]"
    )
    question = "When was Warsaw's stock exchange re-established?"
    assert concise(question, answer) == "April 1991 [2]"
    assert concise(question, "It was re-established in April 1991.") == "April 1991"


def test_concise_skips_a_sentence_that_only_points_at_its_source() -> None:
    question = "What does most of the HD material use as a standard?"
    answer = "Most of the HD material uses the DVB-S2 standard. This can be found in [3]."
    assert concise(question, answer) == "DVB-S2 [3]"
    # "This <one word> was cited in ..." says where, too.
    answer = (
        "The lectures were published by Oxford University Press in 1934. This book is cited in [1]."
    )
    assert concise("When were the lectures published?", answer) == "1934 [1]"


@pytest.mark.parametrize(
    ("question", "answer", "expected"),
    [
        (
            "What is Jacksonville's population ranking?",
            "Jacksonville is the 12th most populous city. This can be seen in the context [4].",
            "12th most populous city [4]",
        ),
        (
            "What rainforest covers the majority of the Amazon basin?",
            "The Amazon rainforest covers most of the Amazon basin, as stated in [1].",
            "The Amazon rainforest covers most of the Amazon basin [1]",
        ),
        # Words opening the answer that point at its source; the name after them is one.
        (
            "Who registered the most sacks on the team this season?",
            "According to the context, Kawann Short registered the most sacks, with 11.",
            "Kawann Short",
        ),
        (  # their marker cites the sentence
            "When was Dudley Simpson most active?",
            "According to [2], Dudley Simpson was most active during the 1960s and 1970s.",
            "1960s and 1970s [2]",
        ),
        (
            "Abilene was retired and the new platform is called",
            "Abilene was retired; the new platform is the Internet2 Network. This "
            "information is found in the second passage [2].",
            "Internet2 Network [2]",
        ),
    ],
)
def test_concise_leaves_out_the_words_that_point_at_the_source(
    question: str, answer: str, expected: str
) -> None:
    assert concise(question, answer) == expected
