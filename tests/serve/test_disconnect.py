"""Clients that drop mid-prefill or mid-stream have their requests aborted and their KV blocks freed."""

from __future__ import annotations

import json
import socket

import pytest

from tests.serve.conftest import metric_value

ABORTS = ("forgellm_request_finished_total", '{finish_reason="abort"}')
# 8 tokens per step: a 1000-token prompt needs 125 prefill steps, seconds on any CPU, so the
# client can leave while it is still being prefilled.
PREFILL_CHUNK = 8
LONG_PROMPT = [7 + (i % 3000) for i in range(1000)]


@pytest.fixture(scope="module")
def slow_prefill(server_factory):
    return server_factory(max_num_batched_tokens=PREFILL_CHUNK, enable_prefix_caching=False)


def _send_raw(port: int, path: str, body: dict) -> socket.socket:
    """Send a POST and return the open socket without reading the answer."""
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + data)
    return sock


def _in_prefill(server) -> bool:
    stats = server.engine.stats()
    return stats.num_running == 1 and stats.kv_cache_usage > 0.0


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
def test_drop_mid_prefill_frees_kv(slow_prefill, stream):
    assert slow_prefill.wait_until(slow_prefill.is_idle)
    aborts = metric_value(slow_prefill.metrics(), *ABORTS)
    generated = metric_value(slow_prefill.metrics(), "forgellm_generation_tokens_total")
    body = {"model": "forgellm-demo", "prompt": LONG_PROMPT, "max_tokens": 4, "stream": stream}
    sock = _send_raw(slow_prefill.port, "/v1/completions", body)
    try:
        assert slow_prefill.wait_until(lambda: _in_prefill(slow_prefill))
    finally:
        sock.close()
    assert slow_prefill.wait_until(slow_prefill.is_idle), slow_prefill.engine.stats()
    after = slow_prefill.metrics()
    assert metric_value(after, *ABORTS) == aborts + 1
    assert metric_value(after, "forgellm_generation_tokens_total") == generated  # it never got to decode


def test_drop_mid_stream_frees_kv(demo_server):
    assert demo_server.wait_until(demo_server.is_idle)
    aborts = metric_value(demo_server.metrics(), *ABORTS)
    client = demo_server.client()
    streams = [
        client.chat.completions.create(
            model="forgellm-demo",
            messages=[{"role": "user", "content": f"count to {i}"}],
            max_tokens=800,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for i in range(3)
    ]
    for stream in streams:
        chunks = iter(stream)
        for _ in range(3):
            next(chunks)
    assert demo_server.engine.stats().kv_cache_usage > 0.0
    for stream in streams:
        stream.close()
    assert demo_server.wait_until(demo_server.is_idle), demo_server.engine.stats()
    assert metric_value(demo_server.metrics(), *ABORTS) == aborts + 3


def test_drop_non_streaming_mid_decode_frees_kv(demo_server):
    assert demo_server.wait_until(demo_server.is_idle)
    aborts = metric_value(demo_server.metrics(), *ABORTS)
    body = {"model": "forgellm-demo", "prompt": "x", "max_tokens": 900, "ignore_eos": True}
    sock = _send_raw(demo_server.port, "/v1/completions", body)
    try:
        assert demo_server.wait_until(lambda: demo_server.engine.stats().kv_cache_usage > 0.0)
    finally:
        sock.close()
    assert demo_server.wait_until(demo_server.is_idle), demo_server.engine.stats()
    assert metric_value(demo_server.metrics(), *ABORTS) == aborts + 1
