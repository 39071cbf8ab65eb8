"""StopStringMatcher: where the output is cut, and what a streaming client must not see yet."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from forgellm.engine.stop_strings import StopMatch, StopStringMatcher


def feed(matcher: StopStringMatcher, deltas: list[str]) -> tuple[str, StopMatch | None]:
    """Stream `deltas` into the matcher; returns the final (truncated) text and the match."""
    text = ""
    for delta in deltas:
        text += delta
        match = matcher.check(text, len(delta))
        if match is not None:
            return text[: match.truncate_to], match
    return text, None


def test_stop_at_the_very_start() -> None:
    assert feed(StopStringMatcher(["###"], False), ["###", "more"]) == ("", StopMatch("###", 0))
    assert feed(StopStringMatcher(["###"], True), ["###", "more"]) == ("###", StopMatch("###", 3))


def test_stop_in_the_middle_of_a_delta_drops_the_rest() -> None:
    text, match = feed(StopStringMatcher(["END"], False), ["Hello ", "world END and more"])
    assert (text, match.stop_str) == ("Hello world ", "END")
    text, _ = feed(StopStringMatcher(["END"], True), ["Hello ", "world END and more"])
    assert text == "Hello world END"


def test_stop_spanning_deltas() -> None:
    deltas = ["The answer", " is 4", "2.\n\nQuest", "ion: next"]
    assert feed(StopStringMatcher(["\n\nQuestion:"], False), deltas)[0] == "The answer is 42."
    assert feed(StopStringMatcher(["\n\nQuestion:"], True), deltas)[0] == "The answer is 42.\n\nQuestion:"
    # One character at a time.
    assert feed(StopStringMatcher(["\n\nQuestion:"], False), list("".join(deltas)))[0] == "The answer is 42."


def test_earliest_match_wins_whatever_the_list_order() -> None:
    matcher = StopStringMatcher(["zzz", "stop", "b"], False)
    text, match = feed(matcher, ["a stop then b then zzz"])
    assert (text, match) == ("a ", StopMatch("stop", 2))
    # At the same start the shorter one wins: it is the one token-by-token streaming finds first.
    assert StopStringMatcher(["abc", "ab"], True).check("xabcd", 5) == StopMatch("ab", 3)


def test_no_match_and_no_stop_strings() -> None:
    assert feed(StopStringMatcher(["END"], False), ["EN", "", "d"]) == ("ENd", None)
    assert StopStringMatcher([], False).check("anything", 8) is None
    assert StopStringMatcher(["x"], False).check("x", 0) is None  # no new characters, nothing new


def test_only_matches_touching_new_characters_are_reported() -> None:
    # "ab" lies entirely in old text (a caller would have stopped then); only new text is searched.
    assert StopStringMatcher(["ab"], False).check("ab--", 2) is None
    assert StopStringMatcher(["ab"], False).check("xa" + "b", 1) == StopMatch("ab", 1)


def test_holdback() -> None:
    matcher = StopStringMatcher(["</s>", "STOP"], False)
    assert matcher.holdback("hello <") == 1
    assert matcher.holdback("hello </") == 2
    assert matcher.holdback("hello </s") == 3
    assert matcher.holdback("hello ST") == 2
    assert matcher.holdback("hello S T") == 0
    assert matcher.holdback("") == 0
    assert matcher.holdback("<") == 1
    assert StopStringMatcher(["aab"], False).holdback("xaa") == 2
    assert StopStringMatcher(["aab"], False).holdback("xaaa") == 2  # "aaa" is no prefix; "aa" is
    assert StopStringMatcher(["x"], False).holdback("abc x") == 0  # a full stop string is matched, not held
    assert StopStringMatcher(["</s>"], True).holdback("hello </") == 0


@settings(max_examples=300, deadline=None)
@given(
    stops=st.lists(st.text("abc", min_size=1, max_size=4), min_size=1, max_size=3),
    text=st.text("abc", max_size=30),
    cuts=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    include=st.booleans(),
)
def test_streaming_agrees_with_a_reference(stops: list[str], text: str, cuts: list[int], include: bool) -> None:
    matcher = StopStringMatcher(stops, include)
    # Character by character, the stream stops where a stop string first ends; of those ending
    # there, the longest starts first.
    streamed, match = feed(matcher, list(text))
    ends = {s: text.find(s) + len(s) for s in stops if s in text}
    if not ends:
        assert (streamed, match) == (text, None)
    else:
        end = min(ends.values())
        winner = max((s for s in ends if text[:end].endswith(s)), key=len)
        assert match.stop_str == winner
        assert streamed == (text[:end] if include else text[: end - len(winner)])
        # What a client was shown (the text minus the holdback) is never taken back.
        for j in range(end):
            shown = text[: j - matcher.holdback(text[:j])]
            assert streamed.startswith(shown)

    # In bigger deltas the cut may come earlier (the earliest start wins), but it is always at a
    # real occurrence of the reported stop string.
    deltas, start, i = [], 0, 0
    while start < len(text):
        deltas.append(text[start : start + cuts[i % len(cuts)]])
        start, i = start + cuts[i % len(cuts)], i + 1
    chunked, chunked_match = feed(matcher, deltas)
    assert text.startswith(chunked) and (chunked_match is None) == (match is None)
    if chunked_match is not None:
        cut = chunked_match.truncate_to
        stop_str = chunked_match.stop_str
        assert text[:cut].endswith(stop_str) if include else text[cut:].startswith(stop_str)
        if not include:
            assert len(chunked) <= len(streamed)
