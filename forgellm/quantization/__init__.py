"""Quantized inference: a QuantizationConfig picks a LinearMethod per layer (fp8, weight-only int, nvfp4)
and the KV-cache dtype; checkpoint formats (compressed-tensors, ModelOpt, AWQ, GPTQ, HF fp8) are mapped
into the methods' internal layouts at load."""
