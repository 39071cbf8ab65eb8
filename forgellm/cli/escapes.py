r"""Backslash escapes in command-line text options: `--stop "\n\n"` means two newlines.

A shell passes `"\n"` through as a backslash and an n, and a stop string or system prompt that
needs a newline or a tab is awkward to type otherwise. The escapes are Python's string-literal
ones, minus octal and the rarely meant \a \b \f \v: \n \t \r \\ \" \' \xHH \uXXXX \UXXXXXXXX.
Any other backslash is kept as typed (`\d` stays `\d`), so `\\` is only needed where a literal
backslash comes before one of those letters.
"""

from __future__ import annotations

import argparse
import re

ESCAPES_HELP = r"escapes \n \t \r \\ \" \' \xHH \uXXXX are interpreted"

_SIMPLE = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}
# A backslash and the character after it; a backslash that ends the text has no partner and stays.
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


def unescape(text: str) -> str:
    r"""Interpret the backslash escapes in `text`; raises ValueError on a malformed \x, \u or \U."""
    if "\\" not in text:
        return text
    pieces: list[str] = []
    pos = 0
    while (match := _ESCAPE_RE.search(text, pos)) is not None:
        pieces.append(text[pos : match.start()])
        letter = match.group(1)
        pos = match.end()
        if letter in _SIMPLE:
            pieces.append(_SIMPLE[letter])
        elif letter in _HEX_DIGITS:
            digits = text[pos : pos + _HEX_DIGITS[letter]]
            pieces.append(_code_point(letter, digits))
            pos += len(digits)
        else:
            pieces.append(match.group(0))
    pieces.append(text[pos:])
    return "".join(pieces)


def _code_point(letter: str, digits: str) -> str:
    width = _HEX_DIGITS[letter]
    if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"\\{letter} must be followed by {width} hex digits, got \\{letter}{digits}")
    value = int(digits, 16)
    if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
        raise ValueError(f"\\{letter}{digits} is not a Unicode character")
    return chr(value)


def escaped_text(text: str) -> str:
    """argparse `type=` for text options that take escapes; a bad escape is a usage error."""
    try:
        return unescape(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (write \\\\ for a literal backslash)") from None
