"""A progress bar: tqdm when it is installed and wanted, else a silent stand-in with the same calls."""

from __future__ import annotations

from typing import Any


class _NoBar:
    """Accepts tqdm's calls and shows nothing."""

    def update(self, n: int = 1) -> None:
        """Count progress (ignored)."""

    def close(self) -> None:
        """Finish (nothing to do)."""


def progress_bar(total: int, desc: str, disable: bool = False) -> Any:
    """A tqdm bar over `total` units, or a stand-in when disabled or tqdm is missing (bench extra)."""
    if disable:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, dynamic_ncols=True)
