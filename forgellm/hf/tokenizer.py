"""Tokenizer: a Hugging Face tokenizer.json + tokenizer_config.json, without transformers.

Encoding and decoding match transformers' PreTrainedTokenizerFast (transformers 5) on the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import tokenizers
from tokenizers import AddedToken

from forgellm.errors import InvalidRequestError, ModelLoadError
from forgellm.hf.chat_template import compile_chat_template, render_chat_template
from forgellm.hf.config import read_json_file

# The named special tokens transformers passes to chat templates (when set).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

_MAX_COMPILED_TEMPLATES = 32
# Above this many characters encoding takes long enough (about 1 ms) to release the GIL for it.
_GIL_FREE_ENCODE_CHARS = 2048

_ADDED_TOKEN_KEYS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


class Tokenizer:
    """Text <-> token ids, special tokens and chat templates of one model."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        special_tokens: dict[str, str] | None = None,
        chat_templates: dict[str, str] | None = None,
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        # Truncation or padding saved in tokenizer.json must not silently cut or pad prompts.
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.special_tokens_map = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self._chat_templates = dict(chat_templates or {})
        # transformers skips this clean-up for BPE models: it would corrupt their output.
        self._clean_up_spaces = clean_up_tokenization_spaces and type(backend.model).__name__ != "BPE"
        self._compiled: dict[str, jinja2.Template] = {}
        # Computed once: detokenizers ask for it per step, and some vocabularies add thousands of tokens.
        special_ids = {i for i, token in backend.get_added_tokens_decoder().items() if token.special}
        special_ids.update(i for i in map(self._id_of, self.special_tokens_map.values()) if i is not None)
        self._special_ids = frozenset(special_ids)
        self._max_chars_per_token: int | None = None  # computed on first use

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load `tokenizer.json`, `tokenizer_config.json` and chat templates from a model directory."""
        directory = Path(path)
        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            found = " (there is a tokenizer.model)" if (directory / "tokenizer.model").is_file() else ""
            raise ModelLoadError(
                f"{tokenizer_file} not found{found}: forgellm reads tokenizer.json only, a sentencepiece-only "
                "tokenizer.model is not supported; load it once with transformers and save_pretrained() it"
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as exc:  # the Rust side raises plain Exception for bad files
            raise ModelLoadError(f"cannot load {tokenizer_file}: {exc}") from exc
        config = _read_optional_json(directory / "tokenizer_config.json")
        special = _special_token_values(directory, config)
        _add_missing_tokens(backend, config, special)
        tokenizer = cls(
            backend,
            special_tokens={name: special[name]["content"] for name in SPECIAL_TOKEN_NAMES if name in special},
            chat_templates=_chat_templates(directory, config),
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        )
        tokenizer._compile_own_templates()
        return tokenizer

    # --- encoding ---------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; `add_special_tokens` applies the post-processor (e.g. a leading BOS)."""
        if not text.isascii():
            _check_unicode(text)
        if len(text) > _GIL_FREE_ENCODE_CHARS:
            # encode() holds the GIL for the whole text (seconds for megabytes, stalling every other
            # thread, an event loop included); encode_batch() releases it while it works.
            return self.backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    @property
    def max_chars_per_token(self) -> int:
        """An upper bound on the characters of text one token covers: its longest vocabulary entry.

        Byte-level vocabularies spell each byte as one character, so the bound holds in bytes too.
        """
        if self._max_chars_per_token is None:
            vocab = self.backend.get_vocab(with_added_tokens=True)
            self._max_chars_per_token = max((len(token) for token in vocab), default=1)
        return self._max_chars_per_token

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`, dropping special tokens unless `skip_special_tokens` is False."""
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up_tokenization(text) if self._clean_up_spaces else text

    def id_to_token(self, token_id: int) -> str | None:
        """The vocabulary string of `token_id`, or None if out of range."""
        return self.backend.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        """The id of vocabulary string `token`, or None if unknown."""
        return self.backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    # --- special tokens ---------------------------------------------------------------------------

    @property
    def bos_token(self) -> str | None:
        """The beginning-of-sequence token string, if the model has one."""
        return self.special_tokens_map.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        """The end-of-sequence token string, if the model has one."""
        return self.special_tokens_map.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        """The padding token string, if the model has one."""
        return self.special_tokens_map.get("pad_token")

    @property
    def unk_token(self) -> str | None:
        """The unknown-token string, if the model has one."""
        return self.special_tokens_map.get("unk_token")

    @property
    def bos_token_id(self) -> int | None:
        """Id of `bos_token`, or None."""
        return self._id_of(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        """Id of `eos_token`, or None."""
        return self._id_of(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        """Id of `pad_token`, or None."""
        return self._id_of(self.pad_token)

    @property
    def all_special_ids(self) -> frozenset[int]:
        """Ids that `decode(..., skip_special_tokens=True)` drops: named special tokens and special added tokens."""
        return self._special_ids

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    # --- chat templates ---------------------------------------------------------------------------

    @property
    def chat_template(self) -> str | None:
        """The model's default chat template source, or None if it has none."""
        return self._chat_templates.get("default")

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render `messages` to prompt text; `chat_template` is a template source or a named template. With
        `tools`, a template that does not show them (the text is the same without) is an InvalidRequestError
        naming tools: the model would never know of them (a model's named `tool_use` template is trusted)."""
        source = self._select_template(chat_template, tools)
        template = self._compiled.get(source)
        if template is None:
            try:
                template = compile_chat_template(source)
            except jinja2.TemplateSyntaxError as exc:
                raise InvalidRequestError(f"invalid chat template: {exc}", param="chat_template") from exc
            if len(self._compiled) >= _MAX_COMPILED_TEMPLATES:
                # Requests may each bring their own template: bound the cache (oldest out; own ones recompile).
                del self._compiled[next(iter(self._compiled))]
            self._compiled[source] = template
        # Explicit kwargs override the special tokens, as in transformers.
        variables = {**self.special_tokens_map, **kwargs}
        text = render_chat_template(
            template, messages, add_generation_prompt=add_generation_prompt, tools=tools, **variables
        )
        # A model's own `tool_use` template is its template for tools: trusted to use them as it means to.
        checked = tools and source != self._chat_templates.get("tool_use")
        if checked and text == render_chat_template(
            template, messages, add_generation_prompt=add_generation_prompt, **variables
        ):
            raise InvalidRequestError(
                "this model's chat template does not show tools to the model; give a template that renders "
                "`tools` (chat_template) or leave tools out",
                "tools",
            )
        return text

    def _select_template(self, chat_template: str | None, tools: list[dict[str, Any]] | None) -> str:
        if chat_template is not None:
            return self._chat_templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in self._chat_templates:
            return self._chat_templates["tool_use"]
        if "default" in self._chat_templates:
            return self._chat_templates["default"]
        if self._chat_templates:
            raise InvalidRequestError(
                f"this model has several chat templates and no default; pass chat_template= one of "
                f"{sorted(self._chat_templates)}",
                param="chat_template",
            )
        raise InvalidRequestError(
            "this model has no chat template; send a plain prompt (completions) or pass chat_template=",
            param="chat_template",
        )

    def _compile_own_templates(self) -> None:
        # The model's templates are compiled at load, so a broken one fails there and not per request.
        for name, source in self._chat_templates.items():
            try:
                self._compiled[source] = compile_chat_template(source)
            except jinja2.TemplateSyntaxError as exc:
                raise ModelLoadError(f"the model's chat template {name!r} does not compile: {exc}") from exc


def _read_optional_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_dict(value: Any) -> dict[str, Any] | None:
    """A special token given as "<s>" or {"content": "<s>", ...} -> AddedToken properties."""
    if isinstance(value, str):
        return {"content": value}
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return {k: value[k] for k in _ADDED_TOKEN_KEYS if k in value}
    return None


def _special_token_values(directory: Path, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Named special tokens (bos_token, ...) as AddedToken property dicts."""
    values = {name: config[name] for name in SPECIAL_TOKEN_NAMES if config.get(name) is not None}
    if "added_tokens_decoder" not in config:
        # Legacy layout: transformers lets special_tokens_map.json override the config.
        legacy = _read_optional_json(directory / "special_tokens_map.json")
        values.update({name: legacy[name] for name in SPECIAL_TOKEN_NAMES if legacy.get(name) is not None})
    parsed = {name: _token_dict(value) for name, value in values.items()}
    return {name: token for name, token in parsed.items() if token is not None}


def _extra_special_tokens(config: dict[str, Any]) -> list[dict[str, Any]]:
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    values = list(extra.values()) if isinstance(extra, dict) else list(extra)
    # Model-specific named tokens (e.g. "image_token") are special tokens too in transformers 5.
    values += [
        v for k, v in config.items() if k.endswith("_token") and k not in SPECIAL_TOKEN_NAMES and isinstance(v, str)
    ]
    return [token for token in map(_token_dict, values) if token is not None]


def _add_missing_tokens(
    backend: tokenizers.Tokenizer, config: dict[str, Any], special: dict[str, dict[str, Any]]
) -> None:
    """Add tokens the config declares but tokenizer.json lacks, as transformers does at load."""
    existing = backend.get_added_tokens_decoder()
    declared = config.get("added_tokens_decoder") or {}
    if not isinstance(declared, dict) or not all(str(key).isdigit() for key in declared):
        raise ModelLoadError("tokenizer_config.json: added_tokens_decoder must map token ids to tokens")
    for _, props in sorted(declared.items(), key=lambda item: int(item[0])):
        token = _token_dict(props)
        if token is not None:
            added = AddedToken(**token)
            if added not in existing.values():
                backend.add_tokens([added])
    present = {token.content for token in backend.get_added_tokens_decoder().values()}
    for token in [*special.values(), *_extra_special_tokens(config)]:
        if token["content"] not in present:
            backend.add_special_tokens([AddedToken(**{"normalized": False, **token, "special": True})])
            present.add(token["content"])


def _chat_templates(directory: Path, config: dict[str, Any]) -> dict[str, str]:
    """Named chat templates; template files (chat_template.jinja, additional_chat_templates/) win over inline."""
    from_files: dict[str, str] = {}
    default_file = directory / "chat_template.jinja"
    if default_file.is_file():
        from_files["default"] = default_file.read_text(encoding="utf-8")
    extra_dir = directory / "additional_chat_templates"
    if extra_dir.is_dir():
        for file in sorted(extra_dir.glob("*.jinja")):
            from_files[file.stem] = file.read_text(encoding="utf-8")
    if from_files:
        return from_files
    inline = config.get("chat_template")
    if isinstance(inline, str):
        return {"default": inline}
    if isinstance(inline, list):
        return {
            entry["name"]: entry["template"]
            for entry in inline
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("template"), str)
        }
    if inline is not None:
        raise ModelLoadError(f"{directory / 'tokenizer_config.json'}: chat_template must be a string or a list")
    return {}


def _clean_up_tokenization(text: str) -> str:
    # transformers' clean-up for WordPiece-style output: no space before punctuation and contractions.
    for spaced, joined in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
        (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(spaced, joined)
    return text


def _check_unicode(text: str) -> None:
    """Refuse a lone UTF-16 surrogate (valid in JSON and Python strings, not Unicode text): the
    tokenizer would fail on it with a bare TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"the text holds an unpaired surrogate {text[exc.start]!r} at index {exc.start}, which is not valid "
            "Unicode; send well-formed text",
            "prompt",
        ) from None
