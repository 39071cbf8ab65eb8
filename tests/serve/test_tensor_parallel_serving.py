"""`forgellm serve`'s engine (in its child process) under tensor_parallel_size 2 on the CPU: the openai client
gets the single-device answer, streamed and not."""

from __future__ import annotations

from forgellm import LLM, SamplingParams
from forgellm.engine.process_engine import ProcessAsyncLLM


def test_a_tp2_server_answers_as_one_device(server_factory, tiny_model_dir) -> None:
    path = str(tiny_model_dir("llama-gqa4-llama3"))
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    expected = LLM(path, dtype="float32").generate(["def f(x):"], params, use_tqdm=False)[0].outputs[0].text
    server = server_factory(engine_class=ProcessAsyncLLM, model=path, max_model_len=256, tensor_parallel_size=2)
    client = server.client()
    options = dict(model=server.settings.model_name, prompt="def f(x):", max_tokens=8, temperature=0)
    reply = client.completions.create(**options, extra_body={"ignore_eos": True})
    assert reply.choices[0].text == expected
    streamed = client.completions.create(**options, extra_body={"ignore_eos": True}, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == expected
