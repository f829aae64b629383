"""Compile a 4-bit model whole with torch.compile and decode with a static KV cache.

The packed linears are one operator node each under torch.compile, so `fullgraph=True` holds
and inductor fuses the norms, rotary embeddings and residual adds around them. On a GPU this
uses CUDA graphs (`mode="reduce-overhead"`); on a CPU it checks the same graph with the
`aot_eager` backend (no C++ compiler needed) on a tiny model. Run:
    python examples/compile_decode.py            # or pass a checkpoint folder
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import transformers


def load(path: str | None, device: torch.device) -> Any:
    if path:
        from awq_kernel_select import load_quantized

        return load_quantized(path, device=device).model
    from awq_kernel_select.bench.model import embedded_models  # a random 4-bit model, no download

    return embedded_models(2, device, tiny=device.type == "cpu").quantized


@torch.no_grad()
def main(path: str | None = None, new_tokens: int = 8) -> list[int]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load(path, device)
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)).to(device)
    cache = transformers.StaticCache(config=model.config, max_batch_size=1, max_cache_len=16 + new_tokens,
                                     device=device, dtype=torch.float16)
    logits = model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(16, device=device)).logits
    if device.type == "cuda":
        step = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    else:
        step = torch.compile(model.forward, backend="aot_eager", fullgraph=True)
    tokens = [int(logits[0, -1].argmax())]
    for i in range(new_tokens - 1):
        position = torch.tensor([16 + i], device=device)
        token = torch.tensor([[tokens[-1]]], device=device)
        logits = step(input_ids=token, past_key_values=cache, cache_position=position).logits
        tokens.append(int(logits[0, -1].argmax()))
    print(f"{device.type}: {len(tokens)} tokens decoded by the compiled model: {tokens}")
    return tokens


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
