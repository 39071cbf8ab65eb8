"""A quantized engine behind the server: /v1/models says the scheme, weight memory and KV-cache dtype,
and completions and chat work through the official openai client."""

from __future__ import annotations


def test_models_describe_quantization(server_factory, demo_server):
    quantized = server_factory(quantization="int8", kv_cache_dtype="fp8")
    status, body = quantized.request("GET", "/v1/models")
    card = body["data"][0]
    assert status == 200 and card["quantization"].startswith("int8 weight-only (per channel")
    assert card["kv_cache_dtype"] == "float8_e4m3fn"
    _, plain = demo_server.request("GET", "/v1/models")
    plain_card = plain["data"][0]
    assert plain_card["quantization"] is None and plain_card["kv_cache_dtype"] == "float32"
    # int8 linears take a quarter of the float32 engine's bytes (the embedding stays float32).
    assert card["weight_memory_bytes"] < 0.6 * plain_card["weight_memory_bytes"]
    client = quantized.client()
    completion = client.completions.create(model="forgellm-demo", prompt="def add(a, b):", max_tokens=8, temperature=0)
    assert completion.choices[0].finish_reason == "length" and completion.usage.completion_tokens == 8
    chat = client.chat.completions.create(
        model="forgellm-demo", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0
    )
    assert chat.choices[0].message.content
