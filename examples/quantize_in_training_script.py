"""Quantize a model you just trained, inside the same script, with the shipped calibration text.

Here the "trained" model is a tiny random Llama built in memory; use your own model and tokenizer.
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tiny-model helpers

import tiny  # noqa: E402

from awq_kernel_select import load_quantized, quantize  # noqa: E402

model, tokenizer = tiny.make_llama(), tiny.make_tokenizer()
# ... training happens here ...
with tempfile.TemporaryDirectory() as folder:
    report = quantize(model, Path(folder) / "awq", tokenizer=tokenizer, preset="prose", group_size=64,
                      max_calib_samples=16, max_calib_seq_len=128, version="auto")
    print(report)
    quantized = load_quantized(report.path)  # back onto the best kernel for this machine
    print(quantized.awq_kernel_selection.explain().splitlines()[0])
