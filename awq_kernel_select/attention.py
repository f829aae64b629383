"""Decode attention for transformers models: a step's one query token on this library's kernel.

``use_decode_attention(model)`` registers ``"aks_decode"`` with transformers' attention
interface and points the model's config at it. Every attention call with one query token per
sequence (a decode step) then runs ``kernels/attention.py``: the keys split over the whole GPU,
launched with programmatic dependent launch inside a compiled step where inductor uses it, as
the packed linears are. Calls with more query tokens (the prompt) run transformers' SDPA
function unchanged. Any model whose attention goes through transformers' attention interface
and takes SDPA (Llama, Mistral, Qwen2, ...) can use it; the weights are not touched.

The mask the function receives is the one transformers builds for SDPA: from transformers 4.53
that needs the mask builder registered under the same name (``stack.register_attention``).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_attn_mask_utils import AttentionMaskConverter

from .kernels import attention as kernel
from .kernels import matmul
from .kernels.launch import interpreting
from .stack import register_attention

ATTN_IMPLEMENTATION = "aks_decode"


def decode_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0,
                             scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query [B, H, q, D]``, ``key, value
    [B, H_kv, L, D]``, the 4-D mask transformers builds; returns ``[B, q, H, D]``."""
    if query.shape[2] != 1 or dropout:  # the prompt (or training): SDPA, as transformers runs it
        if attention_mask is not None and attention_mask.is_floating_point() and query.is_cuda:
            # transformers does this for its own "sdpa" only: rows of left padding that see no key
            # see every key instead (else SDPA's memory-efficient kernel writes NaN into the cache)
            converter: Any = AttentionMaskConverter
            attention_mask = converter._unmask_unattended(attention_mask, torch.finfo(attention_mask.dtype).min)
        out: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        return out
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if torch.compiler.is_compiling():
        return torch.ops.awq_kernel_select.decode_attention(query, key, value, attention_mask, scale), None
    return kernel.decode_attention(query, key, value, attention_mask, scale, pdl=matmul.USE_PDL), None


def use_decode_attention(model: nn.Module, enabled: bool = True) -> str:
    """Run ``model``'s decode-step attention on this library's kernel (``enabled=False``: back
    to SDPA). Returns the attention implementation now in force.

    Raises ``ValueError`` where it cannot: a model without transformers' attention interface,
    one loaded with another attention implementation than SDPA (eager, flash, flex: the choice
    is left to its owner), a head size the kernel does not take, or a model off the GPU."""
    config: Any = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_attention_heads"):
        raise ValueError(f"{type(model).__name__} has no transformers config with attention heads")
    if not enabled:
        if config._attn_implementation == ATTN_IMPLEMENTATION:
            config._attn_implementation = "sdpa"
        return str(config._attn_implementation)
    current = config._attn_implementation
    if current not in ("sdpa", ATTN_IMPLEMENTATION):
        raise ValueError(f"the model runs attention_implementation={current!r}; decode attention replaces SDPA "
                         "only: load it with attn_implementation='sdpa'")
    dispatching = [m for m in model.modules()
                   if type(m).__name__.endswith("Attention")
                   and hasattr(sys.modules.get(type(m).__module__), "ALL_ATTENTION_FUNCTIONS")]
    if not dispatching:
        raise ValueError(f"{type(model).__name__}'s attention does not go through transformers' attention interface "
                         "(ALL_ATTENTION_FUNCTIONS): its attention function cannot be replaced")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        raise ValueError(f"head size {head_dim}: the decode kernel takes powers of two from 16 to 256")
    device = next(model.parameters()).device
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"the model is on {device}: the decode kernel is Triton and runs on CUDA GPUs "
                         "(or under TRITON_INTERPRET=1)")
    register_attention(ATTN_IMPLEMENTATION, decode_attention_forward)
    config._attn_implementation = ATTN_IMPLEMENTATION
    return ATTN_IMPLEMENTATION
