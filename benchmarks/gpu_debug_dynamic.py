"""Isolate the GPU greedy mismatch of the dynamic-NTK MQA fixture: CPU vs GPU eager vs GPU graphs,
and the decode kernel vs the reference at that fixture's shape (MQA, head_dim 16, fp32)."""

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from forgellm import LLM, SamplingParams  # noqa: E402
from forgellm.kernels.attention import paged_attention_ref  # noqa: E402
from tests.fixtures.make_tiny_models import make_tiny_model  # noqa: E402

root = Path(tempfile.mkdtemp())
params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
for variant in ("llama-mqa-dynamic", "llama"):
    path = str(make_tiny_model(variant, root))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 4096, (n,), generator=g).tolist() for n in (5, 17, 40, 2)]
    runs = {
        "cpu": dict(device="cpu"),
        "gpu-eager": dict(device="cuda", enforce_eager=True),
        "gpu-graphs": dict(device="cuda"),
    }
    for name, kw in runs.items():
        outs = LLM(path, dtype="float32", **kw).generate(prompts, params, use_tqdm=False)
        print(variant, name, [o.outputs[0].token_ids[:6] for o in outs])

# the decode kernel at the fixture's shape
from forgellm.kernels.triton_attention import paged_attention_triton  # noqa: E402

torch.manual_seed(0)
for kv_heads, heads, d in ((1, 4, 16), (2, 4, 16), (1, 8, 128)):
    kc = torch.randn(16, 16, kv_heads, d, device="cuda")
    vc = torch.randn(16, 16, kv_heads, d, device="cuda")
    q = torch.randn(3, heads, d, device="cuda")
    bt = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]], dtype=torch.int32, device="cuda")
    qsl = torch.tensor([0, 1, 2, 3], dtype=torch.int32, device="cuda")
    sl = torch.tensor([6, 17, 40], dtype=torch.int32, device="cuda")
    ref = paged_attention_ref(q, kc, vc, bt, qsl, sl, 0.25)
    out = paged_attention_triton(q, kc, vc, bt, qsl, sl, 0.25, max_query_len=1, max_seq_len=40)
    print(f"decode kv={kv_heads} q={heads} d={d}: rel err {((out - ref).norm() / ref.norm()).item():.2e}")
