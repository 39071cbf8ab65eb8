"""CUDA graphs for the vision tower: its eager pass is ~250 small launches whose host cost (about 25 ms
for a 896 x 896 image on the H200) exceeds the GPU's work, so a replayed graph is what makes it GPU-bound.

Each image (or video) runs through a graph captured for its grid once that grid has been seen twice
(one-off sizes stay eager, so a stream of odd sizes captures nothing), at most `max_graphs` grids, least
recently used out, each at most `max_patches` patches. The graphs share the language model's graph
memory pool: replays never overlap, and each output is copied out at once.
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch

from forgellm.models.qwen2_vl_vision import TowerPlan, VisionTowerBase
from forgellm.worker.cuda_graphs import capturing

logger = logging.getLogger(__name__)

Grid = tuple[int, int, int]
MAX_SIGHTINGS = 4096  # grids remembered for "seen twice"


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    pixels: torch.Tensor  # the static input, in the tower's dtype
    output: torch.Tensor
    plan: TowerPlan  # its device tensors are the graph's too: kept alive with it


class EncoderGraphRunner:
    """Encodes images like `tower(pixel_values, grid_thw)`, replaying a graph per grid where one is captured."""

    def __init__(
        self,
        tower: VisionTowerBase,
        pool: object | None = None,
        max_graphs: int = 4,
        max_patches: int = 16384,
        capture_after: int = 2,
    ) -> None:
        self.tower = tower
        self.pool = pool
        self.max_graphs = max_graphs
        self.max_patches = max_patches
        self.capture_after = capture_after
        self.dtype = next(tower.parameters()).dtype
        self.graphs: OrderedDict[Grid, _Captured] = OrderedDict()
        self.sightings: OrderedDict[Grid, int] = OrderedDict()  # grids seen, most recent last (bounded)
        self.num_replays = 0

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """LM embeddings [sum of t*h*w / merge^2, hidden] of images with grids [num, 3] (on the host)."""
        grids: list[Grid] = [tuple(int(v) for v in row) for row in grid_thw.tolist()]
        sizes = [t * h * w for t, h, w in grids]
        pieces = pixel_values.split(sizes)
        outputs: list[torch.Tensor | None] = [None] * len(grids)
        eager = []
        for index, (grid, pixels) in enumerate(zip(grids, pieces)):
            captured = self._graph_for(grid, pixels)
            if captured is None:
                eager.append(index)
                continue
            captured.pixels.copy_(pixels)
            captured.graph.replay()
            outputs[index] = captured.output.clone()
            self.num_replays += 1
        if eager:  # the rest in one eager pass: batched, their host cost paid once
            rows = self.tower(
                torch.cat([pieces[i] for i in eager]).to(self.dtype), torch.tensor([grids[i] for i in eager])
            )
            unit = self.tower.config.spatial_merge_size**2
            for index, part in zip(eager, rows.split([sizes[i] // unit for i in eager])):
                outputs[index] = part
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _graph_for(self, grid: Grid, pixels: torch.Tensor) -> _Captured | None:
        captured = self.graphs.get(grid)
        if captured is not None:
            self.graphs.move_to_end(grid)
            return captured
        seen = self.sightings[grid] = self.sightings.pop(grid, 0) + 1
        if len(self.sightings) > MAX_SIGHTINGS:  # a stream of odd sizes must not grow this for ever
            self.sightings.popitem(last=False)
        if seen < self.capture_after or pixels.shape[0] > self.max_patches:
            return None
        if len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        try:
            captured = self._capture(grid, pixels)
        except torch.cuda.OutOfMemoryError:
            logger.warning("no memory to capture the vision tower for grid %s; it runs eagerly", grid)
            self.max_patches = min(self.max_patches, pixels.shape[0] - 1)
            return None
        self.graphs[grid] = captured
        return captured

    def _capture(self, grid: Grid, pixels: torch.Tensor) -> _Captured:
        plan = self.tower.plan(torch.tensor([grid]), pixels.device)
        static = pixels.to(self.dtype)  # a private copy: the caller's tensor may be freed
        stream = torch.cuda.Stream(pixels.device)
        stream.wait_stream(torch.cuda.current_stream(pixels.device))
        with torch.cuda.stream(stream):  # warm-up off the capture: Triton autotuning, lazy cuBLAS workspaces
            self.tower.run(static, plan)
        torch.cuda.current_stream(pixels.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        gc.collect()  # see `capturing`
        with capturing(graph, self.pool, capture_error_mode="thread_local"):
            output = self.tower.run(static, plan)
        logger.info("captured the vision tower for grid %s (%d patches)", grid, pixels.shape[0])
        return _Captured(graph, static, output, plan)
