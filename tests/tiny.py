"""Tiny Llama-style models and a byte-level BPE tokenizer, made in process (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch


def make_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from awq_kernel_select.calibration import load_preset

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(load_preset("prose")[:20] + load_preset("code")[:20], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


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
