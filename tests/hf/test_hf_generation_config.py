"""generation_config.json: the model author's sampling defaults."""

from __future__ import annotations

import json

import pytest

from forgellm.errors import ModelLoadError
from forgellm.hf import GenerationDefaults, load_generation_defaults


def test_missing_file_gives_nothing(tmp_path):
    defaults = load_generation_defaults(tmp_path)
    assert defaults == GenerationDefaults()
    assert defaults.eos_token_ids == () and defaults.temperature is None and defaults.max_new_tokens is None


def test_values_are_read(tmp_path):
    config = {
        "bos_token_id": 1,
        "eos_token_id": [151645, 151643],
        "do_sample": True,
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "min_p": 0,
        "repetition_penalty": 1.05,
        "max_new_tokens": 512,
        "transformers_version": "4.51.0",
    }
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    assert load_generation_defaults(tmp_path) == GenerationDefaults(
        eos_token_ids=(151645, 151643),
        temperature=0.6,
        top_p=0.95,
        top_k=20,
        min_p=0.0,
        repetition_penalty=1.05,
        max_new_tokens=512,
    )


def test_single_eos_and_partial_file(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "temperature": None}))
    assert load_generation_defaults(tmp_path) == GenerationDefaults(eos_token_ids=(2,))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{broken", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"temperature": "hot"}', "temperature"),
        ('{"top_k": 2.5}', "top_k"),
        ('{"eos_token_id": ["x"]}', "eos_token_id"),
    ],
)
def test_bad_files_raise(tmp_path, text, match):
    (tmp_path / "generation_config.json").write_text(text)
    with pytest.raises(ModelLoadError, match=match) as error:
        load_generation_defaults(tmp_path)
    assert "generation_config.json" in str(error.value)
