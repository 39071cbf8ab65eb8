"""StructuredOutputsParams: exactly one constraint, typed errors naming the field, vLLM's older spelling."""

from __future__ import annotations

import pytest

from forgellm.errors import InvalidRequestError
from forgellm.sampling_params import SamplingParams
from forgellm.structured.params import StructuredOutputsParams


def test_one_constraint_and_its_key():
    params = StructuredOutputsParams(choice=["yes", "no"])
    assert params.kind == "choice" and params.choice == ("yes", "no")
    assert params.key == ("choice", '["yes", "no"]')
    schema = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}
    reordered = {"properties": {"a": {"type": "string"}, "b": {"type": "integer"}}, "type": "object"}
    assert StructuredOutputsParams(json=schema).key == StructuredOutputsParams(json=reordered).key


def test_sampling_params_take_a_dict_or_the_older_guided_decoding():
    assert SamplingParams(structured_outputs={"regex": "[a-z]+"}).structured_outputs == StructuredOutputsParams(
        regex="[a-z]+"
    )
    moved = SamplingParams(guided_decoding={"json_object": True})
    assert moved.structured_outputs.kind == "json_object" and moved.guided_decoding is None
    with pytest.raises(InvalidRequestError, match="not both"):
        SamplingParams(structured_outputs={"regex": "a"}, guided_decoding={"regex": "b"})


@pytest.mark.parametrize(
    ("value", "param", "words"),
    [
        ({}, "structured_outputs", "exactly one"),
        ({"regex": "a", "choice": ["a"]}, "structured_outputs", "exactly one"),
        ({"json_object": "yes"}, "structured_outputs.json_object", "must be true"),
        ({"choice": []}, "structured_outputs.choice", "non-empty list"),
        ({"choice": ["a", ""]}, "structured_outputs.choice", "non-empty strings"),
        ({"regex": ""}, "structured_outputs.regex", "non-empty string"),
        ({"grammar": 3}, "structured_outputs.grammar", "non-empty string"),
        ({"json": 3}, "structured_outputs.json", "JSON object"),
        ({"json": {}, "disable_any_whitespace": 1}, "structured_outputs.disable_any_whitespace", "true or false"),
        ({"schema": {}}, "structured_outputs", "unknown"),
    ],
)
def test_bad_constraints_are_refused_naming_the_field(value, param, words):
    with pytest.raises(InvalidRequestError, match=words) as err:
        SamplingParams(structured_outputs=value)
    assert err.value.param == param
