"""Compile forgellm's Triton kernels for an H100/H200 (sm_90) on a machine without a GPU.

The interpreter (TRITON_INTERPRET=1, what CI runs the kernels under) accepts code that compiled Triton
refuses: a return inside an `if` with differently shaped branches, non-constexpr globals. This script runs
each Triton wrapper on CPU tensors at decode- and prefill-sized shapes with a stand-in driver that reports
an sm_90 target, so every kernel variant the wrapper picks goes through Triton's real compiler (down to
the cubin, with the ptxas Triton ships) and nothing is launched. Outputs are garbage; only compiling counts.

    python tools/check_triton_compiles.py        # exit 1 naming the variant that does not compile
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: this checks the real compiler")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
SMS = 132  # an H200's streaming multiprocessors: the wrappers size split-K and grids by it


class Sm90Driver:
    """Just enough of Triton's CUDA driver to compile: device 0, stream 0, target sm_90."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def is_active(self) -> bool:
        return True


def compile_only(self: JITFunction, *args, grid, warmup, **kwargs):  # noqa: ANN001, ANN202
    """JITFunction.run that compiles (warm-up) and never launches."""
    COMPILED.add(self.fn.__name__)
    return _run(self, *args, grid=grid, warmup=True, **kwargs)


_run = JITFunction.run
COMPILED: set[str] = set()


