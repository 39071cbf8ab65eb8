"""M-RoPE positions (Qwen2-VL family): three position streams (temporal, height, width) per prompt token.

Text tokens count up one position at a time on all three streams. An image's or video's placeholder
tokens (one per merged 2 x 2 patch group) share the text's next position as their origin and spread over
the grid: the temporal stream steps by `time_interval` per temporal patch, height and width by row and
column. The text after it resumes at origin + max(h, w) / merge (transformers' rule). Decoded tokens
after the prompt sit at index + delta on all three streams, delta = max prompt position + 1 - prompt length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VisionSpan:
    """The placeholder tokens of one image or video in a prompt."""

    start: int  # index of its first placeholder token in the prompt
    grid_thw: tuple[int, int, int]  # the vision tower's grid in patches (before the 2 x 2 merge)
    # Temporal step per temporal patch: 1 for images and Qwen2-VL videos; for Qwen2.5-VL videos,
    # tokens_per_second x seconds per temporal patch.
    time_interval: float = 1.0

    def num_tokens(self, merge_size: int) -> int:
        """Placeholder tokens of this span: one per merged patch group."""
        t, h, w = self.grid_thw
        return t * (h // merge_size) * (w // merge_size)


def mrope_positions(num_tokens: int, spans: list[VisionSpan], merge_size: int) -> tuple[torch.Tensor, int]:
    """([3, num_tokens] int64 positions of a prompt, delta for the tokens decoded after it)."""
    pieces: list[torch.Tensor] = []
    index = position = 0
    for span in sorted(spans, key=lambda s: s.start):
        if span.start < index:
            raise ValueError(f"vision spans overlap at token {span.start}")
        if span.start > index:  # text before the span
            pieces.append(torch.arange(position, position + span.start - index).expand(3, -1))
            position += span.start - index
        t, h, w = span.grid_thw[0], span.grid_thw[1] // merge_size, span.grid_thw[2] // merge_size
        temporal = (torch.arange(t) * span.time_interval).long() + position
        grid_t, grid_h, grid_w = torch.meshgrid(
            temporal, torch.arange(h) + position, torch.arange(w) + position, indexing="ij"
        )
        pieces.append(torch.stack([grid_t, grid_h, grid_w]).reshape(3, -1))
        index = span.start + span.num_tokens(merge_size)
        position += max(h, w)
    if index > num_tokens:
        raise ValueError(f"vision spans end at token {index}, past the prompt's {num_tokens} tokens")
    pieces.append(torch.arange(position, position + num_tokens - index).expand(3, -1))
    positions = torch.cat(pieces, dim=1)
    return positions, int(positions.max()) + 1 - num_tokens if num_tokens else 0
