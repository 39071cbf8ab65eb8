"""`forgellm eval` agrees with an independent reference: transformers on the same tiny random checkpoint.

The reference tokenizes with transformers' own tokenizer, finds each scored token's context with
the windowing rule written out below (not forgellm's make_windows), runs transformers' model, and
computes log-softmax, perplexity, top-1 accuracy and agreement itself. The report's arithmetic is
checked on hand-made scores whose answers are worked out by hand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from forgellm import LLM
from forgellm.cli.main import main
from forgellm.engine.llm_engine import DEMO_MODEL_DIR as DEMO_DIR
from forgellm.eval import TokenScores, greedy_agreement, perplexity_report, score_texts, unigram_perplexity

transformers = pytest.importorskip("transformers")

WINDOW = 64  # several windows per text on the tiny models (whose context is 256 or less)
TEXTS = [
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n" * 3,
    "The quick brown fox jumps over the lazy dog. 東京 naïve café 🐍\n" * 4,
]
LOGPROB_ATOL = 1e-4  # float32 forgellm vs float32 transformers, per token (2e-6 seen on x86)
TIE = 1e-3  # a top-1 that differs from transformers' must be within this of its best logprob


@dataclass
class Reference:
    """What transformers says about every scored token: its id, logprob, top-1 id and top-1 logprob."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top1_ids: list[int] = field(default_factory=list)
    tables: list[torch.Tensor] = field(default_factory=list)  # the whole log-softmax row, for ties

    @property
    def perplexity(self) -> float:
        return math.exp(-sum(self.logprobs) / len(self.logprobs))

    @property
    def top1_accuracy(self) -> float:
        return sum(a == b for a, b in zip(self.token_ids, self.top1_ids)) / len(self.token_ids)


