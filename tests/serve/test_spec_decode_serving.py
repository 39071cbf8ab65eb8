"""A speculating engine behind the server: the same greedy text as a plain one through the openai client,
acceptance counters in /metrics, and a bad request that fails alone."""

from __future__ import annotations

import openai
import pytest

from forgellm.engine.llm_engine import DEMO_MODEL_DIR
from tests.serve.conftest import metric_value

DRAFT = {"method": "draft_model", "model": str(DEMO_MODEL_DIR.parent / "demo-draft"), "num_speculative_tokens": 3}
PROMPT = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n"


def test_speculating_server_matches_plain_and_reports_acceptance(server_factory, demo_server):
    spec = server_factory(speculative_config=DRAFT)
    before = spec.metrics()
    kwargs = dict(model="forgellm-demo", prompt=PROMPT, max_tokens=24, temperature=0)
    want = demo_server.client().completions.create(**kwargs).choices[0].text
    got = spec.client().completions.create(**kwargs)
    assert got.choices[0].text == want and got.usage.completion_tokens == 24
    stream = spec.client().chat.completions.create(
        model="forgellm-demo",
        messages=[{"role": "user", "content": "What does os.path.join do?"}],
        max_tokens=16,
        temperature=0.8,
        seed=3,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    after = spec.metrics()
    drafted = metric_value(after, "forgellm_spec_decode_num_draft_tokens_total")
    accepted = metric_value(after, "forgellm_spec_decode_num_accepted_tokens_total")
    assert drafted > metric_value(before, "forgellm_spec_decode_num_draft_tokens_total") and 0 < accepted <= drafted
    first = metric_value(after, "forgellm_spec_decode_num_accepted_tokens_per_pos_total", '{position="0"}')
    assert 0 < first <= metric_value(after, "forgellm_spec_decode_num_verify_steps_total")
    # A bad request fails alone; the next one is served.
    with pytest.raises(openai.BadRequestError):
        spec.client().completions.create(model="forgellm-demo", prompt=PROMPT, max_tokens=-1)
    again = spec.client().completions.create(**kwargs)
    assert again.choices[0].text == want
