"""`forgellm quantize`: write a quantized copy of an unquantized checkpoint (compressed-tensors format),
then report the accuracy it kept (perplexity of both models and their top-1 agreement on held-out text)."""

from __future__ import annotations

import argparse
import sys

from forgellm.errors import ForgeLLMError

EXIT_ERROR = 2
SCHEMES = ("fp8", "fp8-dynamic", "fp8-block", "w8a16", "w4a16-rtn", "w4a16-gptq", "w4a16-awq", "nvfp4", "nvfp4a16")
SCHEME_HELP = (
    "fp8: FP8 per-tensor weights and static per-tensor activation scales from calibration; "
    "fp8-dynamic: per-channel weights, per-token activations at run time (no calibration); "
    "fp8-block: 128x128 weight blocks, per-128-group activations (no calibration); "
    "w8a16: int8 weights per channel (round to nearest); w4a16-rtn: int4 groups of --group-size, round to nearest; "
    "w4a16-gptq: int4 by GPTQ on calibration activations; w4a16-awq: int4 with AWQ's activation-aware scales; "
    "nvfp4: NVFP4 weights and calibrated activation global scales; nvfp4a16: NVFP4 weights only"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `quantize` subcommand."""
    from forgellm.quantization.quantize.calibration_data import DEFAULT_CALIBRATION_DESCRIPTION

    parser = subparsers.add_parser(
        "quantize",
        help="write a quantized checkpoint (compressed-tensors) and an accuracy report",
        description=(
            "Quantize MODEL_DIR's linear layers (not the LM head) and write a checkpoint in the compressed-tensors "
            "format that forgellm, vLLM, SGLang and transformers load, then compare the two models' perplexity "
            "and top-1 agreement on held-out text (OUT_DIR/quantization_report.json). Calibrated schemes run the "
            "model layer by layer over the calibration samples (on the GPU when there is one). " + SCHEME_HELP
        ),
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="an unquantized Hugging Face checkpoint directory")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="where to write the checkpoint")
    parser.add_argument("--scheme", required=True, choices=SCHEMES)
    parser.add_argument(
        "--group-size",
        type=int,
        default=None,
        help="int schemes: inputs per scale (w4a16: 128; w8a16: per channel; -1: per channel)",
    )
    parser.add_argument("--ignore", nargs="*", default=None, help="modules left unquantized (default: lm_head)")
    parser.add_argument(
        "--kv-cache-dtype", default="auto", choices=("auto", "fp8"), help="fp8: calibrate FP8 KV-cache scales"
    )
    parser.add_argument(
        "--calibration",
        metavar="FILE|DIR",
        default=None,
        help=f"calibration text (default: {DEFAULT_CALIBRATION_DESCRIPTION})",
    )
    parser.add_argument("--num-samples", type=int, default=128, help="calibration samples (default 128)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sample (default 512)")
    parser.add_argument("--device", default="auto", help="where to calibrate: cuda, cpu or auto (default)")
    parser.add_argument(
        "--act-order",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="GPTQ: quantize columns by Hessian order",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists and is not empty")
    parser.add_argument("--no-report", action="store_true", help="skip the accuracy report")
    parser.add_argument("--report-text", metavar="FILE|DIR", default=None, help="held-out text for the report")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Quantize, then report; exit 2 with `error: ...` on a forgellm error."""
    from forgellm.quantization.quantize.export import QuantizeOptions, quantize_checkpoint

    options = QuantizeOptions(
        group_size=args.group_size,
        ignore=list(args.ignore) if args.ignore is not None else ["lm_head"],
        calibration=args.calibration,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        device=args.device,
        kv_cache_dtype=args.kv_cache_dtype,
        act_order=args.act_order,
        overwrite=args.overwrite,
    )
    try:
        out = quantize_checkpoint(args.model_dir, args.output, args.scheme, options)
        print(f"wrote {out} ({args.scheme})")
        if not args.no_report:
            _report(args, out)
    except ForgeLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _report(args: argparse.Namespace, out) -> None:
    from forgellm.quantization.quantize.calibration_data import load_heldout_texts
    from forgellm.quantization.quantize.report import build_report, format_report_table, write_report

    device = None if args.device == "auto" else args.device
    texts = load_heldout_texts(args.report_text) if args.report_text else None  # None: the shipped sample
    report = build_report(args.model_dir, out, args.scheme, texts, device=device, texts_source=args.report_text)
    print(format_report_table(report))
    print(f"wrote {write_report(report, out)}")