def context_start(i: int, window: int, stride: int) -> int:
    """Where the window that scores token i starts (token i is scored only if this is < i).

    Window k covers tokens [k*stride, k*stride + window) and scores those no earlier window did:
    window 0 scores 1..window-1, window k >= 1 scores up to k*stride + window - 1. So token i >= window
    belongs to the first k with k*stride + window > i.
    """
    return 0 if i < window else ((i - window) // stride + 1) * stride


def hf_reference(model_dir: Path, texts: list[str], window: int = WINDOW, stride: int | None = None) -> Reference:
    """Score `texts` with transformers alone (its tokenizer, its model, float64 log-softmax)."""
    stride = window if stride is None else stride
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    ref = Reference()
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        by_start: dict[int, list[int]] = {}
        for i in range(1, len(ids)):
            start = context_start(i, window, stride)
            if start < i:
                by_start.setdefault(start, []).append(i)
        for start, scored in by_start.items():
            context = ids[start : scored[-1] + 1]
            assert len(context) <= window
            with torch.no_grad():
                logits = model(torch.tensor([context])).logits[0].double()
            table = torch.log_softmax(logits, dim=-1)
            for i in scored:
                row = table[i - start - 1]
                ref.token_ids.append(ids[i])
                ref.logprobs.append(row[ids[i]].item())
                ref.top1_ids.append(int(row.argmax()))
                ref.tables.append(row)
    return ref


def top1_flips(ours: list[int], ref: Reference) -> int:
    """How many top-1 ids differ from transformers'; each must be a near-tie, where either is right."""
    assert len(ours) == len(ref.top1_ids)
    flips = 0
    for position, (mine, theirs) in enumerate(zip(ours, ref.top1_ids)):
        if mine != theirs:
            table = ref.tables[position]
            assert table[theirs] - table[mine] < TIE, (position, mine, theirs)
            flips += 1
    return flips


def agreement(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


@pytest.fixture(scope="module")
def llama(tiny_model_dir) -> Path:
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def other(tiny_model_dir) -> Path:
    """A second model with the same tokenizer but other weights, GQA ratio and rotary (llama3)."""
    return tiny_model_dir("llama-gqa4-llama3")


@pytest.fixture(scope="module")
def llm(llama: Path) -> LLM:
    return LLM(str(llama), dtype="float32", enable_prefix_caching=False)


@pytest.mark.parametrize("stride", [None, 24])
def test_scores_match_transformers(llm: LLM, llama: Path, stride: int | None) -> None:
    scores = score_texts(llm, TEXTS, WINDOW, stride)
    ref = hf_reference(llama, TEXTS, stride=stride)
    # Which tokens are scored (tokenizer and windows), each one's logprob, and the model's top-1 there.
    assert scores.token_ids == ref.token_ids and len(ref.token_ids) > 2 * WINDOW
    assert max(abs(a - b) for a, b in zip(scores.logprobs, ref.logprobs)) < LOGPROB_ATOL
    flips = top1_flips(scores.top1_ids, ref)
    report = perplexity_report(scores)
    assert report.num_tokens == len(ref.token_ids)
    assert report.perplexity == pytest.approx(ref.perplexity, rel=1e-4)
    assert report.top1_accuracy == pytest.approx(ref.top1_accuracy, abs=flips / len(ref.token_ids) + 1e-12)


def test_overlapping_windows_score_every_token_but_the_first(llm: LLM, llama: Path) -> None:
    """With stride < window every token after each text's first is scored once, with more context."""
    scores = score_texts(llm, TEXTS, WINDOW, stride=24)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(llama))
    expected = [t for text in TEXTS for t in tokenizer(text)["input_ids"][1:]]
    assert scores.token_ids == expected


def test_report_numbers_worked_by_hand() -> None:
    """Two tokens with probabilities 1/2 and 1/4: mean NLL = 1.5 ln 2, perplexity 2^1.5."""
    scores = TokenScores(token_ids=[5, 9], logprobs=[math.log(0.5), math.log(0.25)], top1_ids=[5, 3])
    report = perplexity_report(scores)
    assert report.num_tokens == 2
    assert report.mean_nll == pytest.approx(1.5 * math.log(2))
    assert report.perplexity == pytest.approx(2**1.5)
    assert report.unigram_perplexity == pytest.approx(2.0)  # two distinct tokens, equally frequent
    assert report.top1_accuracy == 0.5
    assert report.as_dict() == {
        "tokens": 2,
        "mean_nll": 1.03972,
        "perplexity": 2.8284,
        "unigram_perplexity": 2.0,
        "top1_accuracy": 0.5,
    }
    with pytest.raises(ValueError, match="no tokens"):
        perplexity_report(TokenScores())


def test_unigram_perplexity_of_known_distributions() -> None:
    assert unigram_perplexity([7, 7, 7]) == pytest.approx(1.0)
    assert unigram_perplexity([1, 2, 3, 4]) == pytest.approx(4.0)
    assert unigram_perplexity([1, 1, 2, 2]) == pytest.approx(2.0)
    # p = (1/2, 1/4, 1/4): entropy = 1.5 ln 2, perplexity 2^1.5.
    assert unigram_perplexity([4, 4, 8, 6]) == pytest.approx(2**1.5)


def test_greedy_agreement_worked_by_hand() -> None:
    target = TokenScores(token_ids=[1, 2, 3, 4], logprobs=[0.0] * 4, top1_ids=[1, 7, 3, 9])
    draft = TokenScores(token_ids=[1, 2, 3, 4], logprobs=[-1.0] * 4, top1_ids=[1, 7, 8, 8])
    assert greedy_agreement(target, draft) == 0.5
    with pytest.raises(ValueError, match="different tokens"):
        greedy_agreement(target, TokenScores([1, 2, 3], [0.0] * 3, [1, 2, 3]))
    with pytest.raises(ValueError, match="no tokens"):
        greedy_agreement(TokenScores(), TokenScores())


def test_agreement_with_another_model_matches_transformers(llm: LLM, llama: Path, other: Path) -> None:
    target = score_texts(llm, TEXTS, WINDOW)
    draft = score_texts(LLM(str(other), dtype="float32"), TEXTS, WINDOW)
    ref_target, ref_draft = hf_reference(llama, TEXTS), hf_reference(other, TEXTS)
    flips = top1_flips(target.top1_ids, ref_target) + top1_flips(draft.top1_ids, ref_draft)
    reference = agreement(ref_target.top1_ids, ref_draft.top1_ids)
    assert 0.0 < reference < 1.0  # two different random models: some positions agree, not all
    # Exact unless a near-tie flipped one model's top-1 (none does on x86; each may move it by 1/n).
    assert greedy_agreement(target, draft) == pytest.approx(reference, abs=flips / len(target.top1_ids) + 1e-12)


def write_texts(folder: Path) -> list[Path]:
    folder.mkdir()
    paths = [folder / f"{i}.txt" for i in range(len(TEXTS))]
    for path, text in zip(paths, TEXTS):
        path.write_text(text, encoding="utf-8")
    return paths


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def reference_unigram(token_ids: list[int]) -> float:
    """exp(entropy of the tokens' own frequencies), written out here from the definition."""
    n = len(token_ids)
    probabilities = [token_ids.count(t) / n for t in set(token_ids)]
    return math.exp(-sum(p * math.log(p) for p in probabilities))


def test_cli_perplexity_file_and_dir(llama: Path, tmp_path: Path, capsys) -> None:
    paths = write_texts(tmp_path / "texts")
    common = ["--model", str(llama), "--dtype", "float32", "--window", str(WINDOW), "--json"]
    code, out, _ = run_cli(["eval", "perplexity", "--file", str(paths[0]), *common], capsys)
    assert code == 0
    one = json.loads(out)
    ref = hf_reference(llama, TEXTS[:1])
    assert one["tokens"] == len(ref.token_ids) and one["files"] == 1
    assert one["perplexity"] == pytest.approx(ref.perplexity, rel=1e-4)
    assert one["mean_nll"] == pytest.approx(-sum(ref.logprobs) / len(ref.logprobs), abs=1e-4)
    assert one["unigram_perplexity"] == pytest.approx(reference_unigram(ref.token_ids), abs=1e-4)
    # Rounded to 5 decimals; a near-tie flip (none on x86) would move it by 1/n.
    assert one["top1_accuracy"] == pytest.approx(ref.top1_accuracy, abs=1 / len(ref.token_ids))

    code, out, _ = run_cli(["eval", "perplexity", "--dir", str(tmp_path / "texts"), *common], capsys)
    both = json.loads(out)
    ref = hf_reference(llama, TEXTS)
    assert code == 0 and both["files"] == 2 and both["tokens"] == len(ref.token_ids)
    assert both["perplexity"] == pytest.approx(ref.perplexity, rel=1e-4)

    code, out, _ = run_cli(["eval", "perplexity", "--file", str(paths[0]), *common[:-1]], capsys)
    assert code == 0
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert float(lines["perplexity"]) == pytest.approx(hf_reference(llama, TEXTS[:1]).perplexity, rel=1e-4)
    assert "unigram perplexity" in lines


def test_cli_agreement(llama: Path, other: Path, tmp_path: Path, capsys) -> None:
    paths = write_texts(tmp_path / "texts")
    args = ["eval", "agreement", "--model", str(llama), "--draft", str(other), "--file", str(paths[1])]
    code, out, _ = run_cli([*args, "--dtype", "float32", "--window", str(WINDOW), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    ref_target, ref_draft = hf_reference(llama, TEXTS[1:]), hf_reference(other, TEXTS[1:])
    n = len(ref_target.token_ids)
    assert result["tokens"] == n
    # Rounded to 5 decimals; a near-tie flip (none on x86) would move it by 1/n.
    assert result["greedy_agreement"] == pytest.approx(agreement(ref_target.top1_ids, ref_draft.top1_ids), abs=1 / n)


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "perplexity", "--dir", "/nonexistent/folder"],
        ["eval", "perplexity", "--file", "/nonexistent/file.txt"],
    ],
)
def test_cli_errors_are_clean(args: list[str], llama: Path, capsys) -> None:
    code, _, err = run_cli([*args, "--model", str(llama)], capsys)
    assert code == 2 and err.startswith("error: ")


