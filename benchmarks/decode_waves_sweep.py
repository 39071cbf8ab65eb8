"""Decode attention: GB/s against the split-count target (DecodeConfig.waves) and the tile, per batch x context.

The split count comes from the launch shape only: cdiv(waves * SMs, batch * kv_heads), capped at
max_splits. At batch 256 the default (waves=2) gives one split per sequence; this sweep asks whether
more, shorter splits stream the KV cache faster at the contexts of the throughput benchmarks.

    python benchmarks/decode_waves_sweep.py
"""

from __future__ import annotations

import dataclasses

from benchmarks.kernels import time_decode
from forgellm.kernels.triton_decode_attention import DecodeConfig

SHAPES = ((256, 1024), (256, 1536), (256, 2048), (256, 8192), (64, 2048), (16, 8192), (1, 8192))
WAVES = (2, 8, 16, 32, 64)
TILES = ((64, 4, 3), (32, 2, 3), (128, 4, 2))


def main() -> None:
    rows = []
    for block_n, warps, stages in TILES:
        for waves in WAVES:
            cfg = dataclasses.replace(DecodeConfig(), block_n=block_n, num_warps=warps, num_stages=stages, waves=waves)
            for batch, ctx in SHAPES:
                gbps = time_decode(batch, ctx, cfg)["gbps"]
                rows.append((f"bn={block_n} w={warps} s={stages}", waves, batch, ctx, gbps))
                print(f"{rows[-1][0]:18} waves={waves:3d} B={batch:4d} ctx={ctx:5d} {gbps:7.0f} GB/s", flush=True)
    print(f"\n{'tile':18}{'waves':>6}" + "".join(f"{f'B{b}x{c}':>11}" for b, c in SHAPES))
    for tile, waves in dict.fromkeys((r[0], r[1]) for r in rows):
        values = [r[4] for r in rows if (r[0], r[1]) == (tile, waves)]
        print(f"{tile:18}{waves:6d}" + "".join(f"{v:11.0f}" for v in values))


if __name__ == "__main__":
    main()
