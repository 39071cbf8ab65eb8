"""Scoring text with a model through forgellm's own engine: per-token logprobs and top-1 guesses.

Each window goes in as a prompt asking for one generated token and `prompt_logprobs=1`, so the
engine returns, for every prompt position after the first, the logprob of the actual token and
the model's most likely token there. All windows are queued at once and batched by the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forgellm.eval.windows import ScoringWindow, make_windows
from forgellm.llm import LLM
from forgellm.sampling_params import SamplingParams


@dataclass
class TokenScores:
    """For every scored token: its id, the model's logprob of it, and the model's top-1 id there."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top1_ids: list[int] = field(default_factory=list)

    def extend(self, other: TokenScores) -> None:
        """Append another text's scores."""
        self.token_ids += other.token_ids
        self.logprobs += other.logprobs
        self.top1_ids += other.top1_ids


def default_window(llm: LLM) -> int:
    """The longest prompt the engine accepts: max_model_len less the one token it must generate."""
    return llm.engine.max_model_len - 1


def score_windows(llm: LLM, windows: list[ScoringWindow]) -> TokenScores:
    """Run the windows through `llm` and collect the scores of their scored tokens, in order."""
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
    outputs = llm.generate([w.token_ids for w in windows], params, use_tqdm=False)
    scores = TokenScores()
    for window, output in zip(windows, outputs):
        positions = output.prompt_logprobs or []
        for index in range(window.first_scored, len(window.token_ids)):
            entries = positions[index]
            token = window.token_ids[index]
            scores.token_ids.append(token)
            scores.logprobs.append(entries[token].logprob)
            # prompt_logprobs=1 holds the actual token and the top-1 token (one entry if they agree).
            scores.top1_ids.append(next(t for t, lp in entries.items() if lp.rank == 1))
    return scores


def score_texts(llm: LLM, texts: list[str], window: int | None = None, stride: int | None = None) -> TokenScores:
    """Tokenize each text (with the tokenizer's own special-token rules) and score it in windows."""
    tokenizer = llm.get_tokenizer()
    window = window or default_window(llm)
    windows = [w for text in texts for w in make_windows(tokenizer.encode(text), window, stride)]
    return score_windows(llm, windows)