def cases() -> list[tuple[str, object]]:
    """(name, thunk) for every wrapper call; each picks its kernel variants from the shapes."""
    from forgellm.kernels import (
        triton_activation,
        triton_attention,
        triton_fp8_gemm,
        triton_fp8_quant,
        triton_int_weight_gemm,
        triton_kv_cache,
        triton_norm,
        triton_rotary,
        triton_rotary_kv,
    )

    fp8 = torch.float8_e4m3fn
    out: list[tuple[str, object]] = []
    n, k = 6144, 4096
    counters = torch.zeros(4 * SMS, dtype=torch.int32)  # split-K summed in the GEMM (the layers' path)
    for m in (1, 256):  # swapped split-K tiles at decode sizes, big tiles at prefill sizes
        x = torch.zeros(m, k, dtype=fp8)
        scales = {"tensor": torch.ones(1), "token": torch.ones(m, 1), "group": torch.ones(m, k // 128)}
        weights = {"tensor": torch.ones(1), "channel": torch.ones(n, 1), "block": torch.ones(n // 128, k // 128)}
        for act, xs in scales.items():
            for wmode, ws in weights.items():
                w = torch.zeros(n, k, dtype=fp8)
                out.append(
                    (
                        f"fp8_matmul M={m} {act}/{wmode}",
                        lambda x=x, xs=xs, w=w, ws=ws: triton_fp8_gemm.fp8_matmul_triton(x, xs, w, ws, torch.bfloat16),
                    )
                )
                if (act, wmode) in (("token", "channel"), ("group", "block"), ("tensor", "tensor")):
                    bias = torch.zeros(n, dtype=torch.bfloat16) if act == "token" else None
                    out.append(
                        (
                            f"fp8_matmul M={m} {act}/{wmode} bias={bias is not None} split-K summed in the GEMM",
                            lambda x=x, xs=xs, w=w, ws=ws, b=bias: triton_fp8_gemm.fp8_matmul_triton(
                                x, xs, w, ws, torch.bfloat16, b, split_k_counters=counters
                            ),
                        )
                    )
    xb = torch.zeros(7, k, dtype=torch.bfloat16)
    out += [
        ("quantize_fp8_per_token", lambda: triton_fp8_quant.quantize_fp8_per_token_triton(xb)),
        ("quantize_fp8_per_token_group", lambda: triton_fp8_quant.quantize_fp8_per_token_group_triton(xb, 128)),
        ("quantize_fp8_static", lambda: triton_fp8_quant.quantize_fp8_static_triton(xb, torch.ones(1))),
    ]
    for bits, group, zeros, value_type, perm in (
        (4, 128, False, "int", False), (4, 32, True, "int", True), (8, -1, False, "int", False),
        (4, 16, False, "e2m1", False),
    ):  # fmt: skip
        pack = 32 // bits
        group = k if group == -1 else group
        qweight = torch.zeros(k // pack, n, dtype=torch.int32)
        s = torch.ones(k // group, n, dtype=torch.bfloat16)
        z = torch.zeros(k // group, n, dtype=torch.bfloat16) if zeros else None
        p = torch.arange(k, dtype=torch.int32) if perm else None
        for m in (1, 16, 64, 256):
            x = torch.zeros(m, k, dtype=torch.bfloat16)
            name = f"int_weight_matmul int{bits} g{group} {value_type} zeros={zeros} perm={perm} M={m}"
            out.append(
                (
                    name,
                    lambda x=x, q=qweight, s=s, z=z, b=bits, g=group, v=value_type, p=p: (
                        triton_int_weight_gemm.int_weight_matmul_triton(x, q, s, z, b, g, v, p)
                    ),
                )
            )
            if m <= 16:  # split K
                out.append(
                    (
                        f"{name} split-K summed in the GEMM",
                        lambda x=x, q=qweight, s=s, z=z, b=bits, g=group, v=value_type, p=p: (
                            triton_int_weight_gemm.int_weight_matmul_triton(x, q, s, z, b, g, v, p, counters)
                        ),
                    )
                )
    h = torch.zeros(5, 4096, dtype=torch.bfloat16)
    out += [
        ("rms_norm", lambda: triton_norm.rms_norm_triton(h, torch.ones(4096, dtype=torch.bfloat16), 1e-6)),
        (
            "fused_add_rms_norm",
            lambda: triton_norm.fused_add_rms_norm_triton(
                h.clone(), h.clone(), torch.ones(4096, dtype=torch.bfloat16), 1e-6
            ),
        ),
        (
            "silu_and_mul",
            lambda: triton_activation.silu_and_mul_triton(torch.zeros(5, 2 * 14336, dtype=torch.bfloat16)),
        ),
    ]
    for cache_dtype in (torch.bfloat16, fp8):
        kv = torch.zeros(5, 8, 128, dtype=torch.bfloat16)
        cache = torch.zeros(16, 16, 8, 128, dtype=cache_dtype)
        slots = torch.tensor([0, 1, 2, -1, 40])
        out.append(
            (
                f"write_kv_cache {cache_dtype}",
                lambda kv=kv, c=cache, s=slots: triton_kv_cache.write_kv_cache_triton(kv, kv, c, c.clone(), s),
            )
        )
    q, kr = torch.zeros(5, 32, 128, dtype=torch.bfloat16), torch.zeros(5, 8, 128, dtype=torch.bfloat16)
    cos, sin = torch.ones(5, 128), torch.zeros(5, 128)
    out.append(("apply_rotary", lambda: triton_rotary.apply_rotary_triton(q, kr, cos, sin)))
    for cache_dtype in (torch.bfloat16, fp8):
        cache = torch.zeros(16, 16, 8, 128, dtype=cache_dtype)
        slots = torch.tensor([0, 1, 2, -1, 40])
        out.append(
            (
                f"rotary_and_write_kv {cache_dtype}",
                lambda c=cache, s=slots: triton_rotary_kv.rotary_and_write_kv_triton(
                    q, kr, kr, cos, sin, c, c.clone(), s
                ),
            )
        )
        tables = torch.arange(16, dtype=torch.int32).view(2, 8)
        for queries, window in ((1, None), (1, 64), (3, None), (3, 64)):  # decode / prefill-extend, with a window
            qs = torch.zeros(2 * queries, 32, 128, dtype=torch.bfloat16)
            starts = torch.tensor([0, queries, 2 * queries], dtype=torch.int32)
            lens = torch.tensor([70, 100], dtype=torch.int32)
            name = f"paged_attention {cache_dtype} query={queries} window={window}"
            out.append(
                (
                    name,
                    lambda qs=qs, c=cache, t=tables, st=starts, ln=lens, w=window, mq=queries: (
                        triton_attention.paged_attention_triton(
                            qs, c, c.clone(), t, st, ln, 0.1, w, max_query_len=mq, k_scale=0.5, v_scale=0.5
                        )
                    ),
                )
            )
    return out


def main() -> int:
    from forgellm.kernels import triton_utils

    driver.set_active(Sm90Driver())
    JITFunction.run = compile_only
    for module in list(sys.modules.values()):
        if module is not None and module.__name__.startswith("forgellm.kernels") and hasattr(module, "num_sms"):
            module.num_sms = lambda device=None: SMS
    triton_utils.num_sms = lambda device=None: SMS
    failed = []
    todo = cases()
    for module in list(sys.modules.values()):  # modules imported by cases() too
        if module is not None and module.__name__.startswith("forgellm.kernels") and hasattr(module, "num_sms"):
            module.num_sms = lambda device=None: SMS
    for name, thunk in todo:
        try:
            thunk()
        except triton.compiler.errors.CompilationError as exc:
            failed.append(name)
            print(f"FAIL {name}: {str(exc).splitlines()[0]}\n{exc}", file=sys.stderr)
        except Exception:  # noqa: BLE001 - report any failure with the variant that caused it
            failed.append(name)
            print(f"FAIL {name}:", file=sys.stderr)
            traceback.print_exc()
    print(f"{len(todo) - len(failed)} of {len(todo)} wrapper calls compiled for sm_90: {', '.join(sorted(COMPILED))}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
