"""What crosses the pipe to the engine process: outputs without their prompt, errors as plain tuples."""

from __future__ import annotations

import pickle

import pytest

from forgellm import errors
from forgellm.engine.wire import decode_error, decode_output, encode_error, encode_output, wire_request_id
from forgellm.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput


def test_an_output_comes_back_whole_under_the_callers_id_with_its_prompt():
    out = RequestOutput(
        request_id="7",
        prompt=None,
        prompt_token_ids=[],
        outputs=[CompletionOutput(0, "hi", [5, 6], -1.5, [{5: Logprob(-0.5, 1, "h")}], "stop", "\n")],
        finished=True,
        prompt_logprobs=[None, {3: Logprob(-2.0, 2, "x")}],
        metrics=RequestMetrics(1.0, 2.0, 3.0, 4.0, 5.0, 6),
        num_cached_tokens=16,
        delta=True,
        error="boom",
    )
    wire = pickle.loads(pickle.dumps(encode_output(out)))
    assert wire_request_id(wire) == "7"
    back = decode_output(wire, "caller-id", "the prompt", [1, 2, 3])
    expected = {**vars(out), "request_id": "caller-id", "prompt": "the prompt", "prompt_token_ids": [1, 2, 3]}
    assert back == RequestOutput(**expected)


@pytest.mark.parametrize(
    "error",
    [
        errors.ContextLengthError("too long", "prompt"),
        errors.InvalidRequestError("bad n", "n"),
        errors.CapacityError("no room"),
        errors.QueueFullError("full"),
        errors.EngineDeadError("gone"),
    ],
)
def test_forgellm_errors_come_back_as_themselves(error):
    back = decode_error(pickle.loads(pickle.dumps(encode_error(error))))
    assert type(back) is type(error) and str(back) == str(error)
    assert getattr(back, "param", None) == getattr(error, "param", None)


def test_any_other_error_comes_back_as_a_request_failure_naming_it():
    back = decode_error(encode_error(KeyError("x")))
    assert isinstance(back, errors.RequestFailedError) and "KeyError" in str(back)
    # A class of the same name elsewhere must not be instantiated: only forgellm.errors is looked up.
    assert isinstance(decode_error(("Path", "/etc", None)), errors.RequestFailedError)


@pytest.mark.parametrize("wire", [None, 5, ("only", "two"), "text"])
def test_a_malformed_error_is_a_request_failure_not_a_crash(wire):
    back = decode_error(wire)
    assert isinstance(back, errors.RequestFailedError) and "malformed" in str(back)
