"""Qwen2-VL and Qwen2.5-VL against transformers on tiny random checkpoints (tests/fixtures/make_tiny_vlm.py):
float32 logits within 1e-4 over a prompt with two images of different sizes (preprocessed by our
processor), a video, and text; the next token decoded from the paged KV cache at M-RoPE's shifted position;
both checkpoint layouts (as published: model.*, visual.*; transformers 5's own: model.language_model.*,
model.visual.*)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from forgellm.hf.checkpoint import iter_checkpoint_tensors
from forgellm.hf.config import load_model_config
from forgellm.models.qwen2_vl import Qwen2VLForConditionalGeneration
from forgellm.multimodal.mrope import VisionSpan, mrope_positions
from forgellm.multimodal.qwen2_vl_processor import Qwen2VLImageProcessor
from forgellm.worker.forward_batch import SequenceChunk, build_forward_batch
from forgellm.worker.kv_cache_memory import allocate_kv_cache
from tests.fixtures.make_tiny_vlm import IMAGE_TOKEN, VIDEO_TOKEN, VISION_END, VISION_START, build, make

BLOCK = 4
SECONDS_PER_GRID = 1.5  # the video's seconds per temporal patch (Qwen2.5-VL spaces its positions by it)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def checkpoint(request, tmp_path_factory):  # noqa: ANN001, ANN201
    return make(tmp_path_factory.mktemp("vlm"), request.param)


def prompt_and_inputs(path):  # noqa: ANN001, ANN201
    """Token ids (text, image, text, video, image, text), the preprocessed images and a random video."""
    processor = Qwen2VLImageProcessor.from_dir(path)
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)) for size in [(60, 90, 3), (120, 50, 3)]]
    images = processor.preprocess(pictures)
    video_grid = torch.tensor([[3, 4, 6]])  # 3 temporal patches of 4 x 6
    video = torch.randn(int(video_grid.prod()), 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(1))

    def run(grid, token):  # noqa: ANN001, ANN202
        return [VISION_START] + [token] * (int(grid.prod()) // 4) + [VISION_END]

    ids = [5, 6, 7, *run(images.grid_thw[0], IMAGE_TOKEN), 8, 9, *run(video_grid[0], VIDEO_TOKEN)]
    ids += [*run(images.grid_thw[1], IMAGE_TOKEN), 10, 11, 12]
    return ids, images, video, video_grid


def ours_from(path, state_dict=None):  # noqa: ANN001, ANN201
    config = load_model_config(path)
    model = Qwen2VLForConditionalGeneration(config, torch.float32).eval()
    model.load_weights(iter_checkpoint_tensors(path) if state_dict is None else state_dict.items())
    allocate_kv_cache(model, 64, BLOCK, torch.float32)
    return model


def our_logits(model, ids, images, video, video_grid):  # noqa: ANN001, ANN201
    """Prefill the prompt (positions [3, L]), then decode one more token at L + delta on every stream."""
    config = model.config
    tokens_per_second = model.vision_config.tokens_per_second or 1
    qwen25 = model.vision_config.variant == "qwen2_5_vl"
    spans, embeds, grids = [], [], iter([images.grid_thw[0], video_grid[0], images.grid_thw[1]])
    image_embeds = model.encode_images(images.pixel_values, images.grid_thw)
    video_embeds = model.encode_images(video, video_grid)
    image_rows = iter(image_embeds.split([int(g.prod()) // 4 for g in images.grid_thw]))
    index = 0
    while index < len(ids):
        if ids[index] in (IMAGE_TOKEN, VIDEO_TOKEN):
            is_video = ids[index] == VIDEO_TOKEN
            interval = tokens_per_second * SECONDS_PER_GRID if is_video and qwen25 else 1.0
            grid = next(grids)
            spans.append(VisionSpan(index, tuple(grid.tolist()), interval))
            embeds.append(video_embeds if is_video else next(image_rows))
            index += int(grid.prod()) // 4
        else:
            index += 1
    positions, delta = mrope_positions(len(ids), spans, 2)
    mm_indices = torch.tensor([i for i, t in enumerate(ids) if t in (IMAGE_TOKEN, VIDEO_TOKEN)])
    blocks = list(range(-(-(len(ids) + 1) // BLOCK)))
    batch = build_forward_batch([SequenceChunk(ids, 0, blocks, list(range(len(ids))))], BLOCK, torch.device("cpu"))
    batch = replace(batch, positions=positions, mm_embeds=torch.cat(embeds), mm_token_indices=mm_indices)
    with torch.inference_mode():
        prefill = model.compute_logits(model(batch.input_ids, batch.positions, batch))
        next_token = int(prefill[-1].argmax())
        step = build_forward_batch([SequenceChunk([next_token], len(ids), blocks, [0])], BLOCK, torch.device("cpu"))
        step = replace(step, positions=torch.full((3, 1), len(ids) + delta))
        decode = model.compute_logits(model(step.input_ids, step.positions, step))
    assert config.rope.mrope_section == (2, 3, 3)
    return prefill, decode, next_token


def reference_logits(hf, ids, images, video, video_grid):  # noqa: ANN001, ANN201
    kwargs = {"second_per_grid_ts": torch.tensor([SECONDS_PER_GRID])} if "2_5" in type(hf).__name__ else {}
    types = [[1 if t == IMAGE_TOKEN else 2 if t == VIDEO_TOKEN else 0 for t in ids]]
    with torch.no_grad():
        return hf(
            input_ids=torch.tensor([ids]),
            mm_token_type_ids=torch.tensor(types, dtype=torch.int32),
            pixel_values=images.pixel_values,
            image_grid_thw=images.grid_thw,
            pixel_values_videos=video,
            video_grid_thw=video_grid,
            **kwargs,
        ).logits[0]


def test_prompt_and_decode_logits_equal_transformers(checkpoint) -> None:
    variant = checkpoint.name
    hf = build(variant)
    ids, images, video, video_grid = prompt_and_inputs(checkpoint)
    prefill, decode, next_token = our_logits(ours_from(checkpoint), ids, images, video, video_grid)
    expected = reference_logits(hf, [*ids, next_token], images, video, video_grid)
    assert prefill.std() > 0.1  # not a model whose outputs are all near zero
    torch.testing.assert_close(prefill, expected[:-1], atol=1e-4, rtol=0)
    torch.testing.assert_close(decode[0], expected[-1], atol=1e-4, rtol=0)


def test_transformers_own_layout_loads_the_same_model(checkpoint) -> None:
    hf = build(checkpoint.name)
    names = set(hf.state_dict())
    assert any(n.startswith("model.language_model.") for n in names) and any(
        n.startswith("model.visual.") for n in names
    )
    ids, images, video, video_grid = prompt_and_inputs(checkpoint)
    from_file = our_logits(ours_from(checkpoint), ids, images, video, video_grid)[0]
    from_state = our_logits(ours_from(checkpoint, hf.state_dict()), ids, images, video, video_grid)[0]
    assert torch.equal(from_file, from_state)


def test_the_engine_answers_text_prompts_as_transformers_does(checkpoint) -> None:
    """Through LLM (scheduler, paged KV, sampler): greedy text-only tokens equal transformers' generate (images
    through the engine: test_qwen2_vl_engine.py)."""
    from forgellm import LLM, SamplingParams

    llm = LLM(str(checkpoint), dtype="float32", num_kv_blocks=64, block_size=BLOCK)
    prompts = [[5, 6, 7, 8], list(range(20, 51))]
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    ours = [out.outputs[0].token_ids for out in llm.generate(prompts, params, use_tqdm=False)]
    hf = build(checkpoint.name)
    expected = []
    for prompt in prompts:
        with torch.no_grad():
            ids = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=None)
        expected.append(ids[0, len(prompt) :].tolist())
    assert ours == expected
