"""Where a vision-language request's time goes on the GPU (issue 15): preprocessing, the vision tower's
kernels, and the engine's steps up to the first token. Qwen2.5-VL-7B shape, random weights, one 896x896 image.

    python benchmarks/profile_vlm.py [--preset qwen2.5-vl-7b] [--out profile.txt]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[0] = str(REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from forgellm.config import EngineConfig  # noqa: E402
from forgellm.engine.llm_engine import LLMEngine  # noqa: E402
from forgellm.models.presets import preset_dir  # noqa: E402
from forgellm.multimodal.qwen2_vl_processor import Qwen2VLImageProcessor  # noqa: E402
from forgellm.sampling_params import SamplingParams  # noqa: E402

SIZE = 896


def wall_ms(fn, repeats: int = 10) -> float:  # noqa: ANN001
    """Median host milliseconds of fn() followed by a device sync."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def kernel_table(fn, rows: int = 25) -> str:  # noqa: ANN001
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="qwen2.5-vl-7b")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    preset = preset_dir(args.preset)
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    engine = LLMEngine(EngineConfig(model=str(preset), load_format="dummy", max_num_seqs=64))
    model = engine.core.runner.model
    processor = Qwen2VLImageProcessor.from_dir(preset)
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    start = time.perf_counter()
    inputs = processor.preprocess([image])
    say(f"preprocess 896x896: {(time.perf_counter() - start) * 1e3:.1f} ms (host)")
    start = time.perf_counter()
    hashlib.sha256(inputs.pixel_values.numpy().tobytes()).digest()
    say(f"sha256 of the patches: {(time.perf_counter() - start) * 1e3:.1f} ms (host)")
    pixels, grid = inputs.pixel_values.cuda(), inputs.grid_thw
    with torch.inference_mode():
        encode = lambda: model.encode_images(pixels, grid)  # noqa: E731
        say(f"encoder: {wall_ms(encode):.2f} ms wall")
        torch.cuda.synchronize()
        start = time.perf_counter()
        encode()
        say(f"encoder host launch time (no sync): {(time.perf_counter() - start) * 1e3:.2f} ms")
        torch.cuda.synchronize()
        say(kernel_table(encode))
        varlen = getattr(torch.nn.attention, "varlen", None)
        say(f"torch {torch.__version__}; torch.nn.attention.varlen: {varlen is not None}")
        graphs = engine.core.runner.encode_images
        replay = lambda: graphs(pixels, inputs.grid_thw)  # noqa: E731
        say(f"encoder from its CUDA graph: {wall_ms(replay):.2f} ms wall")
        say(kernel_table(replay, rows=8))

    # Engine: one image request up to its first token, and a text-only request of the same length.
    vision = engine.input_processor.vision
    raw = engine.arch.raw
    text = list(range(1000, 1064))
    prompt = {
        "prompt_token_ids": text + [raw["vision_start_token_id"], vision.image_token_id, raw["vision_end_token_id"]],
        "multi_modal_data": {"image": [image]},
    }
    params = SamplingParams(max_tokens=1, temperature=0.0)

    def first_token(p: object, tag: str) -> float:
        start = time.perf_counter()
        engine.add_request(tag, p, params)
        added = time.perf_counter()
        steps = 0
        while engine.has_unfinished_requests():
            engine.step()
            steps += 1
        end = time.perf_counter()
        say(f"  {tag}: add_request {(added - start) * 1e3:.1f} ms, {steps} steps {(end - added) * 1e3:.1f} ms")
        return (end - start) * 1e3

    for i in range(3):
        image_i = Image.fromarray(np.random.default_rng(10 + i).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        prompt["multi_modal_data"] = {"image": [image_i]}
        first_token(prompt, f"image{i}")
        first_token({"prompt_token_ids": list(range(2000 + i * 1100, 3088 + i * 1100))}, f"text{i}")
    prompt["multi_modal_data"] = {"image": [image]}
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        first_token(prompt, "profiled")
    say(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=60))
    say(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=20, max_name_column_width=60))
    if args.out:
        Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
