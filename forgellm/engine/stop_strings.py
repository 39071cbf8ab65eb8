"""StopStringMatcher: finds stop strings in streamed output text and says where to cut it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StopMatch:
    """A stop string found in the text; the output must be truncated to `truncate_to` characters."""

    stop_str: str
    truncate_to: int


class StopStringMatcher:
    """Checks output text for stop strings as it grows, looking only where a new match can be."""

    def __init__(self, stop: list[str], include_stop_str_in_output: bool) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output

    def check(self, text: str, num_new_chars: int) -> StopMatch | None:
        """Find the earliest stop string that ends in the last `num_new_chars` characters of `text`.

        Earlier text was checked before, so a match must end among the new characters. Among
        matches the one starting first wins; at the same start, the shorter one (it ended first).
        """
        if not self.stop or num_new_chars <= 0:
            return None
        new_start = max(len(text) - num_new_chars, 0)
        best: tuple[int, int, str] | None = None
        for stop_str in self.stop:
            # The match has to end after new_start, so it starts at most len - 1 characters before.
            start = text.find(stop_str, max(new_start - len(stop_str) + 1, 0))
            if start < 0:
                continue
            candidate = (start, len(stop_str), stop_str)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        if best is None:
            return None
        start, length, stop_str = best
        end = start + length if self.include_stop_str_in_output else start
        return StopMatch(stop_str=stop_str, truncate_to=end)

    def holdback(self, text: str) -> int:
        """How many trailing characters of `text` a streaming client must not see yet.

        They are the longest suffix that is a proper prefix of a stop string: if the stop string
        completes they are cut. With include_stop_str_in_output nothing is ever cut before the
        current end of the text, so nothing needs holding back.
        """
        if self.include_stop_str_in_output:
            return 0
        longest = 0
        for stop_str in self.stop:
            for length in range(min(len(stop_str) - 1, len(text)), longest, -1):
                if text.endswith(stop_str[:length]):
                    longest = length
                    break
        return longest
