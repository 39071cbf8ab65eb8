"""What a calibrated scheme does to one decoder layer after its observed pass: AWQ folds its scales, the
linears are quantized (GPTQ or round to nearest) part by part, static activation and KV-cache scales are
read off the observers, and the layer keeps the quantized weights for the runner's second pass.

Everything written goes into `tensors` (checkpoint name -> tensor, on the CPU): the quantized parts, and
the float tensors AWQ changed (norm weights); the writer takes the rest from the input checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from forgellm.kernels.fp8_quant import FP8_MAX
from forgellm.layers.linear import LinearBase
from forgellm.quantization.config import is_ignored
from forgellm.quantization.quantize.awq import awq_search_scales, fold_scales
from forgellm.quantization.quantize.awq_clip import awq_search_clip, clip_weight
from forgellm.quantization.quantize.calibrate import LayerObservations, ObserverNeeds
from forgellm.quantization.quantize.gptq import gptq_quantize
from forgellm.quantization.quantize.schemes import NVFP4_GROUP, Scheme
from forgellm.quantization.quantize.weights import (
    QuantizedWeight,
    check_group,
    input_scale_tensors,
    int_tensors,
    quantize_rtn,
)

AWQ_ROWS = 4096  # calibration rows per linear the AWQ search scores (spread over all samples)


class LayerQuantizer:
    """Quantizes each decoder layer the calibration runner hands it, under one scheme."""

    def __init__(
        self,
        model: nn.Module,
        scheme: Scheme,
        group_size: int | None,
        ignore: list[str],
        kv_cache_fp8: bool = False,
        act_order: bool = True,
        dampening: float = 0.01,
    ) -> None:
        self.model, self.scheme, self.group_size, self.ignore = model, scheme, group_size, ignore
        self.kv_cache_fp8, self.act_order, self.dampening = kv_cache_fp8, act_order, dampening
        self.tensors: dict[str, torch.Tensor] = {}
        self.replaced: set[str] = set()  # the input checkpoint's weights that `tensors` stands in for
        # (module, parameter name) -> checkpoint name, for the float tensors AWQ rewrites.
        self.names = {(id(m), p): name for name, (m, p, _) in model.weight_map().targets.items()}
        group = {"nvfp4": NVFP4_GROUP, "fp8": None}.get(scheme.weights, group_size)
        for layer in model.layers:  # fail on a group that does not fit before calibrating anything
            for linear in self._linears(layer).values():
                check_group(linear.part_names[0], linear.input_size, group)

    @property
    def needs(self) -> ObserverNeeds:
        """What the observers must collect for this scheme."""
        algorithm = self.scheme.algorithm
        return ObserverNeeds(
            hessian=algorithm == "gptq",
            amax=self.scheme.activations in ("static", "nvfp4"),
            rows=AWQ_ROWS if algorithm == "awq" else 0,
            kv_amax=self.kv_cache_fp8,
        )

    def _linears(self, layer: nn.Module) -> dict[str, LinearBase]:
        """The layer's linears that are quantized (not in the ignore list), by path inside the layer."""
        return {
            name: module
            for name, module in layer.named_modules()
            if isinstance(module, LinearBase) and not all(is_ignored(p, self.ignore) for p in module.part_names)
        }

    @torch.no_grad()
    def __call__(self, index: int, layer: nn.Module, seen: LayerObservations) -> None:
        linears = self._linears(layer)
        awq_scales = self._apply_awq(layer, linears, seen) if self.scheme.algorithm == "awq" else {}
        for name, linear in linears.items():
            observer = seen.linears[name]
            for part, prefix in enumerate(linear.part_names):
                offset, size = linear.part_slice(part)
                rows = linear.weight.data[offset : offset + size]
                w = rows.float()
                # AWQ clips every weight but q and k (whose errors the attention softmax magnifies), as AutoAWQ.
                if self.scheme.algorithm == "awq" and not prefix.endswith(("q_proj", "k_proj")):
                    x = observer.sampled_rows()
                    x = x / awq_scales[name].to(x.device) if name in awq_scales else x
                    w = clip_weight(w, awq_search_clip(x, w, self.scheme.bits, self.group_size))
                quantized = self._quantize_part(prefix, w, observer.hessian)
                rows.copy_(quantized.dequantized.to(rows.dtype))
                self.replaced.add(f"{prefix}.weight")
                for suffix, tensor in quantized.tensors.items():
                    self.tensors[f"{prefix}.{suffix}"] = tensor.cpu()
                for suffix, tensor in input_scale_tensors(self.scheme, observer.amax).items():
                    self.tensors[f"{prefix}.{suffix}"] = tensor
        if self.kv_cache_fp8:
            prefix = linears["self_attn.o_proj"].part_names[0].rsplit(".", 1)[0]
            self.tensors[f"{prefix}.k_scale"] = torch.tensor([max(seen.k_amax, 1e-12) / FP8_MAX])
            self.tensors[f"{prefix}.v_scale"] = torch.tensor([max(seen.v_amax, 1e-12) / FP8_MAX])

    def _quantize_part(self, prefix: str, w: torch.Tensor, hessian) -> QuantizedWeight:
        dtype = self.model.embed_tokens.weight.dtype
        if self.scheme.algorithm != "gptq":
            return quantize_rtn(prefix, w, self.scheme, self.group_size, dtype)
        result = gptq_quantize(
            w,
            hessian.hessian,
            bits=self.scheme.bits,
            group_size=self.group_size,
            act_order="static" if self.act_order else "none",
            dampening=self.dampening,
            scale_dtype=dtype,
        )
        return int_tensors(result.codes, result.scales.to(dtype), self.scheme.bits, result.g_idx)

    def _apply_awq(
        self, layer: nn.Module, linears: dict[str, LinearBase], seen: LayerObservations
    ) -> dict[str, torch.Tensor]:
        """Search and fold the scales of each (producer -> consumer) pair the Llama block allows; the scales
        by consumer (its inputs are now the observed ones divided by them)."""
        folded: dict[str, torch.Tensor] = {}
        attn, mlp = layer.self_attn, layer.mlp
        q_size, kv_size = attn.num_heads * attn.head_dim, attn.num_kv_heads * attn.head_dim
        up = slice(mlp.gate_up_proj.output_sizes[0], mlp.gate_up_proj.output_size)
        # (producer norm or linear, its rows that make the consumer's inputs, consumer)
        mappings = [(layer.input_layernorm, slice(None), "self_attn.qkv_proj")]
        if q_size == kv_size:  # o_proj's inputs are v_proj's outputs only without grouped-query attention
            mappings.append((attn.qkv_proj, slice(q_size + kv_size, q_size + 2 * kv_size), "self_attn.o_proj"))
        mappings.append((layer.post_attention_layernorm, slice(None), "mlp.gate_up_proj"))
        mappings.append((mlp.gate_up_proj, up, "mlp.down_proj"))
        for producer, rows, consumer_name in mappings:
            consumer = linears.get(consumer_name)
            if consumer is None:
                continue
            name = consumer.part_names[0]
            search = awq_search_scales(
                seen.linears[consumer_name].sampled_rows(),
                [consumer.weight.data.float()],
                lambda w, name=name: quantize_rtn(name, w, self.scheme, self.group_size, torch.float32).dequantized,
            )
            bias = getattr(producer, "bias", None)
            fold_scales(
                producer.weight.data[rows], [consumer.weight.data], search.scales, None if bias is None else bias[rows]
            )
            folded[consumer_name] = search.scales
            if not isinstance(producer, LinearBase):  # a norm: its float weight goes to the checkpoint as changed
                self.tensors[self.names[(id(producer), "weight")]] = producer.weight.data.cpu().clone()
        return folded
