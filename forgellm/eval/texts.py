"""Reading the text to evaluate on: one file, or every matching file of a folder in name order."""

from __future__ import annotations

from pathlib import Path

from forgellm.errors import InvalidRequestError


def read_texts(file: str | None = None, directory: str | None = None, pattern: str = "*") -> list[str]:
    """UTF-8 texts of `file`, or of the files in `directory` matching `pattern` (sorted by name)."""
    if (file is None) == (directory is None):
        raise InvalidRequestError("give exactly one of a file or a directory to evaluate on")
    if file is not None:
        paths = [Path(file)]
    else:
        folder = Path(directory)
        if not folder.is_dir():
            raise InvalidRequestError(f"{folder} is not a directory", "dir")
        paths = sorted(p for p in folder.glob(pattern) if p.is_file())
        if not paths:
            raise InvalidRequestError(f"no files matching {pattern!r} in {folder}", "dir")
    texts = []
    for path in paths:
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequestError(f"cannot read {path} as UTF-8 text: {exc}", "file") from None
    return texts
