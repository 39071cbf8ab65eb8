"""Images and videos through the engine (LLM.generate with multi_modal_data) against transformers on the tiny
random Qwen2-VL / Qwen2.5-VL checkpoints: greedy tokens identical for one image, two images of different
sizes, a video (3 frames at 1 fps: Qwen2.5-VL's time-spaced positions), an image with a video, and text
alone, batched together; with chunked prefill cutting through image tokens; with a prefix-cache
hit on a repeated image (and none for a different image behind the same token ids); after preemption. Each
image is encoded once; bad image input is a typed error and the engine goes on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from forgellm import LLM, SamplingParams
from forgellm.errors import InvalidRequestError
from forgellm.multimodal.qwen2_vl_processor import Qwen2VLImageProcessor
from tests.fixtures.make_tiny_vlm import IMAGE_TOKEN, VIDEO_TOKEN, VISION_END, VISION_START, build, make

NEW_TOKENS = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def checkpoint(request, tmp_path_factory):  # noqa: ANN001, ANN201
    return make(tmp_path_factory.mktemp("vlm"), request.param)


@pytest.fixture(scope="module")
def hf(checkpoint):  # noqa: ANN001, ANN201
    return build(checkpoint.name)


def picture(height: int, width: int, seed: int):  # noqa: ANN201
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def image_prompt(text_ids: list[list[int]], images: list) -> dict:  # noqa: ANN201
    """Token ids with one <|vision_start|><|image_pad|><|vision_end|> between consecutive text pieces."""
    ids = list(text_ids[0])
    for piece in text_ids[1:]:
        ids += [VISION_START, IMAGE_TOKEN, VISION_END, *piece]
    return {"prompt_token_ids": ids, "multi_modal_data": {"image": images}}


def video_prompt(text_ids: list[list[int]], videos: list) -> dict:  # noqa: ANN201
    """Token ids with one <|vision_start|><|video_pad|><|vision_end|> between consecutive text pieces."""
    ids = list(text_ids[0])
    for piece in text_ids[1:]:
        ids += [VISION_START, VIDEO_TOKEN, VISION_END, *piece]
    return {"prompt_token_ids": ids, "multi_modal_data": {"video": videos}}


def reference_greedy(hf, checkpoint, prompt: dict, new_tokens: int = NEW_TOKENS) -> list[int]:  # noqa: ANN001
    """transformers' greedy tokens, recomputing the whole sequence each step (no cache to get wrong). Videos are
    preprocessed by our processor (transformers' video processor needs torchvision) and given as patches."""
    data = prompt.get("multi_modal_data", {})
    processor = Qwen2VLImageProcessor.from_dir(checkpoint)
    kwargs: dict = {}
    counts = {IMAGE_TOKEN: iter([]), VIDEO_TOKEN: iter([])}
    if data.get("image"):
        images = processor.preprocess(data["image"])
        kwargs.update(pixel_values=images.pixel_values, image_grid_thw=images.grid_thw)
        counts[IMAGE_TOKEN] = iter([int(g.prod()) // 4 for g in images.grid_thw])
    if data.get("video"):
        videos = [v if isinstance(v, dict) else {"frames": v} for v in data["video"]]
        clips = [processor.preprocess_video(v["frames"]) for v in videos]
        grids = torch.cat([c.grid_thw for c in clips])
        kwargs.update(pixel_values_videos=torch.cat([c.pixel_values for c in clips]), video_grid_thw=grids)
        if "2_5" in type(hf).__name__:
            kwargs["second_per_grid_ts"] = torch.tensor([2 / v.get("fps", 2.0) for v in videos])
        counts[VIDEO_TOKEN] = iter([int(g.prod()) // 4 for g in grids])
    ids = []
    for token in prompt["prompt_token_ids"]:
        ids += [token] * next(counts[token]) if token in counts else [token]
    out = []
    for _ in range(new_tokens):
        seq = torch.tensor([ids + out])
        types = (seq == IMAGE_TOKEN).to(torch.int32) + 2 * (seq == VIDEO_TOKEN).to(torch.int32)
        extra = {**kwargs, "mm_token_type_ids": types} if kwargs else {}
        with torch.no_grad():
            out.append(int(hf(input_ids=seq, **extra).logits[0, -1].argmax()))
    return out


def prompts() -> list:
    clip = [picture(50, 70, 10 + i) for i in range(3)]  # 3 frames: padded to 4, 2 temporal patches
    return [
        image_prompt([[5, 6, 7], [8, 9]], [picture(60, 90, 0)]),
        image_prompt([[11], [12, 13], [14, 15, 16]], [picture(120, 50, 1), picture(56, 56, 2)]),
        {"prompt_token_ids": list(range(20, 45))},
        image_prompt([[17, 18], []], [picture(90, 60, 3)]),  # the image is the prompt's end
        video_prompt([[21, 22], [23, 24, 25]], [{"frames": clip, "fps": 1.0}]),
        {  # an image and a video in one prompt
            "prompt_token_ids": [26, VISION_START, VIDEO_TOKEN, VISION_END, 27, VISION_START, IMAGE_TOKEN, VISION_END],
            "multi_modal_data": {"image": [picture(84, 84, 4)], "video": [clip[:2]]},
        },
    ]


def generate(llm: LLM, batch: list, params: SamplingParams = GREEDY) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in llm.generate(batch, params, use_tqdm=False)]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"max_num_batched_tokens": 8},  # chunks of 8 tokens cut through every image's tokens
    ],
    ids=["batched", "chunked"],
)
def test_greedy_with_images_equals_transformers(checkpoint, hf, options) -> None:
    llm = LLM(str(checkpoint), dtype="float32", block_size=4, **options)
    batch = prompts()
    assert generate(llm, batch) == [reference_greedy(hf, checkpoint, p) for p in batch]
    assert llm.engine.core.runner.encoder_cache.num_encoded == 7  # each image and video once, chunked or not


def test_a_repeated_image_hits_the_prefix_cache_and_another_image_does_not(checkpoint, hf) -> None:
    llm = LLM(str(checkpoint), dtype="float32", block_size=4)
    first = image_prompt([[5, 6, 7, 8], [9, 10, 11, 12]], [picture(84, 84, 5)])
    again = image_prompt([[5, 6, 7, 8], [9, 10, 11, 12]], [picture(84, 84, 5)])
    other = image_prompt([[5, 6, 7, 8], [9, 10, 11, 12]], [picture(84, 84, 6)])  # same ids, other pixels
    expected = [reference_greedy(hf, checkpoint, p) for p in (first, other)]
    outs = [llm.generate(p, GREEDY, use_tqdm=False)[0] for p in (first, again, other)]
    assert [o.outputs[0].token_ids for o in outs] == [expected[0], expected[0], expected[1]]
    image_start = 4 + 1  # 4 text tokens, then <|vision_start|>
    assert outs[1].num_cached_tokens > image_start + 4  # past the image's first tokens: shared KV
    assert outs[2].num_cached_tokens <= image_start  # stops before the first block holding image tokens


def test_greedy_with_images_after_preemption_equals_transformers(checkpoint, hf) -> None:
    llm = LLM(str(checkpoint), dtype="float32", block_size=4, num_kv_blocks=14, max_num_seqs=4)
    batch, longer = prompts(), SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    assert generate(llm, batch, longer) == [reference_greedy(hf, checkpoint, p, 20) for p in batch]
    assert llm.engine.stats().num_preemptions > 0  # outputs outgrow the 56 cached tokens: someone recomputes
    assert llm.engine.core.runner.encoder_cache.num_encoded == 7  # the recompute reads the cached embeddings


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        (image_prompt([[5], [6]], [b"not an image"]), "not a readable image"),
        (image_prompt([[5], [6]], [picture(40, 40, 0), picture(40, 40, 1)]), "1 image placeholder"),
        ({"prompt_token_ids": [5, 6], "multi_modal_data": {"video": [[picture(40, 40, 0)]]}}, "0 video placeholder"),
        (video_prompt([[5], [6]], [{"frames": [picture(40, 40, 0)], "fps": 0}]), "fps must be a positive number"),
        (video_prompt([[5], [6]], [[picture(40, 40, 0), picture(40, 48, 1)]]), "all frames of a video"),
        (image_prompt([[5], [6]], [picture(1, 400, 0)]), "aspect ratio"),
        ({"prompt_token_ids": [5, VISION_START, IMAGE_TOKEN, VISION_END, 6]}, "1 image placeholder.*for 0 image"),
    ],
)
def test_bad_image_input_is_refused_and_the_engine_goes_on(checkpoint, prompt, words) -> None:
    llm = LLM(str(checkpoint), dtype="float32", block_size=4)
    with pytest.raises(InvalidRequestError, match=words):
        llm.generate(prompt, GREEDY, use_tqdm=False)
    assert len(generate(llm, [image_prompt([[5], [6]], [picture(40, 40, 0)])])[0]) == NEW_TOKENS


