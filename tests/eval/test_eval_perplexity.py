"""`forgellm eval` agrees with transformers: perplexity within 1%, the same top-1 tokens."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from forgellm import LLM
from forgellm.cli.main import main
from forgellm.eval import greedy_agreement, make_windows, perplexity_report, score_texts, unigram_perplexity

transformers = pytest.importorskip("transformers")

WINDOW = 64  # several windows per text on the tiny models (whose context is 256 or less)
TEXTS = [
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n" * 3,
    "The quick brown fox jumps over the lazy dog. 東京 naïve café 🐍\n" * 4,
]


@pytest.fixture(scope="module")
def llama(tiny_model_dir) -> Path:
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def llm(llama: Path) -> LLM:
    return LLM(str(llama), dtype="float32", enable_prefix_caching=False)


def reference_scores(model_dir: Path, token_lists: list[list[int]], stride: int | None) -> tuple[list, list]:
    """Logprobs of the scored tokens and the top-1 ids there, from transformers on the same windows."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    logprobs, top1 = [], []
    for ids in token_lists:
        for window in make_windows(ids, WINDOW, stride):
            with torch.no_grad():
                logits = model(torch.tensor([window.token_ids])).logits[0].double()
            table = torch.log_softmax(logits, dim=-1)
            for i in range(window.first_scored, len(window.token_ids)):
                logprobs.append(table[i - 1, window.token_ids[i]].item())
                top1.append(int(table[i - 1].argmax()))
    return logprobs, top1


@pytest.mark.parametrize("stride", [None, 24])
def test_perplexity_agrees_with_transformers(llm: LLM, llama: Path, stride: int | None) -> None:
    scores = score_texts(llm, TEXTS, WINDOW, stride)
    token_lists = [llm.get_tokenizer().encode(t) for t in TEXTS]
    ref_logprobs, ref_top1 = reference_scores(llama, token_lists, stride)
    assert len(scores.logprobs) == len(ref_logprobs) > 2 * WINDOW
    ours = perplexity_report(scores).perplexity
    reference = math.exp(-sum(ref_logprobs) / len(ref_logprobs))
    assert ours == pytest.approx(reference, rel=0.01)
    assert max(abs(a - b) for a, b in zip(scores.logprobs, ref_logprobs)) < 1e-3
    mismatches = sum(a != b for a, b in zip(scores.top1_ids, ref_top1))
    assert mismatches <= 2  # only near-ties of a random model may flip


def test_report_numbers(llm: LLM) -> None:
    scores = score_texts(llm, TEXTS, WINDOW)
    report = perplexity_report(scores)
    assert report.num_tokens == len(scores.token_ids)
    assert report.perplexity == pytest.approx(math.exp(report.mean_nll))
    assert report.unigram_perplexity == pytest.approx(unigram_perplexity(scores.token_ids))
    assert 0.0 <= report.top1_accuracy <= 1.0


def test_unigram_perplexity_of_known_distributions() -> None:
    assert unigram_perplexity([7, 7, 7]) == pytest.approx(1.0)
    assert unigram_perplexity([1, 2, 3, 4]) == pytest.approx(4.0)
    assert unigram_perplexity([1, 1, 2, 2]) == pytest.approx(2.0)


def test_agreement_with_itself_is_total_and_with_another_model_matches_transformers(llm, tiny_model_dir) -> None:
    target = score_texts(llm, TEXTS, WINDOW)
    assert greedy_agreement(target, score_texts(llm, TEXTS, WINDOW)) == 1.0
    other_dir = tiny_model_dir("llama-gqa4-llama3")
    draft = score_texts(LLM(str(other_dir), dtype="float32"), TEXTS, WINDOW)
    token_lists = [llm.get_tokenizer().encode(t) for t in TEXTS]
    _, ref_target = reference_scores(tiny_model_dir("llama"), token_lists, None)
    _, ref_draft = reference_scores(other_dir, token_lists, None)
    reference = sum(a == b for a, b in zip(ref_target, ref_draft)) / len(ref_target)
    assert greedy_agreement(target, draft) == pytest.approx(reference, abs=3 / len(ref_target))


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


def test_cli_perplexity_file_and_dir(llm, llama: Path, tmp_path: Path, capsys) -> None:
    paths = write_texts(tmp_path / "texts")
    common = ["--model", str(llama), "--dtype", "float32", "--window", str(WINDOW), "--json"]
    code, out, _ = run_cli(["eval", "perplexity", "--file", str(paths[0]), *common], capsys)
    assert code == 0
    one = json.loads(out)
    expected = perplexity_report(score_texts(llm, TEXTS[:1], WINDOW))
    assert one["perplexity"] == pytest.approx(expected.perplexity, rel=1e-3)
    assert one["tokens"] == expected.num_tokens and one["files"] == 1

    code, out, _ = run_cli(["eval", "perplexity", "--dir", str(tmp_path / "texts"), *common], capsys)
    both = json.loads(out)
    assert code == 0 and both["files"] == 2
    assert both["perplexity"] == pytest.approx(perplexity_report(score_texts(llm, TEXTS, WINDOW)).perplexity, rel=1e-3)

    code, out, _ = run_cli(["eval", "perplexity", "--file", str(paths[0]), *common[:-1]], capsys)
    assert code == 0 and "perplexity:" in out and "unigram perplexity:" in out


def test_cli_agreement(llama: Path, tmp_path: Path, capsys) -> None:
    paths = write_texts(tmp_path / "texts")
    args = ["eval", "agreement", "--model", str(llama), "--draft", str(llama), "--file", str(paths[1])]
    code, out, _ = run_cli([*args, "--dtype", "float32", "--window", str(WINDOW), "--json"], capsys)
    assert code == 0 and json.loads(out)["greedy_agreement"] == 1.0


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
