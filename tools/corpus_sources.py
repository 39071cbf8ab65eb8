"""Which files may go into the demo model's corpus: the stdlib, pydoc topics, permissive packages.

Every source is on disk with Python itself or in its site-packages; nothing is downloaded. Each
package is listed with the SPDX licence we checked by hand against its own metadata, so the
corpus record says exactly what went in under which licence.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Permissively licensed pure-Python packages found on the build machine: import name ->
# (distribution name, SPDX licence, byte cap). Caps keep any one package from dominating the mix.
EXTRA_PACKAGES: dict[str, tuple[str, str, int]] = {
    "numpy": ("numpy", "BSD-3-Clause", 10_000_000),
    "sympy": ("sympy", "BSD-3-Clause", 12_000_000),
    "scipy": ("scipy", "BSD-3-Clause", 12_000_000),
    "transformers": ("transformers", "Apache-2.0", 12_000_000),
    "networkx": ("networkx", "BSD-3-Clause", 7_000_000),
    "moto": ("moto", "Apache-2.0", 4_000_000),
    "libcst": ("libcst", "MIT", 3_500_000),
    "huggingface_hub": ("huggingface_hub", "Apache-2.0", 3_500_000),
    "openai": ("openai", "Apache-2.0", 3_000_000),
    "IPython": ("ipython", "BSD-3-Clause", 2_500_000),
    "pygments": ("pygments", "BSD-2-Clause", 2_000_000),
    "mpmath": ("mpmath", "BSD-3-Clause", 2_000_000),
    "pydantic": ("pydantic", "MIT", 2_000_000),
    "prompt_toolkit": ("prompt_toolkit", "BSD-3-Clause", 1_500_000),
    "trio": ("trio", "MIT OR Apache-2.0", 1_500_000),
    "rich": ("rich", "MIT", 1_500_000),
    "botocore": ("botocore", "Apache-2.0", 1_500_000),
    "_pytest": ("pytest", "MIT", 1_500_000),
    "pip": ("pip", "MIT", 1_500_000),
    "jedi": ("jedi", "MIT", 1_000_000),
    "werkzeug": ("werkzeug", "BSD-3-Clause", 1_000_000),
    "fastapi": ("fastapi", "MIT", 1_000_000),
    "fsspec": ("fsspec", "BSD-3-Clause", 1_000_000),
    "graphql": ("graphql-core", "MIT", 1_000_000),
    "anyio": ("anyio", "MIT", 1_000_000),
    "jinja2": ("jinja2", "BSD-3-Clause", 1_000_000),
    "click": ("click", "BSD-3-Clause", 1_000_000),
    "typer": ("typer", "MIT", 1_000_000),
    "pyparsing": ("pyparsing", "MIT", 1_000_000),
    "urllib3": ("urllib3", "MIT", 1_000_000),
    "jsonschema": ("jsonschema", "MIT", 1_000_000),
    "packaging": ("packaging", "Apache-2.0 OR BSD-2-Clause", 1_000_000),
    "flask": ("flask", "BSD-3-Clause", 1_000_000),
    "parso": ("parso", "MIT", 1_000_000),
    "starlette": ("starlette", "BSD-3-Clause", 1_000_000),
    "requests": ("requests", "Apache-2.0", 1_000_000),
}
# Folders that hold other projects' code (vendored copies) or data tables rather than source.
SKIPPED_DIRS = {"__pycache__", "site-packages", "encodings", "pydoc_data", "_vendor", "vendor", "vendored", "externals"}
MAX_FILE_BYTES = 400_000  # larger .py files are generated tables, not code a person wrote
MAX_LINE_CHARS = 1_000  # a longer line means embedded data


@dataclass(frozen=True)
class SourceFile:
    """One candidate file: which source it belongs to, its path there, and its text."""

    source: str
    relpath: str
    text: str

    @property
    def module(self) -> str:
        """Dotted module name as imported (json/__init__.py -> json), prefixed for packages."""
        parts = self.relpath[: -len(".py")].split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        prefix = [] if self.source == "stdlib" else [self.source]
        return ".".join(prefix + parts) if parts or prefix else self.source


def stable_hash(text: str) -> str:
    """A hash that, unlike hash(), is the same in every process."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stdlib_dir() -> Path:
    """The running interpreter's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def read_text(path: Path) -> str | None:
    """The file's UTF-8 text, or None if it is not UTF-8 or looks like data rather than code."""
    raw = path.read_bytes()
    if len(raw) > MAX_FILE_BYTES or b"\0" in raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # a handful of stdlib tests are deliberately latin-1 or koi8-r
        return None
    if any(len(line) > MAX_LINE_CHARS for line in text.splitlines()):
        return None
    return text


def walk_python_files(root: Path) -> list[Path]:
    """Every .py file under root in path order, skipping SKIPPED_DIRS."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if not any(part in SKIPPED_DIRS for part in rel[:-1]) and not rel[-1].startswith("_sysconfigdata"):
            found.append(path)
    return found


def stdlib_files() -> list[SourceFile]:
    """The standard library's own .py files (tests included), as text."""
    root = stdlib_dir()
    files = []
    for path in walk_python_files(root):
        text = read_text(path)
        if text is not None:
            files.append(SourceFile("stdlib", path.relative_to(root).as_posix(), text))
    return files


def package_files(name: str, byte_cap: int) -> list[SourceFile]:
    """A package's .py files, up to byte_cap bytes (empty if it is not installed).

    Files are taken in the order of a hash of their path, so a capped package is a spread sample
    of its modules rather than its alphabetically first subpackages.
    """
    spec_root = Path(sysconfig.get_paths()["purelib"]) / name
    if not spec_root.is_dir():
        return []
    files, total = [], 0
    paths = walk_python_files(spec_root)
    for path in sorted(paths, key=lambda p: stable_hash(p.relative_to(spec_root).as_posix())):
        text = read_text(path)
        if text is None or total + len(text) > byte_cap:
            continue
        total += len(text)
        files.append(SourceFile(name, path.relative_to(spec_root).as_posix(), text))
    return files


def package_record(name: str) -> dict:
    """Name, version and licence of an extra package, as recorded in corpus.json."""
    dist, licence, cap = EXTRA_PACKAGES[name]
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"name": name, "distribution": dist, "version": version, "licence": licence, "byte_cap": cap}


def pydoc_topics() -> dict[str, str]:
    """The language reference topics that ship with Python for `help()` (pydoc_data/topics.py)."""
    from pydoc_data.topics import topics

    return dict(sorted(topics.items()))


def python_version() -> str:
    """The interpreter version whose stdlib is the corpus, e.g. 3.11.7."""
    return sys.version.split()[0]
