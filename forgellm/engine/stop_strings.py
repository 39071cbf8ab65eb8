"""StopStringMatcher: finds stop strings in streamed output text and says where to cut it.

Each stop string runs a Knuth-Morris-Pratt automaton over the text as it streams in, so a new
character costs O(1) amortized per stop string, however long the strings are, and the longest
partial match (what a streaming client must not see yet) is always at hand. Matching every length
of every stop string against the end of the text instead costs O(length^2) per output.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopMatch:
    """A stop string found in the text; the output must be truncated to `truncate_to` characters."""

    stop_str: str
    truncate_to: int


class StopStrings:
    """Stop strings prepared once per request (their automata), shared by the request's samples."""

    def __init__(self, stop: list[str], include_stop_str_in_output: bool) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self.fallbacks = [_fallback_table(s) for s in self.stop]

    def matcher(self) -> StopStringMatcher:
        """A fresh matcher for one sample's output."""
        return StopStringMatcher(self)


class StopStringMatcher:
    """Follows one sample's text as it grows: `feed` each new piece, read `holdback` at any time."""

    def __init__(self, stops: StopStrings) -> None:
        self._stops = stops
        # Per stop string: how many of its leading characters the text currently ends with.
        self._matched = [0] * len(stops.stop)
        self._length = 0  # characters fed so far

    def feed(self, new_text: str, report: bool = True) -> StopMatch | None:
        """Take the next piece of text; return the stop string it completes, if any (and `report`).

        Of several stop strings completed in this piece, the one starting first wins; at the same
        start, the shorter one (it ended first). With report=False (e.g. before min_tokens) matches
        are passed over, but partial matches still count for `holdback`.
        """
        stops = self._stops
        if not stops.stop:  # the common case costs nothing per token
            return None
        best: tuple[int, int, str] | None = None  # (start, length, stop string)
        start_of_piece = self._length
        for index, stop_str in enumerate(stops.stop):
            matched = self._matched[index]
            fallback = stops.fallbacks[index]
            found = False
            for offset, char in enumerate(new_text):
                while matched and stop_str[matched] != char:
                    matched = fallback[matched - 1]
                if stop_str[matched] == char:
                    matched += 1
                if matched == len(stop_str):
                    end = start_of_piece + offset + 1
                    if report and not found:
                        found = True
                        candidate = (end - len(stop_str), len(stop_str), stop_str)
                        if best is None or candidate[:2] < best[:2]:
                            best = candidate
                    matched = fallback[matched - 1]
            self._matched[index] = matched
        self._length += len(new_text)
        if best is None:
            return None
        start, length, stop_str = best
        end = start + length if stops.include_stop_str_in_output else start
        return StopMatch(stop_str=stop_str, truncate_to=end)

    def holdback(self) -> int:
        """How many trailing characters of the text fed so far a streaming client must not see yet.

        They are the longest suffix that is a proper prefix of a stop string: if the stop string
        completes they are cut. With include_stop_str_in_output nothing is ever cut before the
        current end of the text, so nothing needs holding back.
        """
        if self._stops.include_stop_str_in_output or not self._matched:
            return 0
        return max(self._matched)


def _fallback_table(pattern: str) -> list[int]:
    """KMP's failure function: entry i is the length of the longest proper prefix of
    pattern[: i + 1] that is also a suffix of it."""
    table = [0] * len(pattern)
    matched = 0
    for i in range(1, len(pattern)):
        while matched and pattern[i] != pattern[matched]:
            matched = table[matched - 1]
        if pattern[i] == pattern[matched]:
            matched += 1
        table[i] = matched
    return table
