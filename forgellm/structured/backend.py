"""The xgrammar backend: compiles a request's constraint into a grammar over the model's vocabulary.

Compiling happens at admission (InputProcessor.process), which runs off the engine loop (in the caller's
thread, or the server's pool), so a request waits for its own grammar and nobody else does; a bad
constraint is then a typed 400 naming the field, with the compiler's message. Compiled grammars are
cached by constraint (xgrammar's own cache, plus ours for the key), so the n samples of a request and
repeated schemas compile once; each sample gets its own matcher (GrammarState).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from forgellm.errors import InvalidRequestError
from forgellm.structured.grammar_pool import GrammarPool
from forgellm.structured.params import StructuredOutputsParams
from forgellm.structured.state import GrammarState

MAX_CACHED_GRAMMARS = 256
MAX_JSON_WHITESPACE = 16  # characters in one run of whitespace between JSON tokens


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as exc:  # the structured extra is not installed
        raise InvalidRequestError(
            "structured output needs xgrammar: pip install 'forgellm[structured]'", "structured_outputs"
        ) from exc
    return xgrammar


class GrammarBackend:
    """Compiles StructuredOutputsParams for one tokenizer and vocabulary (thread-safe)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(stop_token_ids)
        self._lock = threading.Lock()
        self._compiler: Any = None
        # Shared by every request's GrammarState, so a batch's grammars advance and fill together (threads).
        self.pool = GrammarPool()
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def _get_compiler(self) -> Any:
        """xgrammar's compiler, made on first use (it reads the whole vocabulary once)."""
        with self._lock:
            if self._compiler is None:
                xgr = _xgrammar()
                from transformers import PreTrainedTokenizerFast  # xgrammar's own dependency

                hf = PreTrainedTokenizerFast(tokenizer_object=self.tokenizer.backend)
                info = xgr.TokenizerInfo.from_huggingface(
                    hf, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids
                )
                self._compiler = xgr.GrammarCompiler(info, max_threads=2)
            return self._compiler

    def compile(self, params: StructuredOutputsParams) -> Any:
        """The compiled grammar of `params`; a constraint the compiler refuses is an InvalidRequestError."""
        key = params.key
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        compiler = self._get_compiler()
        kind, value = params.kind, getattr(params, params.kind)
        try:
            if kind in ("json", "json_object"):
                schema = {"type": "object"} if kind == "json_object" else value
                compiled = compiler.compile_json_schema(
                    schema if isinstance(schema, str) else json.dumps(schema),
                    any_whitespace=not params.disable_any_whitespace,
                    # A run of whitespace is bounded: a small model sampling at temperature 1 would otherwise
                    # pad forever with spaces, which every JSON grammar allows.
                    max_whitespace_cnt=MAX_JSON_WHITESPACE,
                    # A json_object may hold any keys; a schema's objects only the properties it names.
                    strict_mode=kind == "json",
                )
            elif kind == "regex":
                compiled = compiler.compile_regex(value)
            elif kind == "choice":  # EBNF string literals escape as JSON strings do
                compiled = compiler.compile_grammar("root ::= " + " | ".join(json.dumps(c) for c in value))
            elif kind == "grammar":
                compiled = compiler.compile_grammar(value)
            else:
                compiled = compiler.compile_structural_tag(value if isinstance(value, str) else json.dumps(value))
        except Exception as exc:  # xgrammar raises RuntimeError / ValueError subclasses with the reason
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidRequestError(
                f"structured_outputs.{kind} does not compile: {message}", f"structured_outputs.{kind}"
            ) from exc
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > MAX_CACHED_GRAMMARS:
                self._cache.popitem(last=False)
        return compiled

    def new_state(self, params: StructuredOutputsParams) -> GrammarState:
        """A fresh matcher for one sample (the grammar comes from the cache after admission)."""
        compiled = self.compile(params)
        return GrammarState(_xgrammar().GrammarMatcher(compiled), self.vocab_size, self.pool)
