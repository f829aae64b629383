"""Tiny Llama-style models and a byte-level BPE tokenizer, made in process (no downloads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from awq_kernel_select.bench.model import embedded_tokenizer as make_tokenizer
from awq_kernel_select.probes import PROBES, Verdict

#: every requirement met, for tests about something else than what can run here
ALL_PROBES_OK = {name: Verdict(True, "ok") for name in PROBES}


def make_llama(layers: int = 2, hidden: int = 64, intermediate: int = 128, vocab: int = 320, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).half().eval()
    return model


def save_tiny(folder: Path, **kwargs) -> Path:
    model = make_llama(**kwargs)
    model.save_pretrained(folder)
    make_tokenizer(model.config.vocab_size).save_pretrained(folder)
    return folder


def copy_checkpoint(src: Path, dst: Path, edit: Callable[[dict[str, Any], Path], Any] | None = None) -> Path:
    """A copy of the checkpoint ``src`` at ``dst``; ``edit(config, dst)`` may change its config.json
    (the dict, written back) and the copy's files."""
    shutil.copytree(src, dst)
    if edit is not None:
        config = json.loads((dst / "config.json").read_text())
        edit(config, dst)
        (dst / "config.json").write_text(json.dumps(config))
    return dst
