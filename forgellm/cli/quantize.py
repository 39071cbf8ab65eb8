"""`forgellm quantize`: write a quantized copy of an unquantized checkpoint (compressed-tensors format)."""

from __future__ import annotations

import argparse
import sys

from forgellm.errors import ForgeLLMError

EXIT_ERROR = 2
SCHEMES = ("w4a16-rtn", "w8a16", "fp8-dynamic", "fp8", "fp8-block", "w4a16-gptq", "w4a16-awq", "nvfp4", "nvfp4a16")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `quantize` subcommand."""
    parser = subparsers.add_parser(
        "quantize",
        help="write a quantized checkpoint (compressed-tensors)",
        description=(
            "Quantize MODEL_DIR's linear layers (not the LM head) and write a checkpoint in the "
            "compressed-tensors format that forgellm, vLLM, SGLang and transformers load. Round to nearest: "
            "w4a16-rtn (int4, groups of --group-size), w8a16 (int8, per channel unless --group-size), "
            "fp8-dynamic (FP8 per-channel weights, per-token activations at run time). The calibrated schemes "
            "(fp8, fp8-block, w4a16-gptq, w4a16-awq, nvfp4, nvfp4a16) are not implemented yet."
        ),
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="an unquantized Hugging Face checkpoint directory")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="where to write the checkpoint")
    parser.add_argument("--scheme", required=True, choices=SCHEMES)
    parser.add_argument(
        "--group-size", type=int, default=None, help="inputs per scale (int schemes): w4a16-rtn 128, w8a16 per channel"
    )
    parser.add_argument("--ignore", nargs="*", default=None, help="modules left unquantized (default: lm_head)")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Quantize; exit 2 with `error: ...` on a forgellm error or a scheme not implemented yet."""
    from forgellm.quantization.quantize.export import quantize_checkpoint

    group = args.group_size if args.group_size is not None else (128 if args.scheme == "w4a16-rtn" else None)
    try:
        out = quantize_checkpoint(args.model_dir, args.output, args.scheme, group, args.ignore)
    except (ForgeLLMError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"wrote {out} ({args.scheme})")
    return 0
