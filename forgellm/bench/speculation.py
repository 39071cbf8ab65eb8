"""Speculative decoding in benchmark reports: acceptance figures, and forced acceptance for random weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forgellm.errors import ConfigError

if TYPE_CHECKING:
    from forgellm.engine.core import EngineStats
    from forgellm.engine.llm_engine import LLMEngine


def force_acceptance(engine: LLMEngine, acceptance: float, seed: int = 0) -> None:
    """Make the engine's verify steps accept each draft position with probability `acceptance` (costs stay real)."""
    from forgellm.spec_decode.forced_acceptance import ForcedAcceptance

    if engine.core.spec_decoder is None:
        raise ConfigError("--spec-acceptance needs --speculative-config (the proposer whose cost is measured)")
    engine.core.runner.verify_drafts = ForcedAcceptance(acceptance, seed)


def speculation_summary(windows: list[tuple[EngineStats, EngineStats]], seconds: float) -> dict[str, Any] | None:
    """Acceptance over measured windows (stats before, stats after each); None without speculation.

    `seconds` is the wall time of the windows together.
    """
    if not windows or not windows[0][1].num_accepted_per_position:
        return None

    def total(name: str) -> float:
        return sum(getattr(after, name) - getattr(before, name) for before, after in windows)

    steps, drafted, accepted = total("num_spec_steps"), total("num_draft_tokens"), total("num_accepted_tokens")
    per_position = [
        sum(a.num_accepted_per_position[i] - b.num_accepted_per_position[i] for b, a in windows)
        for i in range(len(windows[0][1].num_accepted_per_position))
    ]
    return {
        "verify_steps": steps,
        "draft_tokens": drafted,
        "accepted_tokens": accepted,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        # Of the verify steps, the fraction that accepted the draft at each position.
        "accepted_per_position": [n / steps if steps else 0.0 for n in per_position],
        "tokens_per_verify_step": 1 + accepted / steps if steps else 0.0,
        "draft_time_share": total("spec_draft_seconds") / seconds if seconds > 0 else 0.0,
    }


def summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Table rows (metric, value) for a report."""
    if not summary["verify_steps"]:
        return [
            ["verify steps", "0 (nothing was drafted)"],
            ["share of time drafting", f"{summary['draft_time_share']:.3f}"],
        ]
    per_position = " ".join(f"{x:.2f}" for x in summary["accepted_per_position"])
    return [
        ["verify steps", f"{summary['verify_steps']:,}"],
        ["draft acceptance rate", f"{summary['acceptance_rate']:.3f}"],
        ["accepted per position", per_position],
        ["tokens per verify step", f"{summary['tokens_per_verify_step']:.2f}"],
        ["share of time drafting", f"{summary['draft_time_share']:.3f}"],
    ]
