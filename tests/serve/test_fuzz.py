"""Fuzz the API from its own /openapi.json with schemathesis: no 5xx, every response as documented,
and the engine healthy afterwards; plus regression tests for what fuzzing found.

The cases are derandomized (a fixed seed, no example database): every run sends the same requests.
benchmarks/fuzz_api.py runs the same fuzz for as long as one likes, with a new seed each round.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("schemathesis")

from forgellm.serve.app import build_app  # noqa: E402
from forgellm.serve.settings import ServerSettings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fuzz_api  # noqa: E402

SEED = 0
EXAMPLES = 50  # cases per operation and mode: 404 requests, about 45 s on a busy 2-core CPU
# Each operation and mode gets an equal share of this: where a slower machine makes generations
# slow, the cases left at the end of a share are not sent (every operation is still fuzzed).
TIME_LIMIT_S = 75.0
MIN_REQUESTS = 200  # the cheap operations alone (tokenize, detokenize, refused bodies) send 300
# Every generation is short: at most 4 prompts x n=4 sequences of a 64-token context.
FUZZ_SETTINGS = ServerSettings(max_prompts_per_request=4)
FUZZ_ENGINE = {"max_model_len": 64, "max_num_seqs": 4, "max_n": 4}


@pytest.fixture(scope="module")
def fuzz_server(server_factory):
    # One intra-op thread in the engine's process (it reads OMP_NUM_THREADS as it starts): where
    # other processes keep both cores busy, two threads wait on each other and a step gets 5 to 20
    # times slower.
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        return server_factory(FUZZ_SETTINGS, **FUZZ_ENGINE)
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def test_openapi_documents_each_body_and_its_errors(fuzz_server):
    schema = fuzz_api.load_schema(fuzz_server.base_url)
    schema.validate()  # OpenAPI 3.1, as schemathesis reads it
    raw = schema.raw_schema
    components = raw["components"]["schemas"]
    for path, model in [
        ("/v1/chat/completions", "ChatCompletionRequest"),
        ("/v1/completions", "CompletionRequest"),
        ("/tokenize", "TokenizeRequest"),
        ("/detokenize", "DetokenizeRequest"),
    ]:
        operation = raw["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{model}"
        }
        assert components[model]["additionalProperties"] is False  # unknown fields are refused
        assert components[model]["properties"]["model"]["anyOf"][0] == {"enum": ["forgellm-demo"]}
        assert {"200", "400", "404", "413"} <= set(operation["responses"])
    for path in ("/v1/chat/completions", "/v1/completions"):
        responses = raw["paths"][path]["post"]["responses"]
        assert {"429", "500", "503"} <= set(responses)
        assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    vocab = fuzz_server.engine.tokenizer.vocab_size
    assert components["DetokenizeRequest"]["properties"]["tokens"]["items"]["maximum"] == vocab - 1


def test_fuzz_sends_no_5xx_and_leaves_the_engine_healthy(fuzz_server, capsys, record_property):
    schema = fuzz_api.load_schema(fuzz_server.base_url)
    start = time.monotonic()
    report = fuzz_api.FuzzReport()
    try:
        # A failing check raises with the smallest case Hypothesis found and its curl command.
        fuzz_api.fuzz(
            schema,
            examples=EXAMPLES,
            seed=SEED,
            deadline=start + TIME_LIMIT_S,
            report=report,
            raise_failures=True,
        )
    finally:
        record_property("fuzz_requests", report.requests)
        with capsys.disabled():
            print(f"\nfuzz: {time.monotonic() - start:.0f} s, {report.summary()}")
    assert report.server_errors() == 0
    assert report.requests >= MIN_REQUESTS, report.unfinished
    # Streams the fuzz hung up on after 20 events are aborted, and every KV block comes back.
    assert fuzz_server.wait_until(fuzz_server.is_idle, timeout=30), fuzz_server.engine.stats()
    assert fuzz_api.check_healthy(fuzz_server.base_url, "forgellm-demo") == []
    assert fuzz_server.is_idle()


def test_openapi_documents_the_api_key_when_the_server_has_one():
    app = build_app(engine=None, settings=ServerSettings(api_key="secret"))  # type: ignore[arg-type]
    raw = app.openapi()
    fuzz_api.schemathesis.openapi.from_dict(raw).validate()
    assert raw["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for path, method in [("/v1/completions", "post"), ("/tokenize", "post"), ("/v1/models", "get")]:
        assert raw["paths"][path][method]["security"] == [{"bearer": []}]
        assert "401" in raw["paths"][path][method]["responses"]
    for path in ("/health", "/version", "/metrics"):  # no key needed
        assert "security" not in raw["paths"][path]["get"]


# A lone UTF-16 surrogate is valid JSON ("\ud800") but not Unicode: it reached the tokenizer, whose
# TypeError was a 500 (found by the fuzz's insert_lone_surrogate). Now a 400 names the field.
LONE_SURROGATES = [
    ("/v1/completions", '{"prompt": "\\udfff", "max_tokens": 2}', "prompt"),
    ("/v1/completions", '{"prompt": ["ok", "a\\ud800b"], "max_tokens": 2}', "prompt"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\ud800"}]}', "messages.0.content"),
    (
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}], "stream": true}',
        "messages.0.content",
    ),
    ("/tokenize", '{"prompt": "\\udfff"}', "prompt"),
    ("/tokenize", '{"messages": [{"role": "user", "content": "x\\udc00"}]}', "messages.0.content"),
    ("/v1/completions", '{"prompt": "ok", "stop": ["\\ud800"]}', "stop"),
]


@pytest.mark.parametrize(("path", "body", "param"), LONE_SURROGATES)
def test_lone_surrogates_are_refused_by_name(fuzz_server, path, body, param):
    status, answer = fuzz_server.request("POST", path, body.encode())
    assert status == 400, answer
    assert answer["error"]["param"] == param
    assert "surrogate" in answer["error"]["message"]


def test_a_surrogate_pair_is_text(fuzz_server):
    """Only lone halves are refused: an escaped pair is one character (U+1F600 here)."""
    status, answer = fuzz_server.request("POST", "/tokenize", b'{"prompt": "\\ud83d\\ude00"}')
    assert status == 200, answer
    assert answer["count"] >= 1
