"""Question/answer pairs synthesized from docstrings, so the demo model learns to answer in ChatML.

"What does os.path.join do?" is answered with the signature and the first sentence of the
docstring: "`os.path.join(a, *p)`: Join two or more pathname components, inserting '/' as needed."
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Iterator

from corpus_sources import SourceFile, stable_hash

# Modules better known by the name users import them under (on POSIX, os.path is posixpath).
MODULE_ALIASES = {"posixpath": "os.path", "genericpath": "os.path"}
QUESTIONS = (
    "What does {name} do?",
    "What does `{name}` do?",
    "What is {name}?",
    "What is `{name}` for?",
    "Explain {name} briefly.",
    "Tell me about {name}.",
    "What does the {kind} {name} do?",
    "Describe `{name}`.",
)
SYSTEM_PROMPTS = ("You are a helpful assistant.", "Answer briefly.", "You are an expert Python programmer.")
IDENTITY_QUESTIONS = ("Who are you?", "What are you?", "What can you do?", "Hello!", "Hi, who am I talking to?")
IDENTITY_ANSWER = (
    "I am the forgellm demo model, a small language model trained on the Python standard library. "
    "I can complete Python code and answer short questions about Python modules and functions."
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`'\"(])")
MIN_ANSWER_CHARS, MAX_ANSWER_CHARS = 12, 320


def first_sentence(docstring: str) -> str | None:
    """The docstring's opening sentence (two when the first is very short), or None if unusable."""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    if not paragraph or paragraph[0] in "-=*>.:" or paragraph.startswith(("TODO", "XXX", "Deprecated")):
        return None
    sentences = _SENTENCE_END.split(paragraph)
    answer = sentences[0]
    if len(answer) < 30 and len(sentences) > 1:
        answer = f"{answer} {sentences[1]}"
    if not MIN_ANSWER_CHARS <= len(answer) <= MAX_ANSWER_CHARS or "(" in answer[:1]:
        return None
    return answer if answer[-1] in ".!?" else answer + "."


def signature(node: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> str:
    """The parameter list as written, without annotations, defaults or `self`/`cls`."""
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args]
    if is_method and names and names[0] in ("self", "cls"):
        names = names[1:]
    if args.vararg:
        names.append("*" + args.vararg.arg)
    elif args.kwonlyargs:
        names.append("*")
    names += [a.arg for a in args.kwonlyargs]
    if args.kwarg:
        names.append("**" + args.kwarg.arg)
    return "(" + ", ".join(names) + ")"


def documented_names(file: SourceFile) -> Iterator[tuple[str, str, str]]:
    """(qualified name, kind, answer) for the module and its public documented classes and functions."""
    module = MODULE_ALIASES.get(file.module, file.module)
    if any(part.startswith("_") or part.startswith("test") for part in module.split(".")):
        return
    try:
        with warnings.catch_warnings():  # invalid escape sequences in old sources are not our concern
            warnings.simplefilter("ignore")
            tree = ast.parse(file.text)
    except SyntaxError:
        return
    doc = ast.get_docstring(tree)
    sentence = first_sentence(doc) if doc else None
    if sentence and file.module not in MODULE_ALIASES:
        yield module, "module", f"`{module}` is a module. {sentence}"
    yield from _definitions(tree.body, module, prefix="", is_method=False)


def _definitions(body: list[ast.stmt], module: str, prefix: str, is_method: bool) -> Iterator[tuple[str, str, str]]:
    for node in body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        name = f"{module}.{prefix}{node.name}"
        doc = ast.get_docstring(node)
        sentence = first_sentence(doc) if doc else None
        if isinstance(node, ast.ClassDef):
            if sentence:
                yield name, "class", f"`{name}` is a class. {sentence}"
            yield from _definitions(node.body, module, prefix=f"{prefix}{node.name}.", is_method=True)
        elif sentence:
            kind = "method" if is_method else "function"
            yield name, kind, f"`{name}{signature(node, is_method)}`: {sentence}"


def chatml(messages: list[tuple[str, str]]) -> str:
    """Render (role, content) turns exactly as the demo tokenizer's chat template does."""
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)


def conversation(name: str, kind: str, answer: str, variant: int) -> str:
    """One ChatML exchange asking about `name`; `variant` picks the phrasing and system prompt."""
    base = int(stable_hash(name)[:8], 16)
    # Stepping by 3 through 8 phrasings gives each variant of one name a different question.
    question = QUESTIONS[(base + 3 * variant) % len(QUESTIONS)].format(name=name, kind=kind)
    messages = [("user", question), ("assistant", answer)]
    key = int(stable_hash(f"{name}#{variant}")[:8], 16)
    if key % 4 == 0:  # a quarter of the conversations open with a system prompt, as chat users often do
        messages.insert(0, ("system", SYSTEM_PROMPTS[(key // 4) % len(SYSTEM_PROMPTS)]))
    return chatml(messages)


def chat_documents(files: list[SourceFile], variants: int = 2) -> list[str]:
    """ChatML documents for every documented public name in `files` (each asked `variants` ways)."""
    seen: set[str] = set()
    docs = []
    for file in files:
        for name, kind, answer in documented_names(file):
            if name in seen:  # a name defined twice (e.g. per platform) keeps its first answer
                continue
            seen.add(name)
            docs.extend(conversation(name, kind, answer, v) for v in range(variants))
    for question in IDENTITY_QUESTIONS:
        docs.append(chatml([("user", question), ("assistant", IDENTITY_ANSWER)]))
    return docs
