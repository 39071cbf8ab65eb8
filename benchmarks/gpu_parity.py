"""Greedy parity of a device against the CPU float32 reference, on the tiny fixtures (batched prompts).

    python benchmarks/gpu_parity.py [--device cuda] [--variants llama,qwen3] [--json PATH]

The issue's bar: float32 on the GPU gives the CPU's greedy tokens exactly for the first 16 tokens;
bfloat16 is reported (identical prompts, mean shared prefix) since rounding may flip a near tie.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # forgellm and tests.fixtures without installing

from forgellm.bench.datasets import random_requests  # noqa: E402

PROMPT_LENS, NEW_TOKENS = (5, 17, 40), 16
FIXTURE_VOCAB = 4096  # the fixtures use the demo tokenizer
DTYPES = ("float32", "bfloat16")


@dataclass
class ParityResult:
    """Counts over every (variant, prompt): identical greedy sequences per dtype, shared-prefix tokens."""

    num_prompts: int = 0
    identical: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DTYPES, 0))
    shared_prefix: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DTYPES, 0))
    mismatches: list[str] = field(default_factory=list)

    def exact_fraction(self, dtype: str) -> float:
        return self.identical[dtype] / self.num_prompts if self.num_prompts else float("nan")

    def mean_prefix(self, dtype: str) -> float:
        return self.shared_prefix[dtype] / self.num_prompts if self.num_prompts else float("nan")


def greedy_tokens(path: Path, device: str, dtype: str, prompts: list[list[int]]) -> list[list[int]]:
    """NEW_TOKENS greedy tokens per prompt, the prompts batched together."""
    import torch

    from forgellm import LLM, SamplingParams

    llm = LLM(str(path), dtype=dtype, device=device, max_num_seqs=8)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True, detokenize=False)
    tokens = [out.outputs[0].token_ids for out in llm.generate(prompts, params, use_tqdm=False)]
    del llm
    gc.collect()  # free this engine's KV cache and graphs before the next one sizes its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return tokens


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def measure_parity(device: str, variants: list[str]) -> ParityResult:
    """Make each fixture (needs transformers), then compare `device` in each dtype with CPU float32."""
    from transformers.utils import logging as hf_logging

    from tests.fixtures.make_tiny_models import make_tiny_model

    hf_logging.disable_progress_bar()  # one bar per saved fixture would bury the suite's output
    result = ParityResult()
    prompts = [random_requests(1, n, 1, FIXTURE_VOCAB, seed=n)[0].prompt_token_ids for n in PROMPT_LENS]
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            path = make_tiny_model(variant, Path(tmp))
            reference = greedy_tokens(path, "cpu", "float32", prompts)
            for dtype in DTYPES:
                got = greedy_tokens(path, device, dtype, prompts)
                same = sum(a == b for a, b in zip(got, reference))
                result.identical[dtype] += same
                result.shared_prefix[dtype] += sum(common_prefix(a, b) for a, b in zip(got, reference))
                if same < len(prompts):
                    result.mismatches.append(f"{variant} {dtype}: {same}/{len(prompts)} prompts identical")
            result.num_prompts += len(prompts)
    return result


def main() -> int:
    """Print the parity of one device; exit 1 if float32 differs from the CPU anywhere."""
    from tests.fixtures.make_tiny_models import VARIANTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated fixture names")
    parser.add_argument("--json", metavar="PATH", default=None, help="also write the figures as JSON")
    args = parser.parse_args()
    result = measure_parity(args.device, [v for v in args.variants.split(",") if v])
    for line in result.mismatches:
        print(line)
    figures = {dtype: {"exact": result.exact_fraction(dtype), "prefix": result.mean_prefix(dtype)} for dtype in DTYPES}
    for dtype, f in figures.items():
        print(f"{dtype}: {f['exact']:.3f} identical, mean shared prefix {f['prefix']:.1f} of {NEW_TOKENS}")
    if args.json:
        Path(args.json).write_text(json.dumps({"num_prompts": result.num_prompts, **figures}), encoding="utf-8")
    return 0 if result.identical["float32"] == result.num_prompts else 1


if __name__ == "__main__":
    sys.exit(main())
