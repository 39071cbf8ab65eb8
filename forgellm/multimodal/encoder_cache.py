"""EncoderCache: vision-encoder outputs by image content hash, so each image is encoded once.

An entry lives while any request that holds its image lives (chunked prefill through the image's tokens,
preemption and recompute then read it instead of re-running the tower) and stays afterwards, least
recently used first out, while the unreferenced entries fit in `max_unreferenced_bytes` (a repeated image
in a later request is then free too).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from forgellm.multimodal.inputs import VisionItem

DEFAULT_MAX_UNREFERENCED_BYTES = 1 << 30


class EncoderCache:
    """Maps content hash -> [tokens, hidden] embeddings on the model's device."""

    def __init__(self, max_unreferenced_bytes: int = DEFAULT_MAX_UNREFERENCED_BYTES) -> None:
        self.max_unreferenced_bytes = max_unreferenced_bytes
        self._entries: OrderedDict[int, torch.Tensor] = OrderedDict()
        self._holders: dict[int, set[str]] = {}  # content hash -> ids of live requests that hold it
        self._held: dict[str, set[int]] = {}  # request id -> content hashes it holds
        self.num_encoded = 0  # images run through the tower since start

    def embeddings(
        self,
        request_items: list[tuple[str, VisionItem]],
        encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        device: torch.device,
    ) -> dict[int, torch.Tensor]:
        """The embeddings of every (request id, image), encoding the missing ones in one call of `encode`
        (pixel_values [sum t*h*w, D], grids [n, 3]) -> [sum of their tokens, hidden]."""
        missing: dict[int, VisionItem] = {}
        for request_id, item in request_items:
            key = item.content_hash
            self._held.setdefault(request_id, set()).add(key)
            self._holders.setdefault(key, set()).add(request_id)
            if key in self._entries:
                self._entries.move_to_end(key)
            else:
                missing[key] = item
        if missing:
            items = list(missing.values())
            host = items[0].pixel_values if len(items) == 1 else torch.cat([item.pixel_values for item in items])
            pixels = host.to(device, non_blocking=True)
            grids = torch.tensor([item.grid_thw for item in items])  # on the host: the tower plans from it
            encoded = encode(pixels, grids).split([item.num_tokens for item in items])
            for key, rows in zip(missing, encoded):
                self._entries[key] = rows
            self.num_encoded += len(items)
        return {item.content_hash: self._entries[item.content_hash] for _, item in request_items}

    def release(self, request_id: str) -> None:
        """A request ended: its images may go once unreferenced entries outgrow the budget."""
        for key in self._held.pop(request_id, ()):
            holders = self._holders.get(key)
            if holders is not None:
                holders.discard(request_id)
                if not holders:
                    del self._holders[key]
        self._evict()

    def _evict(self) -> None:
        unreferenced = [key for key in self._entries if key not in self._holders]  # least recently used first
        total = sum(self._entries[key].numel() * self._entries[key].element_size() for key in unreferenced)
        for key in unreferenced:
            if total <= self.max_unreferenced_bytes:
                break
            rows = self._entries.pop(key)
            total -= rows.numel() * rows.element_size()

    def __len__(self) -> int:
        return len(self._entries)
