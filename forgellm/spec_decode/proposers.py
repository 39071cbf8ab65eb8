"""Which proposer a SpeculativeConfig asks for: checked before the target loads, built after it."""

from __future__ import annotations

from forgellm.hf.config_types import ModelArchConfig
from forgellm.spec_decode.config import ProposerSetup, SpeculativeConfig
from forgellm.spec_decode.decoder import Proposer
from forgellm.spec_decode.draft_model import DraftModelProposer, load_draft_config
from forgellm.spec_decode.eagle3 import Eagle3Proposer, check_eagle3_head
from forgellm.spec_decode.ngram import NgramProposer


def check_proposer(config: SpeculativeConfig, target_arch: ModelArchConfig, max_model_len: int) -> None:
    """Refuse, before any weights load, what cannot work: a k too long, a draft of another vocabulary."""
    config.validate_for_model(max_model_len)
    if config.method == "eagle3":
        check_eagle3_head(config, target_arch)
    if config.method == "draft_model":
        load_draft_config(config, target_arch)


def load_proposer(config: SpeculativeConfig, setup: ProposerSetup) -> Proposer:
    """The n-gram lookup, or the draft model or EAGLE-3 head loaded next to the target (their KV caches come later)."""
    if config.method == "ngram":
        return NgramProposer.from_config(config)
    if config.method == "draft_model":
        return DraftModelProposer.load(config, setup)
    return Eagle3Proposer.load(config, setup)
