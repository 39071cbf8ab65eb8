"""EncoderGraphRunner off a GPU (no capture): every image runs eagerly, batched in one pass, and each image's rows
come back in the order given, equal to the tower's own output; a grid is remembered for "seen twice" in a
bounded table, most recent last."""

from __future__ import annotations

import torch

from forgellm.models.qwen2_5_vl_vision import Qwen2_5VisionTransformer
from forgellm.models.qwen2_vl_vision import VisionConfig
from forgellm.worker import encoder_graphs
from forgellm.worker.encoder_graphs import EncoderGraphRunner

CONFIG = VisionConfig.from_hf(
    {"depth": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 48, "out_hidden_size": 40,
     "window_size": 56, "fullatt_block_indexes": [1]},
    "qwen2_5_vl",
)  # fmt: skip


def test_images_of_mixed_sizes_come_back_in_order_equal_to_the_tower(monkeypatch) -> None:
    torch.manual_seed(0)
    tower = Qwen2_5VisionTransformer(CONFIG)
    monkeypatch.setattr(encoder_graphs, "MAX_SIGHTINGS", 2)
    runner = EncoderGraphRunner(tower, capture_after=100)
    grids = [[1, 4, 6], [1, 8, 4], [1, 4, 6]]
    pixels = torch.randn(sum(t * h * w for t, h, w in grids), 3 * 2 * 14 * 14)
    with torch.inference_mode():
        got = runner(pixels, torch.tensor(grids))
        one_by_one = [tower(part, torch.tensor([grid])) for part, grid in zip(pixels.split([24, 32, 24]), grids)]
    torch.testing.assert_close(got, torch.cat(one_by_one), atol=1e-5, rtol=0)
    assert runner.num_replays == 0 and not runner.graphs  # nothing captured off a GPU
    assert list(runner.sightings.items()) == [((1, 8, 4), 1), ((1, 4, 6), 2)]
    with torch.inference_mode():
        runner(pixels[:32], torch.tensor([[1, 4, 8]]))
    assert list(runner.sightings) == [(1, 4, 6), (1, 4, 8)]  # the oldest grid is forgotten
