"""Issue 15 on the H200: Qwen2.5-VL-7B shape (random weights, bf16), one 896x896 image (1,024 visual tokens)
+ 64 text tokens. Measures, for forgellm and for transformers (eager model, sdpa) on the same machine:
vision-encoder time, TTFT, batch-1 decode tok/s with the image and without, and forgellm's throughput for
`--num-requests` requests each with its own image.

    python benchmarks/vlm_bench.py --out vlm.json [--skip-transformers] [--num-requests 500]

Targets (issue 15): encoder <= 15 ms, TTFT <= 40 ms, decode with an image >= 90% of text-only, TTFT >= 3x
and decode >= 10x transformers'.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from forgellm.bench.datasets import BenchRequest  # noqa: E402
from forgellm.bench.images import image_prompt  # noqa: E402
from forgellm.bench.latency import measure_latency  # noqa: E402
from forgellm.bench.throughput import measure_throughput  # noqa: E402
from forgellm.config import EngineConfig  # noqa: E402
from forgellm.engine.llm_engine import LLMEngine  # noqa: E402
from forgellm.models.presets import preset_dir  # noqa: E402
from forgellm.multimodal.qwen2_vl_processor import Qwen2VLImageProcessor  # noqa: E402
from forgellm.sampling_params import SamplingParams  # noqa: E402

SIZE = (896, 896)
TEXT_TOKENS = 64


def cuda_ms(fn, repeats: int = 10, warmup: int = 3) -> float:  # noqa: ANN001
    """Median CUDA-event milliseconds of fn()."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def random_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)


def forgellm_figures(preset: Path, num_requests: int) -> dict:
    engine = LLMEngine(EngineConfig(model=str(preset), load_format="dummy", max_num_seqs=256))
    model, runner = engine.core.runner.model, engine.core.runner
    processor = Qwen2VLImageProcessor.from_dir(preset)
    from PIL import Image

    image = Image.fromarray(random_image(0))
    start = time.perf_counter()
    inputs = processor.preprocess([image])
    preprocess_ms = (time.perf_counter() - start) * 1e3
    pixels, grid = inputs.pixel_values.cuda(), inputs.grid_thw
    with torch.inference_mode():
        eager_ms = cuda_ms(partial(model.encode_images, pixels, grid))
        # What the engine runs: the tower's CUDA graph for this image size (captured on its second sighting).
        encoder_ms = cuda_ms(partial(runner.encode_images, pixels, grid))
    tokens = int(grid.prod()) // 4
    with_image = measure_latency(engine, 1, TEXT_TOKENS, 128, 5, 2, temperature=0.0, disable_tqdm=True, image_size=SIZE)
    text_only = measure_latency(engine, 1, TEXT_TOKENS, 128, 5, 2, temperature=0.0, disable_tqdm=True)
    engine_ttft_ms = ttft_after_preprocessing(engine)
    vocab = engine.arch.vocab_size
    rng = np.random.default_rng(1)
    requests = [BenchRequest(rng.integers(0, vocab, TEXT_TOKENS).tolist(), 128) for _ in range(num_requests)]
    start = time.perf_counter()
    throughput = measure_throughput(engine, requests, 0.0, True, image_size=SIZE)
    wall = time.perf_counter() - start
    del engine, model, runner
    gc.collect()
    torch.cuda.empty_cache()
    return {
        "visual_tokens": tokens,
        "encoder_ms": round(encoder_ms, 2),
        "encoder_eager_ms": round(eager_ms, 2),
        "preprocess_ms_host": round(preprocess_ms, 1),
        "ttft_ms": round(with_image.ttft_s.mean * 1e3, 2),
        "ttft_ms_after_preprocessing": round(engine_ttft_ms, 2),
        "decode_tok_s_image": round(with_image.decode_tok_s, 1),
        "decode_tok_s_text_only": round(text_only.decode_tok_s, 1),
        "decode_image_vs_text": round(with_image.decode_tok_s / text_only.decode_tok_s, 3),
        "throughput_requests": num_requests,
        "throughput_req_s": round(throughput.requests_per_s, 2),
        "throughput_output_tok_s": round(throughput.output_tok_s, 1),
        "throughput_wall_s_with_preprocessing": round(wall, 1),
    }


def ttft_after_preprocessing(engine: LLMEngine, repeats: int = 5) -> float:
    """Median ms from handing the engine an already preprocessed image prompt to its first token: what
    transformers' TTFT below measures too (its inputs are preprocessed before the clock)."""
    times = []
    for index in range(repeats + 1):
        prompt = image_prompt(engine, list(range(1000, 1000 + TEXT_TOKENS)), SIZE, 9_000_011 + index)
        processed = engine.process(prompt, SamplingParams(max_tokens=1, temperature=0.0))
        start = time.perf_counter()
        engine.add_request(f"ttft{index}", processed)
        while engine.has_unfinished_requests():
            engine.step()
        if index:  # the first one warms up
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def transformers_figures(preset: Path) -> dict:
    """The same shape in transformers: the eager model with sdpa attention, random weights, bf16."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(preset)
    config._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = transformers.Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    processor = Qwen2VLImageProcessor.from_dir(preset)
    from PIL import Image

    inputs = processor.preprocess([Image.fromarray(random_image(0))])
    pixels, grid = inputs.pixel_values.cuda().to(torch.bfloat16), inputs.grid_thw.cuda()
    tokens = int(grid.prod()) // 4
    raw = config.to_dict()
    ids = [1] * TEXT_TOKENS + [raw["vision_start_token_id"]] + [raw["image_token_id"]] * tokens
    ids = torch.tensor([ids + [raw["vision_end_token_id"]]], device="cuda")
    types = (ids == raw["image_token_id"]).to(torch.int32)
    with torch.inference_mode():
        encoder_ms = cuda_ms(lambda: model.model.visual(pixels, grid_thw=grid), repeats=5, warmup=2)
        ttft_ms = cuda_ms(
            lambda: model(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=types),
            repeats=5,
            warmup=2,
        )
        new = 32
        generate = dict(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=types)
        total_ms = cuda_ms(
            lambda: model.generate(**generate, max_new_tokens=new, min_new_tokens=new, do_sample=False),
            repeats=2,
            warmup=1,
        )
    decode_tok_s = (new - 1) / ((total_ms - ttft_ms) / 1e3)
    return {"encoder_ms": round(encoder_ms, 2), "ttft_ms": round(ttft_ms, 2), "decode_tok_s": round(decode_tok_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--preset", default="qwen2.5-vl-7b")
    parser.add_argument("--num-requests", type=int, default=500)
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    preset = preset_dir(args.preset)
    result = {"preset": args.preset, "image": "{}x{}".format(*SIZE), "text_tokens": TEXT_TOKENS}
    result["forgellm"] = forgellm_figures(preset, args.num_requests)
    print(json.dumps(result, indent=1), flush=True)
    if not args.skip_transformers:
        result["transformers"] = hf = transformers_figures(preset)
        ours = result["forgellm"]
        result["ttft_speedup"] = round(hf["ttft_ms"] / ours["ttft_ms_after_preprocessing"], 2)
        result["ttft_speedup_with_our_preprocessing"] = round(hf["ttft_ms"] / ours["ttft_ms"], 2)
        result["decode_speedup"] = round(ours["decode_tok_s_image"] / hf["decode_tok_s"], 2)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
