"""The embedded models: a Llama-2-7B-shaped one by default, or SmolLM2-135M's shapes (small
layers, where launches rather than bytes bound a decode step); random weights, packed to 4 bits
in memory.

Latency does not depend on the weights' values, so the weights are random normal (never
zeros, which can run faster than real data) and quantized by round-to-nearest straight into
AutoAWQ's layouts; AWQ's scale search would cost ~16 s per layer for the same timings.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..layouts import pack, quantize_rtn
from ..modules import LAYOUT_CLASSES, AWQLinear
from ..stack import rotary_embedding

LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)
SMOLLM2_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                    num_key_value_heads=3, max_position_embeddings=8192, rms_norm_eps=1e-5)
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5)


@dataclass(frozen=True)
class EmbeddedShape:
    """A model family the bench builds with random weights, no download."""

    label: str
    config: dict[str, Any]
    layers: int  # the family's depth: the default on a GPU
    group_size: int  # divides every layer's in_features (576 is no multiple of 128)


EMBEDDED_SHAPES = {
    "llama2-7b": EmbeddedShape("Llama-2-7B shapes", LLAMA2_7B, 32, 128),
    "smollm2-135m": EmbeddedShape("SmolLM2-135M shapes", SMOLLM2_135M, 30, 64),
}
TINY_SHAPE = EmbeddedShape("tiny Llama", TINY, 2, 128)


@dataclass
class BenchModels:
    """The fp16 model and its 4-bit twin (this library's modules, GEMM layout to start with)."""

    fp16: nn.Module
    quantized: nn.Module
    description: str


def random_llama(shape: dict[str, Any], layers: int, device: torch.device, seed: int = 0) -> Any:
    import transformers

    llama_config: Any = transformers.LlamaConfig  # type: ignore[attr-defined]  # transformers' classes carry no type hints
    llama: Any = transformers.LlamaForCausalLM
    config = llama_config(**shape, num_hidden_layers=layers, tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = llama(config)
    model = model.to_empty(device=device).to(torch.float16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.model.rotary_emb = rotary_embedding(model, config, device)  # real buffers, not meta's
    return model.eval()


def embedded_tokenizer(vocab_size: int = 320) -> Any:
    """A byte-level BPE tokenizer trained in process on the shipped calibration text (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ..calibration import load_preset

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(load_preset("prose")[:20] + load_preset("code")[:20], trainer=trainer)
    fast: Any = PreTrainedTokenizerFast
    return fast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def quantize_linears_rtn(model: nn.Module, group_size: int = 128, layout: str = "gemm") -> nn.Module:
    """Replace every decoder-layer linear by a packed 4-bit module (lm_head stays fp16, as in AWQ)."""
    for layer in model.model.layers:  # type: ignore[union-attr]
        for name, child in list(layer.named_modules()):
            if isinstance(child, nn.Linear):
                q, z, s = quantize_rtn(child.weight.data, group_size)
                layer.set_submodule(name, LAYOUT_CLASSES[layout].from_packed(pack(q, z, s, group_size, layout),
                                                                             child.bias))
    return model


def dense_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose packed linears are plain ``nn.Linear`` holding the dequantized
    weights, in the dtype of the model's embeddings: the dense baseline of a checkpoint, the
    same shapes and values as the 4-bit model reads."""
    twin = copy.deepcopy(model)
    dtype = twin.get_input_embeddings().weight.dtype  # type: ignore[operator]
    for name, module in list(twin.named_modules()):
        if isinstance(module, AWQLinear):
            dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                              device=module.qweight.device, dtype=dtype)
            with torch.no_grad():
                dense.weight.copy_(module.dequantize(dtype))
                if module.bias is not None:
                    dense.bias.copy_(module.bias)
            twin.set_submodule(name, dense)
    return twin


def embedded_models(layers: int, device: torch.device, tiny: bool = False, group_size: int | None = None,
                    shape: str = "llama2-7b") -> BenchModels:
    """The fp16 model of ``shape`` (a key of ``EMBEDDED_SHAPES``; ``tiny``: a 128-wide Llama for
    the CPU) and its 4-bit twin; ``group_size`` defaults to the family's."""
    if shape not in EMBEDDED_SHAPES:
        raise ValueError(f"shape={shape!r}: one of {', '.join(EMBEDDED_SHAPES)}")
    family = TINY_SHAPE if tiny else EMBEDDED_SHAPES[shape]
    group = family.group_size if group_size is None else group_size
    fp16 = random_llama(family.config, layers, device)
    quantized = quantize_linears_rtn(copy.deepcopy(fp16), group, "gemm")
    return BenchModels(fp16, quantized, f"{family.label}, {layers} layers, random weights, RTN 4-bit group {group}")


def packed_bytes_per_token(model: nn.Module) -> int:
    """Bytes one decode step must read: packed linears, fp16 lm_head and norms (not the KV cache)."""
    total = 0
    for module in model.modules():
        if isinstance(module, AWQLinear):
            total += sum(t.numel() * t.element_size() for t in (module.qweight, module.qzeros, module.scales))
        elif isinstance(module, nn.Linear):
            total += module.weight.numel() * module.weight.element_size()
    return total
