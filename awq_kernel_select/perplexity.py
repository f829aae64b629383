"""Perplexity over non-overlapping windows: the measure used to compare quantizations.

``perplexity(model, ids, window=512, max_tokens=8192)`` takes the first ``max_tokens`` token ids,
cuts them into consecutive windows of ``window`` tokens (a shorter last window is dropped), runs
each window on its own (no context carried over), and returns ``exp(mean NLL)`` over every
predicted token: ``window - 1`` predictions per window. Same text, same tokenizer, same window:
the numbers compare; across tokenizers they do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    predicted_tokens: int
    windows: int
    window: int


@torch.no_grad()
def perplexity(model: Any, ids: Sequence[int] | torch.Tensor, *, window: int = 512, max_tokens: int = 8192,
               batch: int = 4) -> PerplexityResult:
    """Perplexity of ``model`` (a causal LM returning ``.logits``) on ``ids``; see the module doc."""
    tokens = torch.as_tensor(list(ids) if not isinstance(ids, torch.Tensor) else ids, dtype=torch.long).flatten()
    tokens = tokens[:max_tokens]
    n_windows = tokens.numel() // window
    if n_windows == 0:
        raise ValueError(f"need at least one window of {window} tokens, got {tokens.numel()}")
    device = next(model.parameters()).device
    windows = tokens[: n_windows * window].view(n_windows, window)
    total_nll, count = 0.0, 0
    for start in range(0, n_windows, batch):
        chunk = windows[start:start + batch].to(device)
        logits = model(input_ids=chunk).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
        total_nll += float(nll)
        count += chunk[:, 1:].numel()
    return PerplexityResult(math.exp(total_nll / count), count, n_windows, window)


def held_out_text(kind: str) -> str:
    """Text from this Python's standard library that the shipped presets do not contain.

    ``prose``: the odd-numbered topics of ``pydoc_data.topics`` (the presets hold the even ones);
    ``code``: the source of modules outside the ``code`` preset.
    """
    import importlib
    import inspect

    if kind == "prose":
        from pydoc_data.topics import topics

        keys = sorted(topics)
        return "\n\n".join(topics[k].strip() for i, k in enumerate(keys) if i % 2 == 1)
    if kind == "code":
        names = ["fnmatch", "glob", "tokenize", "json.encoder", "json.decoder", "csv", "dataclasses", "enum"]
        return "\n\n".join(inspect.getsource(importlib.import_module(n)) for n in names)
    raise ValueError(f"unknown held-out text {kind!r}: use 'prose' or 'code'")