def test_images_sent_to_a_text_only_model_are_refused() -> None:
    llm = LLM(device="cpu")  # the embedded demo: text only
    with pytest.raises(InvalidRequestError, match="takes text only") as err:
        llm.generate({"prompt": "hi", "multi_modal_data": {"image": [picture(40, 40, 0)]}}, GREEDY, use_tqdm=False)
    assert err.value.param == "multi_modal_data"
    messages = [{"role": "user", "content": [{"type": "image", "image": picture(40, 40, 0)}]}]
    with pytest.raises(InvalidRequestError, match="takes text only"):
        llm.chat(messages, GREEDY, use_tqdm=False)


def data_url(image) -> str:  # noqa: ANN001
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_llm_chat_with_image_parts_equals_transformers(checkpoint, hf, tmp_path) -> None:
    """OpenAI image_url parts (a data URL, a file under the allowed directory) and Python image parts, rendered
    by the checkpoint's template (transformers renders the reference prompt)."""
    from transformers import PreTrainedTokenizerFast

    first, second = picture(60, 90, 7), picture(84, 56, 8)
    second_path = tmp_path / "second.png"
    second.save(second_path)
    content = [
        {"type": "text", "text": "Look at "},
        {"type": "image_url", "image_url": {"url": data_url(first)}},
        {"type": "text", "text": " and "},
        {"type": "image_url", "image_url": {"url": f"file://{second_path}"}},
        {"type": "text", "text": " now."},
    ]
    messages = [{"role": "user", "content": content}]
    llm = LLM(str(checkpoint), dtype="float32", block_size=4, allowed_local_media_path=str(tmp_path))
    reference_tokenizer = PreTrainedTokenizerFast.from_pretrained(str(checkpoint))
    ids = reference_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    expected = reference_greedy(
        hf, checkpoint, {"prompt_token_ids": list(ids), "multi_modal_data": {"image": [first, second]}}
    )
    assert llm.chat(messages, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == expected
    python_parts = [{**part, "type": "image", "image": second} if "file://" in str(part) else part for part in content]
    python_messages = [{"role": "user", "content": python_parts}]
    assert llm.chat(python_messages, GREEDY, use_tqdm=False)[0].outputs[0].token_ids == expected


def test_image_urls_outside_the_policy_are_refused(checkpoint, tmp_path) -> None:
    llm = LLM(str(checkpoint), dtype="float32", block_size=4)  # no local files, no hosts
    inside = tmp_path / "x.png"
    picture(40, 40, 0).save(inside)
    for url, words in [
        (f"file://{inside}", "local files are not allowed"),
        ("https://example.com/cat.png", "not in --allowed-media-domains"),
        ("ftp://example.com/cat.png", "scheme 'ftp'"),
    ]:
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
        with pytest.raises(InvalidRequestError, match=words) as err:
            llm.chat(messages, GREEDY, use_tqdm=False)
        assert err.value.param == "messages[0].content[0].image_url"
    confined = LLM(str(checkpoint), dtype="float32", block_size=4, allowed_local_media_path=str(tmp_path / "sub"))
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(inside)}}]}]
    with pytest.raises(InvalidRequestError, match="outside the allowed media directory"):
        confined.chat(messages, GREEDY, use_tqdm=False)
