"""The repetition guard around a generator's stream: a generator that loops is stopped at its
first repeated sentence, which never reaches the answer; other answers pass as they stream."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

from pgrag.query.generation import Request
from pgrag.query.generation.guard import RepetitionGuard, words


class LoopingGenerator:
    """A stand-in generator that loops as SmolLM2 did: a first sentence, then one sentence
    written again and again, token by token, for ever (a stream with no end)."""

    name = "looping"

    def __init__(self) -> None:
        self.produced = 0  # pieces handed out so far
        self.closed = False

    def stream(self, request: Request) -> Iterator[str]:
        first = "Backups are kept in two regions [1]. "
        loop = "Monthly snapshots are kept for 13 months [2]. "
        try:
            for text in itertools.chain([first], itertools.repeat(loop)):
                for piece in re.findall(r"\S+\s*", text):
                    self.produced += 1
                    yield piece
        finally:
            self.closed = True


def request() -> Request:
    return Request("How long are monthly snapshots kept?", [], deadline=float("inf"))


def test_a_looping_generator_stops_at_its_first_repeated_sentence() -> None:
    generator = LoopingGenerator()
    guard = RepetitionGuard(generator.stream(request()))
    answer = "".join(guard)
    assert (
        answer
        == "Backups are kept in two regions [1]. Monthly snapshots are kept for 13 months [2]. "
    )
    assert guard.repeated == "Monthly snapshots are kept for 13 months [2]."
    # It read the repeat and nothing past it, and the generator was closed at once.
    assert generator.produced == 7 + 8 + 8 and generator.closed  # pieces of the 3 sentences


def test_pieces_stream_as_they_come_unless_they_could_begin_a_repeat() -> None:
    generator = LoopingGenerator()
    shown: list[tuple[str, int]] = []  # each piece let through, with the pieces read by then
    for piece in RepetitionGuard(generator.stream(request())):
        shown.append((piece, generator.produced))
    # Each piece of the first two sentences as soon as it was read.
    assert [read for _, read in shown] == list(range(1, 7 + 8 + 1))
    # The third sentence began as the second did: held back, then dropped as a repeat.
    assert "".join(piece for piece, _ in shown).count("Monthly") == 1


def test_sentences_that_only_begin_alike_are_let_through_whole() -> None:
    pieces = re.findall(
        r"\S+\s*", "The backups are kept for 35 days. The backups are kept offsite."
    )
    guard = RepetitionGuard(pieces)
    assert "".join(guard) == "".join(pieces) and guard.repeated is None


def test_repeats_are_found_whatever_their_case_spacing_and_citations() -> None:
    text = "Paris is the capital [1]. It has two airports [2].\nparis  is THE capital [3]. More."
    guard = RepetitionGuard([text])
    assert "".join(guard) == "Paris is the capital [1]. It has two airports [2].\n"
    assert guard.repeated == "paris  is THE capital [3]."
    assert words("Paris, is the capital [1, 2].") == ("paris", "is", "the", "capital")


def test_a_repeat_that_ends_the_answer_is_dropped_too() -> None:
    guard = RepetitionGuard(["Snapshots are kept for 35 days. ", "Snapshots are kept for 35 days."])
    assert "".join(guard) == "Snapshots are kept for 35 days. "
    assert guard.repeated == "Snapshots are kept for 35 days."


def test_short_sentences_may_repeat() -> None:
    text = "Yes. Yes. 1. Backups. 2. Keys. No."
    guard = RepetitionGuard([text])
    assert "".join(guard) == text and guard.repeated is None


def test_a_phrase_said_again_and_again_ends_the_answer() -> None:
    """Loops that are not sentences, as SmolLM2 wrote them until its token limit."""
    for start, unit, phrase in [
        ("The lake holds ", "1.67 cubic kilometers; ", "1 67 cubic kilometers"),
        ("It is found in the RP-BPP", "-PQP", "pqp"),
        ("See the sources ", "[7]. ", "[n]"),
    ]:
        pieces = [start, *([unit] * 100)]
        guard = RepetitionGuard(pieces)
        answer = "".join(guard)
        assert guard.repeated == phrase
        assert answer.startswith(start) and answer.count(unit.strip()) <= 12
    # A phrase said twice, or a word three times, is no loop.
    text = "It is very, very, very old. The cat sat on the mat, the cat sat on the mat."
    guard = RepetitionGuard([text])
    assert "".join(guard) == text and guard.repeated is None
