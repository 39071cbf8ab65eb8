"""StopStringMatcher: where the output is cut, and what a streaming client must not see yet."""

from __future__ import annotations

import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from forgellm.engine.stop_strings import StopMatch, StopStringMatcher, StopStrings


def matcher_of(stop: list[str], include: bool) -> StopStringMatcher:
    return StopStrings(stop, include).matcher()


def feed(stops: list[str], include: bool, deltas: list[str]) -> tuple[str, StopMatch | None]:
    """Stream `deltas` into a fresh matcher; returns the final (truncated) text and the match."""
    matcher = matcher_of(stops, include)
    text = ""
    for delta in deltas:
        text += delta
        match = matcher.feed(delta)
        if match is not None:
            return text[: match.truncate_to], match
    return text, None


def holdback(stops: list[str], text: str, include: bool = False) -> int:
    matcher = matcher_of(stops, include)
    matcher.feed(text)
    return matcher.holdback()


def test_stop_at_the_very_start() -> None:
    assert feed(["###"], False, ["###", "more"]) == ("", StopMatch("###", 0))
    assert feed(["###"], True, ["###", "more"]) == ("###", StopMatch("###", 3))


def test_stop_in_the_middle_of_a_delta_drops_the_rest() -> None:
    text, match = feed(["END"], False, ["Hello ", "world END and more"])
    assert (text, match.stop_str) == ("Hello world ", "END")
    text, _ = feed(["END"], True, ["Hello ", "world END and more"])
    assert text == "Hello world END"


def test_stop_spanning_deltas() -> None:
    deltas = ["The answer", " is 4", "2.\n\nQuest", "ion: next"]
    assert feed(["\n\nQuestion:"], False, deltas)[0] == "The answer is 42."
    assert feed(["\n\nQuestion:"], True, deltas)[0] == "The answer is 42.\n\nQuestion:"
    # One character at a time.
    assert feed(["\n\nQuestion:"], False, list("".join(deltas)))[0] == "The answer is 42."


def test_earliest_match_wins_whatever_the_list_order() -> None:
    text, match = feed(["zzz", "stop", "b"], False, ["a stop then b then zzz"])
    assert (text, match) == ("a ", StopMatch("stop", 2))
    # At the same start the shorter one wins: it is the one token-by-token streaming finds first.
    assert feed(["abc", "ab"], True, ["xabcd"]) == ("xab", StopMatch("ab", 3))


def test_no_match_and_no_stop_strings() -> None:
    assert feed(["END"], False, ["EN", "", "d"]) == ("ENd", None)
    assert feed([], False, ["anything"]) == ("anything", None)
    assert holdback([], "anything") == 0


def test_only_matches_touching_new_characters_are_reported() -> None:
    # "ab" lies entirely in text fed earlier (a caller would have stopped then): never reported again.
    matcher = matcher_of(["ab"], False)
    assert matcher.feed("ab", report=False) is None
    assert matcher.feed("--") is None
    assert feed(["ab"], False, ["xa", "b"]) == ("x", StopMatch("ab", 1))


def test_unreported_matches_still_hold_back_partial_ones() -> None:
    # Before min_tokens stop strings are not reported, but a partial one may complete later.
    matcher = matcher_of(["</s>"], False)
    assert matcher.feed("a </s> <", report=False) is None
    assert matcher.holdback() == 1
    assert matcher.feed("/s>") == StopMatch("</s>", 7)


def test_holdback() -> None:
    stops = ["</s>", "STOP"]
    assert holdback(stops, "hello <") == 1
    assert holdback(stops, "hello </") == 2
    assert holdback(stops, "hello </s") == 3
    assert holdback(stops, "hello ST") == 2
    assert holdback(stops, "hello S T") == 0
    assert holdback(stops, "") == 0
    assert holdback(stops, "<") == 1
    assert holdback(["aab"], "xaa") == 2
    assert holdback(["aab"], "xaaa") == 2  # "aaa" is no prefix; "aa" is
    assert holdback(["abab"], "xababa") == 3  # the automaton falls back past a near miss
    assert holdback(["</s>"], "hello </", include=True) == 0


def test_the_cost_per_token_does_not_grow_with_the_stop_strings_length() -> None:
    # Over an alphabet that makes partial matches everywhere, checking every length of every stop
    # string cost O(length^2) per output (158 ms for 100 strings of 20 KB); the automata cost
    # O(new characters). A ratio of two timings holds on a loaded machine where a bound would not.
    def seconds_per_token(length: int) -> float:
        rng = random.Random(0)
        matcher = matcher_of(["".join(rng.choice("ab") for _ in range(length)) for _ in range(16)], False)
        pieces = ["".join(rng.choice("ab") for _ in range(4)) for _ in range(300)]
        start = time.perf_counter()
        for piece in pieces:
            matcher.feed(piece)
            matcher.holdback()
        return (time.perf_counter() - start) / len(pieces)

    short, long = min(seconds_per_token(20) for _ in range(3)), min(seconds_per_token(2000) for _ in range(3))
    assert long < 10 * short, (short, long)  # 100 times the length; about the same cost


@settings(max_examples=300, deadline=None)
@given(
    stops=st.lists(st.text("abc", min_size=1, max_size=4), min_size=1, max_size=3),
    text=st.text("abc", max_size=30),
    cuts=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    include=st.booleans(),
)
def test_streaming_agrees_with_a_reference(stops: list[str], text: str, cuts: list[int], include: bool) -> None:
    # Character by character, the stream stops where a stop string first ends; of those ending
    # there, the longest starts first.
    streamed, match = feed(stops, include, list(text))
    ends = {s: text.find(s) + len(s) for s in stops if s in text}
    if not ends:
        assert (streamed, match) == (text, None)
    else:
        end = min(ends.values())
        winner = max((s for s in ends if text[:end].endswith(s)), key=len)
        assert match.stop_str == winner
        assert streamed == (text[:end] if include else text[: end - len(winner)])
        # What a client was shown (the text minus the holdback) is never taken back.
        matcher = matcher_of(stops, include)
        for j in range(end):
            shown = text[: j - matcher.holdback()]
            assert streamed.startswith(shown)
            matcher.feed(text[j], report=False)

    # In bigger deltas the cut may come earlier (the earliest start wins), but it is always at a
    # real occurrence of the reported stop string.
    deltas, start, i = [], 0, 0
    while start < len(text):
        deltas.append(text[start : start + cuts[i % len(cuts)]])
        start, i = start + cuts[i % len(cuts)], i + 1
    chunked, chunked_match = feed(stops, include, deltas)
    assert text.startswith(chunked) and (chunked_match is None) == (match is None)
    if chunked_match is not None:
        cut = chunked_match.truncate_to
        stop_str = chunked_match.stop_str
        assert text[:cut].endswith(stop_str) if include else text[cut:].startswith(stop_str)
        if not include:
            assert len(chunked) <= len(streamed)
