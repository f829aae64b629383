"""Existing code that calls AutoAWQ's from_quantized switches by changing one line.

    # before
    from awq import AutoAWQForCausalLM
    model = AutoAWQForCausalLM.from_quantized(path, fuse_layers=False)
    # after
    from awq_kernel_select import load_quantized
    model = load_quantized(path, fuse_layers=False)

fuse_layers=True (AutoAWQ's default) works too: with this library's kernels it fuses q/k/v and
gate/up into one packed linear each, SiLU x up into the gate/up kernel of Llama-style MLPs
(faster decode; model.awq_fuse_report says what was fused; save the model before fusing, not after).

Run with a checkpoint folder: python examples/replace_from_quantized.py PATH
"""

import sys

import torch

from awq_kernel_select import load_quantized

path = sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__)
model = load_quantized(path)  # same wrapper type as from_quantized: .model, .generate, .quant_config
print(model.awq_kernel_selection.explain())
ids = torch.tensor([[1, 2, 3, 4]], device=model.model.device)
print(model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False))
