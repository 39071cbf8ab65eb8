"""The reference for issue 12's GPTQ: llmcompressor's own GPTQ (W4A16, g128) on the trained demo model with
the same calibration samples `forgellm quantize` uses; benchmarks/quantize_accuracy.py scores its output.

    /path/to/venv-with-llmcompressor/bin/python benchmarks/llmcompressor_gptq_demo.py OUT_DIR [--num-samples 128]

Run it in an environment with llmcompressor (it pins its own transformers); forgellm is imported from this
checkout only to cut the calibration windows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Replace this script's folder on the path: benchmarks/kernels.py would shadow the `kernels` package that
# transformers probes for.
sys.path[0] = str(REPO)

from forgellm.hf.tokenizer import Tokenizer  # noqa: E402
from forgellm.quantization.quantize.calibration_data import calibration_samples, load_calibration_texts  # noqa: E402

DEMO = REPO / "forgellm" / "assets" / "demo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--act-order", default="static", help="llmcompressor actorder: static (as forgellm) or none")
    args = parser.parse_args()
    import datasets
    import transformers
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    samples = calibration_samples(
        Tokenizer.from_dir(DEMO), load_calibration_texts(None), args.num_samples, args.seq_len
    )
    data = datasets.Dataset.from_dict({"input_ids": samples, "attention_mask": [[1] * len(s) for s in samples]})
    model = transformers.AutoModelForCausalLM.from_pretrained(DEMO, dtype="bfloat16")
    actorder = None if args.act_order == "none" else args.act_order
    recipe = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"], actorder=actorder)
    oneshot(
        model=model,
        dataset=data,
        recipe=recipe,
        num_calibration_samples=len(samples),
        max_seq_length=args.seq_len,
        output_dir=args.out_dir,
    )
    transformers.AutoTokenizer.from_pretrained(DEMO).save_pretrained(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
