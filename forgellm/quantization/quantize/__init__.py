"""`forgellm quantize`: write a quantized checkpoint (compressed-tensors format) from an unquantized one."""
