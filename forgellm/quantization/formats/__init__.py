"""Checkpoint formats: each reads its `quantization_config` into a QuantizationConfig and its tensors into
canonical parts (quantization/parts.py)."""
