"""Which kernel runs: CPU tensors the reference, CUDA tensors Triton, and a broken Triton is an error.

Also the engine's CUDA-graph guard, which must mean "attention on CUDA tensors is the graph-safe
Triton kernel". Runs on the CPU: a stand-in object with is_cuda=True plays the CUDA tensor, and a
torch.device("cuda") is only a name to use_cuda_graphs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from forgellm import kernels
from forgellm.config import EngineConfig
from forgellm.engine.llm_engine import use_cuda_graphs
from forgellm.kernels.attention import paged_attention_ref
from forgellm.kernels.norm import rms_norm_ref

REPO = Path(__file__).resolve().parents[2]
CUDA = torch.device("cuda")


class CudaStandIn:
    """What dispatch looks at in its first argument: a CUDA tensor, as far as it can tell."""

    is_cuda = True


def fresh_rms_norm():
    """kernels.rms_norm built anew, so no earlier test has resolved (imported) its Triton kernel."""
    return kernels.dispatch(rms_norm_ref, kernels.triton_op("triton_norm", "rms_norm_triton"))


def fresh_attention():
    return kernels.dispatch(paged_attention_ref, kernels.triton_op("triton_attention", "paged_attention_triton"))


@pytest.fixture
def triton_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """`import triton` fails as on an install without it; forgellm's Triton modules must import afresh."""
    monkeypatch.setitem(sys.modules, "triton", None)  # None in sys.modules: ImportError on import
    for name in [m for m in sys.modules if m.startswith(("triton.", "forgellm.kernels.triton_"))]:
        monkeypatch.delitem(sys.modules, name)


def test_cpu_tensors_take_the_reference_and_never_import_triton(triton_missing) -> None:
    op = fresh_rms_norm()
    x, w = torch.randn(3, 8), torch.randn(8)
    assert torch.equal(op(x, w, 1e-6), rms_norm_ref(x, w, 1e-6))
    assert "forgellm.kernels.triton_norm" not in sys.modules


def test_cuda_tensors_with_triton_missing_raise_naming_the_fix(triton_missing) -> None:
    op = fresh_rms_norm()
    with pytest.raises(ImportError, match="FORGELLM_KERNELS=reference") as info:
        op(CudaStandIn(), None, 1e-6)
    message = str(info.value)
    assert "rms_norm_triton" in message and "forgellm.kernels.triton_norm" in message and "triton" in message
    assert isinstance(info.value.__cause__, ImportError)  # the original failure is kept
    with pytest.raises(ImportError, match="install or repair"):  # every call, not only the first
        op(CudaStandIn(), None, 1e-6)


def test_triton_failing_at_import_in_other_ways_is_an_import_error_too(monkeypatch) -> None:
    """A broken install may raise anything at import (a driver or version check): same clear error."""

    def broken(name: str, *args, **kwargs):
        raise RuntimeError("Triton requires CUDA 12.4+")

    monkeypatch.setattr(kernels.importlib, "import_module", broken)
    with pytest.raises(ImportError, match="RuntimeError: Triton requires CUDA 12.4") as info:
        fresh_rms_norm()(CudaStandIn(), None, 1e-6)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_cuda_tensors_go_to_the_triton_kernel() -> None:
    pytest.importorskip("triton")
    from forgellm.kernels.triton_norm import rms_norm_triton

    op = fresh_rms_norm()
    assert kernels.cuda_implementation(op) is rms_norm_triton
    assert kernels.cuda_implementation(kernels.paged_attention).__name__ == "paged_attention_triton"


def test_forced_reference_makes_every_op_the_reference(monkeypatch) -> None:
    monkeypatch.setenv("FORGELLM_KERNELS", "reference")
    op = fresh_rms_norm()
    assert op is rms_norm_ref and kernels.cuda_implementation(op) is rms_norm_ref
    assert kernels.dispatch(rms_norm_ref) is rms_norm_ref  # an op without a fast version


def run_fresh_python(code: str) -> None:
    """Run `code` in a new interpreter from the repository root, without kernel-selecting environment variables;
    it must exit 0."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORGELLM_KERNELS", "TRITON_INTERPRET")}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def test_cpu_only_install_without_triton_generates() -> None:
    """A process where `import triton` fails runs the demo model on the CPU (what CPU users get)."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "from forgellm import LLM, SamplingParams\n"
        "out = LLM(device='cpu').generate(['def f(x):'], SamplingParams(max_tokens=4, temperature=0), use_tqdm=False)\n"
        "assert len(out[0].outputs[0].token_ids) == 4\n"
        "assert not [m for m in sys.modules if m.startswith('forgellm.kernels.triton_')]\n"
    )
    run_fresh_python(code)


def test_a_cpu_process_never_imports_triton_even_for_images(tmp_path) -> None:
    """CPU users do not need Triton, and importing it costs start-up time: running a vision-language model's
    image prompt on the CPU imports no Triton module (torch's varlen attention would: it is imported lazily)."""
    from tests.fixtures.make_tiny_vlm import make

    checkpoint = make(tmp_path, "qwen2_5_vl")  # here: transformers builds it, and torch._dynamo imports Triton
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from forgellm import LLM, SamplingParams\n"
        "from tests.fixtures.make_tiny_vlm import IMAGE_TOKEN, VISION_END, VISION_START\n"
        f"llm = LLM({str(checkpoint)!r}, device='cpu', dtype='float32')\n"
        "image = np.zeros((56, 56, 3), dtype=np.uint8)\n"
        "ids = [5, VISION_START, IMAGE_TOKEN, VISION_END]\n"
        "prompt = {'prompt_token_ids': ids, 'multi_modal_data': {'image': image}}\n"
        "out = llm.generate(prompt, SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)\n"
        "assert len(out[0].outputs[0].token_ids) == 2\n"
        "assert not [m for m in sys.modules if m == 'triton' or m.startswith('triton.')], 'triton was imported'\n"
    )
    run_fresh_python(code)


# The engine's guard: graphs only with graph-safe (Triton) attention on CUDA tensors.


def test_cuda_graphs_off_on_a_cpu_or_when_eager(triton_missing) -> None:
    """Neither case looks at the kernels, so neither needs (or imports) Triton."""
    assert use_cuda_graphs(EngineConfig(), torch.device("cpu")) is False
    assert use_cuda_graphs(EngineConfig(enforce_eager=True), CUDA) is False


def test_cuda_graphs_on_with_triton_attention(monkeypatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.setattr(kernels, "paged_attention", fresh_attention())
    assert use_cuda_graphs(EngineConfig(), CUDA) is True


def test_cuda_graphs_off_when_cuda_tensors_take_the_reference_attention(monkeypatch) -> None:
    monkeypatch.setenv("FORGELLM_KERNELS", "reference")
    monkeypatch.setattr(kernels, "paged_attention", fresh_attention())
    monkeypatch.delenv("FORGELLM_KERNELS")  # the guard follows what the op does, not the variable now
    assert use_cuda_graphs(EngineConfig(), CUDA) is False


def test_cuda_graphs_with_a_broken_triton_is_an_error_not_a_silent_reference(monkeypatch, triton_missing) -> None:
    monkeypatch.setattr(kernels, "paged_attention", fresh_attention())
    with pytest.raises(ImportError, match="paged_attention_triton.*FORGELLM_KERNELS=reference"):
        use_cuda_graphs(EngineConfig(), CUDA)
