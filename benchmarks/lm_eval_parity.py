"""lm-evaluation-harness against `forgellm serve`: the same scores as lm-eval's own `hf` model.

    pip install -e ".[eval,dev]"
    python benchmarks/lm_eval_parity.py [--docs 40] [--port 8931]

Writes a tiny random float32 checkpoint (tests/fixtures/make_tiny_models.py, the demo tokenizer),
a multiple-choice task and a generate_until task (local JSONL + task YAML, no download), starts
`forgellm serve` on the checkpoint, and runs both tasks twice: `local-completions` against the
server (loglikelihood through echo + logprobs, as lm-eval sends it) and `hf` in-process in float32.
Prints acc / acc_norm (and exact_match) of both and exits 1 if they differ. Not a CI test: lm-eval
is heavy, and stays the optional extra `eval`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

# Everything local: the tasks read JSONL files, the models are on disk.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = "red green blue cat dog bird tree house river stone light night sun moon water fire".split()

MC_YAML = """task: forgellm_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""

GEN_YAML = """task: forgellm_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0.0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def write_tasks(folder: Path, num_docs: int) -> None:
    """A multiple-choice and a generate_until task over seeded random word puzzles."""
    rng = random.Random(0)
    mc, gen = [], []
    for _ in range(num_docs):
        words = rng.sample(WORDS, 6)
        question = f"Which word comes after {' '.join(words[:3])}? Answer:"
        choices = [f" {w}" for w in words[3:6]] + [f" {words[0]} {words[1]}"]  # lengths differ: acc_norm matters
        mc.append({"question": question, "choices": choices, "label": rng.randrange(len(choices))})
        gen.append({"question": f"Continue: {' '.join(words)}", "answer": f" {words[0]}"})
    for name, docs, template in (("mc", mc, MC_YAML), ("gen", gen, GEN_YAML)):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs))
        (folder / f"forgellm_{name}.yaml").write_text(template.format(data=data))


def start_server(model: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`forgellm serve` on `model` in float32; returns once /health answers."""
    command = [sys.executable, "-m", "forgellm", "serve", str(model), "--dtype", "float32"]
    command += ["--max-model-len", "256", "--port", str(port), "--served-model-name", "tiny"]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"forgellm serve exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"forgellm serve did not start in 120 s; see {log}")


def evaluate(model: str, model_args: str, tasks_dir: Path) -> dict[str, dict[str, Any]]:
    """lm-eval's results per task for one model."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=["forgellm_mc", "forgellm_gen"],
        task_manager=TaskManager(include_path=str(tasks_dir)),
        batch_size=1,
        log_samples=True,
    )
    assert results is not None
    scores = {task: dict(values) for task, values in results["results"].items()}
    outputs = [s["filtered_resps"] for s in results["samples"]["forgellm_gen"]]
    scores["forgellm_gen"]["outputs"] = outputs
    # Each choice's (loglikelihood, is_greedy), document by document, in lm-eval's order.
    scores["forgellm_mc"]["loglikelihoods"] = [
        [float(r[0]) for r in s["filtered_resps"]] for s in results["samples"]["forgellm_mc"]
    ]
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=40, help="documents per task")
    parser.add_argument("--port", type=int, default=8931)
    args = parser.parse_args()

    from tests.fixtures.make_tiny_models import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = make_tiny_model("llama", folder)
        write_tasks(folder, args.docs)
        server = start_server(model, args.port, folder / "serve.log")
        try:
            served = evaluate(
                "local-completions",
                f"model=tiny,base_url=http://127.0.0.1:{args.port}/v1/completions,num_concurrent=1,"
                f"max_retries=1,tokenizer_backend=huggingface,tokenizer={model},max_length=256",
                folder,
            )
        finally:
            server.terminate()
            server.wait(30)
        reference = evaluate("hf", f"pretrained={model},dtype=float32,device=cpu,max_length=256", folder)

    same = True
    for metric in ("acc,none", "acc_norm,none"):
        a, b = served["forgellm_mc"][metric], reference["forgellm_mc"][metric]
        print(f"forgellm_mc {metric:14s} forgellm serve {a:.4f}   hf {b:.4f}")
        same &= abs(a - b) < 1e-9
    pairs = zip(served["forgellm_mc"]["loglikelihoods"], reference["forgellm_mc"]["loglikelihoods"])
    worst = max(abs(x - y) for a_doc, b_doc in pairs for x, y in zip(a_doc, b_doc))
    print(f"forgellm_mc largest loglikelihood difference: {worst:.2e}")
    a, b = served["forgellm_gen"]["exact_match,none"], reference["forgellm_gen"]["exact_match,none"]
    print(f"forgellm_gen exact_match     forgellm serve {a:.4f}   hf {b:.4f}")
    equal_outputs = sum(x == y for x, y in zip(served["forgellm_gen"]["outputs"], reference["forgellm_gen"]["outputs"]))
    print(f"forgellm_gen outputs equal: {equal_outputs} of {len(reference['forgellm_gen']['outputs'])}")
    print(f"forgellm_gen first outputs: {served['forgellm_gen']['outputs'][:3]}")
    same &= equal_outputs == len(reference["forgellm_gen"]["outputs"])
    print("same scores and outputs" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
