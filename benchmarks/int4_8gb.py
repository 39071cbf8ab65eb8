"""The Jetson 8 GB case on the H200: INT4 Llama-3.1-8B (random weights quantized at load) under an 8 GB
GPU memory cap (torch.cuda.set_per_process_memory_fraction), max_model_len 4096, 4 concurrent requests
of 1024 prompt + 256 output tokens. Prints one JSON line: output tok/s, peak memory, weight memory.

    python benchmarks/int4_8gb.py [--kv-cache-dtype auto|fp8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Near the cap, quantizing at load leaves freed blocks too fragmented for the next layer's temporaries.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forgellm import LLM, SamplingParams  # noqa: E402
from forgellm.models.presets import preset_dir  # noqa: E402

CAP_BYTES = 8 * 2**30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kv-cache-dtype", default="auto", choices=("auto", "fp8"))
    args = parser.parse_args()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(CAP_BYTES / total)
    llm = LLM(
        str(preset_dir("llama-3.1-8b")),
        load_format="dummy",
        dtype="bfloat16",
        quantization="int4",
        kv_cache_dtype=args.kv_cache_dtype,
        max_model_len=4096,
        max_num_seqs=4,
        max_num_batched_tokens=2048,
        # The engine sizes its KV cache from this fraction of the whole GPU: keep it inside the cap.
        gpu_memory_utilization=0.95 * CAP_BYTES / total,
    )
    params = SamplingParams(max_tokens=256, ignore_eos=True)
    prompts = [[(i * 7 + j) % 1000 + 5 for j in range(1024)] for i in range(4)]
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    info = llm.engine.model_info
    print(
        json.dumps(
            {
                "out_tok_s": tokens / elapsed,
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                "weights_gib": info.weight_gib,
                "kv_cache_dtype": info.kv_cache_dtype,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