def test_cli_needs_a_measure(capsys) -> None:
    code, _, err = run_cli(["eval"], capsys)
    assert code == 2 and "perplexity" in err


def test_cli_perplexity_compares_the_demo_and_a_tiny_model_in_the_shorter_context(llama: Path, tmp_path: Path, capsys):
    paths = write_texts(tmp_path / "texts")
    args = ["eval", "perplexity", "--dir", str(tmp_path / "texts"), "--model", str(DEMO_DIR), "--model", str(llama)]
    code, out, _ = run_cli([*args, "--dtype", "float32", "--json"], capsys)
    result, window = json.loads(out), json.loads((llama / "config.json").read_text())["max_position_embeddings"] - 1
    assert code == 0 and result["files"] == len(paths) and result["window"] == window
    demo, tiny = result["models"]
    ref_demo, ref_tiny = hf_reference(DEMO_DIR, TEXTS, window), hf_reference(llama, TEXTS, window)
    n = len(ref_demo.token_ids)
    assert (demo["model"], tiny["model"], demo["tokens"], tiny["tokens"]) == (str(DEMO_DIR), str(llama), n, n)
    assert demo["perplexity"] == pytest.approx(ref_demo.perplexity, rel=1e-4)
    assert tiny["perplexity"] == pytest.approx(ref_tiny.perplexity, rel=1e-4)
    assert demo["perplexity_change_pct"] is demo["top1_agreement"] is None  # the first is the reference
    change = 100 * (ref_tiny.perplexity / ref_demo.perplexity - 1)  # a random model is far worse than the demo
    assert change > 100 and tiny["perplexity_change_pct"] == pytest.approx(change, rel=1e-3)
    expected = agreement(ref_demo.top1_ids, ref_tiny.top1_ids)
    assert tiny["top1_agreement"] == pytest.approx(expected, abs=1 / n)  # a near-tie flip would move it by 1/n
    _, first, second, footer = run_cli([*args, "--dtype", "float32"], capsys)[1].strip().splitlines()
    assert first.split()[:3] == [str(DEMO_DIR), str(n), f"{demo['perplexity']:.4f}"] and "(reference)" in first
    assert second.split()[:3] == [str(llama), str(n), f"{tiny['perplexity']:.4f}"]
    assert f"+{tiny['perplexity_change_pct']:.2f}%" in second and f"{100 * tiny['top1_agreement']:.2f}%" in second
    assert footer.startswith(f"files: 2; window: {window} tokens")


def test_cli_comparison_refuses_a_missing_model_before_loading_any(llama: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setattr("forgellm.LLM", None)  # loading any model would now raise TypeError
    args = ["eval", "perplexity", "--file", str(write_texts(tmp_path / "texts")[0]), "--model", str(llama)]
    code, out, err = run_cli([*args, "--model", "/nonexistent/model"], capsys)
    assert code == 2 and out == "" and err.startswith("error: ") and "'/nonexistent/model' does not exist" in err
