"""Issue 3 on a GPU: quantize a Llama with 7B layer shapes (random weights, a few layers) in both
versions with this library and with AutoAWQ itself, load each with every kernel that can run,
generate 32 tokens, and report quantization time per layer and time per generated token.

    python -m benchmarks.quantize_gpu --layers 2 --out /tmp/q
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

from awq_kernel_select.bench.model import embedded_tokenizer

from awq_kernel_select.bench.model import LLAMA2_7B, random_llama
from awq_kernel_select.calibration import prepare_calibration
from awq_kernel_select.load import load_quantized
from awq_kernel_select.quantize import quantize


def per_token_ms(wrapper, ids: torch.Tensor, new: int = 32) -> float:
    def run() -> None:
        wrapper.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, pad_token_id=0)
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[1] / new * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    src = out / "fp16"
    model = random_llama(LLAMA2_7B, args.layers, torch.device("cuda")).cpu()
    model.save_pretrained(src)
    tokenizer = embedded_tokenizer(4000)
    tokenizer.save_pretrained(src)
    del model
    results: dict = {"layers": args.layers, "samples": args.samples, "seq_len": args.seq_len,
                     "gpu": torch.cuda.get_device_name(), "quantize": {}, "generate": {}}

    calib = prepare_calibration(None, tokenizer, max_samples=args.samples, seq_len=args.seq_len)
    from awq import AutoAWQForCausalLM

    def ours(version: str) -> None:
        report = quantize(src, out / f"aks-{version}", version=version, max_calib_samples=args.samples,
                          max_calib_seq_len=args.seq_len, overwrite=True)
        results["quantize"][f"awq_kernel_select {version}"] = report.seconds_per_layer
        print(f"ours {version}: {report.seconds_per_layer:.2f} s/layer ({report.wall_time_s:.1f} s)", flush=True)

    def autoawq(version: str) -> None:
        started = time.perf_counter()  # AutoAWQ's own, same calibration blocks, load + quantize + save
        theirs = AutoAWQForCausalLM.from_pretrained(str(src), low_cpu_mem_usage=True, use_cache=False)
        theirs.quantize(tokenizer, {"zero_point": True, "q_group_size": 128, "w_bit": 4, "version": version.upper()},
                        calib_data=calib.blocks, max_calib_samples=len(calib.blocks), max_calib_seq_len=args.seq_len)
        theirs.save_quantized(str(out / f"autoawq-{version}"))
        wall = time.perf_counter() - started
        results["quantize"][f"autoawq {version}"] = wall / args.layers
        print(f"autoawq {version}: {wall / args.layers:.2f} s/layer ({wall:.1f} s)", flush=True)
        del theirs
        torch.cuda.empty_cache()

    autoawq("gemm")  # the first run pays CUDA start-up: alternate who goes first
    ours("gemm")
    ours("gemv")
    autoawq("gemv")

    ids = torch.randint(0, 4000, (1, 64)).cuda()
    for version in ("gemm", "gemv"):
        for kernel in ("auto", "aks_gemv", "aks_gemm", "torch_dequant", "autoawq_triton_gemm", "autoawq_gemv", "autoawq_gemm"):
            key = f"{version} checkpoint, kernel={kernel}"
            try:
                wrapper = load_quantized(out / f"aks-{version}", kernel=kernel, device="cuda")
            except Exception as exc:
                results["generate"][key] = f"cannot run: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                print(key, results["generate"][key], flush=True)
                continue
            try:
                ms = per_token_ms(wrapper, ids)
            except Exception as exc:
                results["generate"][key] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                print(key, results["generate"][key], flush=True)
                continue
            layers = sorted(set(wrapper.awq_kernel_layers.values()))
            results["generate"][key] = {"ms_per_token": ms, "kernel": wrapper.awq_kernel_selection.name, "layers": layers}
            print(f"{key}: {ms:.2f} ms/token ({wrapper.awq_kernel_selection.name}, {layers})", flush=True)
            del wrapper
            torch.cuda.empty_cache()
    (out / "quantize_gpu.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
