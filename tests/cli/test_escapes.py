"""Backslash escapes in CLI text options (`--stop`, `--system`)."""

from __future__ import annotations

import argparse

import pytest

from forgellm.cli.escapes import escaped_text, unescape


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("plain text", "plain text"),
        (r"\n\n", "\n\n"),
        (r"a\tb\rc", "a\tb\rc"),
        (r"say \"hi\" or \'hi\'", "say \"hi\" or 'hi'"),
        (r"\\", "\\"),
        (r"\\n", r"\n"),  # an escaped backslash, then a plain n
        (r"\\\n", "\\\n"),  # a literal backslash, then a newline
        (r"\u00e9t\u00e9", "été"),
        (r"\U0001F600", "\U0001f600"),
        (r"\x41\x7e", "A~"),
        (r"\d+ and \w", r"\d+ and \w"),  # unknown escapes stay as typed
        ("ends with \\", "ends with \\"),  # a lone trailing backslash stays
        ("déjà\nvu", "déjà\nvu"),  # real newlines and non-ASCII pass through untouched
    ],
)
def test_unescape(typed: str, meant: str) -> None:
    assert unescape(typed) == meant


@pytest.mark.parametrize("typed", [r"\u12", r"\u12G4", r"\x4", r"\U0011FFFF", r"\uD800", "\\u"])
def test_malformed_code_points_are_refused(typed: str) -> None:
    with pytest.raises(ValueError, match="hex digits|not a Unicode character"):
        unescape(typed)


def test_escaped_text_turns_errors_into_usage_errors() -> None:
    assert escaped_text(r"\n") == "\n"
    with pytest.raises(argparse.ArgumentTypeError, match=r"literal backslash"):
        escaped_text(r"C:\Users")
