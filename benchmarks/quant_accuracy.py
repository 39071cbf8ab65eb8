"""Perplexity of the trained demo model on its held-out text (`forgellm eval perplexity`'s scoring) for
every quantization scheme, against bf16, plus top-1 agreement with bf16's predictions:

    python benchmarks/quant_accuracy.py [--dir HELDOUT] [--device cuda] [--json OUT]

Without --dir the held-out files are taken from this Python's standard library by the names that
forgellm/assets/demo/corpus.json lists (the demo never trained on them).
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from forgellm import LLM  # noqa: E402
from forgellm.bench import report  # noqa: E402
from forgellm.eval import greedy_agreement, perplexity_report, read_texts, score_texts  # noqa: E402

# name -> LLM options (the demo's hidden size 384 and MLP 1024 take groups of 32, 64 and 128)
SCHEMES: dict[str, dict] = {
    "bf16": {},
    "fp8 (W8A8, channel)": dict(quantization="fp8"),
    "fp8 KV cache": dict(kv_cache_dtype="fp8"),
    "fp8 + fp8 KV": dict(quantization="fp8", kv_cache_dtype="fp8"),
    "int8 weight-only (channel)": dict(quantization="int8"),
    "int4 g32": dict(quantization="int4", quantization_group_size=32),
    "int4 g64": dict(quantization="int4", quantization_group_size=64),
    "int4 g128": dict(quantization="int4", quantization_group_size=128),
    "int4 channel": dict(quantization="int4", quantization_group_size=-1),
    "nvfp4 (weight-only)": dict(quantization="nvfp4", nvfp4_mode="weight_only"),
    "nvfp4 as fp8": dict(quantization="nvfp4", nvfp4_mode="fp8"),
}


def heldout_dir(out: Path) -> Path:
    corpus = json.loads((REPO / "forgellm" / "assets" / "demo" / "corpus.json").read_text())
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in corpus["heldout_files"]:
        rel = name.removeprefix("stdlib/")
        (out / rel.replace("/", "__")).write_text((stdlib / rel).read_text(encoding="utf-8"), encoding="utf-8")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        texts = read_texts(directory=args.dir or str(heldout_dir(Path(tmp))))
    rows, data, base = [], {}, None
    for name, options in SCHEMES.items():
        llm = LLM(dtype="bfloat16", device=args.device, **options)
        scores = score_texts(llm, texts)
        ppl = perplexity_report(scores)
        base = base or (scores, ppl.perplexity)
        agree = greedy_agreement(base[0], scores)
        delta = 100 * (ppl.perplexity / base[1] - 1)
        data[name] = {"perplexity": ppl.perplexity, "top1_accuracy": ppl.top1_accuracy, "agreement_with_bf16": agree}
        rows.append(
            [name, f"{ppl.perplexity:.4f}", f"{delta:+.2f}%", f"{100 * ppl.top1_accuracy:.2f}%", f"{100 * agree:.2f}%"]
        )
        print(rows[-1], flush=True)
        del llm
    print(report.format_table(["scheme", "perplexity", "vs bf16", "top-1", "agrees with bf16"], rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"tokens": len(base[0].token_ids), "schemes": data}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
