"""Kernels against a float64 reference: both layouts, group sizes 32/64/128, every path.

On the CPU (CI) the Triton kernels run under TRITON_INTERPRET=1 at small shapes whose sizes are
not powers of two; on a GPU the same tests run at the full shapes of Llama-2 and Llama-3 layers.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from awq_kernel_select import layouts as L
from awq_kernel_select.kernels import awq_linear
from awq_kernel_select.kernels.dispatch import DispatchPolicy, choose_path, default_plan
from awq_kernel_select.kernels.hopper import HopperConfig
from awq_kernel_select.kernels.matmul import _WORKSPACES, MatmulConfig
from awq_kernel_select.kernels.reference import apply_epilogue

from kernel_cases import DEVICE, GPU, MS, SHAPES, TOL, poison_allocator, random_packed, rel_err

CASES = [
    (k, n, g, layout)
    for (k, n), g, layout in itertools.product(SHAPES, (32, 64, 128), ("gemm", "gemv"))
    if k % g == 0
]


@pytest.mark.parametrize("k,n,g,layout", CASES)
def test_auto_dispatch_matches_float64(k: int, n: int, g: int, layout: str) -> None:
    packed = random_packed(k, n, g, layout, seed=k + n + g)
    ref_w = L.dequantize(packed, torch.float64)
    for i, m in enumerate(MS):
        x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
        bias = torch.randn(n, device=DEVICE, dtype=torch.float16) if i % 2 else None
        poison_allocator(m * n)
        out = awq_linear(x, packed, bias)
        ref = x.double() @ ref_w.t() + (bias.double() if bias is not None else 0)
        assert out.shape == (m, n) and out.dtype == torch.float16
        assert rel_err(out, ref) < TOL, f"M={m}"


@pytest.mark.parametrize("layout", ["gemm", "gemv"])
@pytest.mark.parametrize("path", ["gemv", "gemm", "dequant", "torch"])
def test_every_path_on_both_layouts(layout: str, path: str) -> None:
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, layout, seed=7)
    ref_w = L.dequantize(packed, torch.float64)
    for m in (1, 5, 33):
        x = torch.randn(m, k, device=DEVICE, dtype=torch.float16)
        bias = torch.randn(n, device=DEVICE, dtype=torch.float16)
        out = awq_linear(x, packed, bias, path=path)  # type: ignore[arg-type]
        assert rel_err(out, x.double() @ ref_w.t() + bias.double()) < TOL, f"path={path} M={m}"


def test_three_d_inputs_and_bf16() -> None:
    k, n = SHAPES[0]
    packed = random_packed(k, n, 128 if k % 128 == 0 else 64, "gemm", seed=3)
    ref_w = L.dequantize(packed, torch.float64)
    x = torch.randn(2, 3, k, device=DEVICE, dtype=torch.float16)
    out = awq_linear(x, packed)
    assert out.shape == (2, 3, n)
    assert rel_err(out, x.double() @ ref_w.t()) < TOL
    xb = torch.randn(1, 4, k, device=DEVICE, dtype=torch.bfloat16)
    outb = awq_linear(xb, packed)
    assert outb.dtype == torch.bfloat16
    # bf16 output rounding alone is 2^-9 relative: the bound is bf16's, not fp16's
    assert rel_err(outb, xb.double() @ ref_w.t()) < 1e-2


#: bf16 bound where the weights are decoded to bf16 (``(q - z) * bf16(s)``, one rounding) and the
#: output is rounded to bf16: ~2.8e-3 measured on random layers; truncating instead of rounding
#: either gives ~7e-3
BF16_TOL = 5e-3


@pytest.mark.parametrize("layout", ["gemm", "gemv"])
@pytest.mark.parametrize("path", ["gemv", "gemm", "dequant"])
def test_bf16_inputs_beyond_fp16_range_on_every_path(layout: str, path: str) -> None:
    """Activations of bf16 models (Gemma, Qwen) reach magnitudes fp16 cannot hold (> 65504):
    every path computes in bf16 or fp32 for them, none through fp16."""
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, layout, seed=13)
    ref_w = L.dequantize(packed, torch.float64)
    for m in (1, 2, 5, 33) + ((100, 1024) if GPU else ()):
        x = (torch.randn(m, k, device=DEVICE) * 3e5).to(torch.bfloat16)
        out = awq_linear(x, packed, path=path)  # type: ignore[arg-type]
        assert out.dtype == torch.bfloat16
        assert rel_err(out, x.double() @ ref_w.t()) < BF16_TOL, f"path={path} M={m}"


def test_split_k_leaves_its_workspace_clean() -> None:
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, "gemv", seed=11)
    ref_w = L.dequantize(packed, torch.float64)
    cfg = MatmulConfig(block_m=1, block_n=64, block_k=64, split_k=4)
    for _ in range(3):  # a dirty workspace would show in the second and third results
        x = torch.randn(1, k, device=DEVICE, dtype=torch.float16)
        out = awq_linear(x, packed, path="gemv", config=cfg)
        assert rel_err(out, x.double() @ ref_w.t()) < TOL
    for workspace, tickets in _WORKSPACES.values():
        assert workspace.abs().sum().item() == 0 and tickets.abs().sum().item() == 0


def test_dispatch_thresholds() -> None:
    device = torch.device("cuda") if GPU else torch.device("cpu")
    policy = DispatchPolicy(gemv_max_tokens=8, dequant_min_tokens=512)
    assert [choose_path(m, device, policy) for m in (1, 8, 9, 511, 512)] == ["gemv", "gemv", "gemm", "gemm", "dequant"]


def test_wrong_input_width_is_a_clear_error() -> None:
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, "gemm", seed=1)
    with pytest.raises(ValueError, match=f"expects {k}"):
        awq_linear(torch.randn(1, k + 8, device=DEVICE, dtype=torch.float16), packed)
    with pytest.raises(ValueError, match="must divide group_size"):
        awq_linear(torch.randn(1, k, device=DEVICE, dtype=torch.float16), packed, path="gemv",
                   config=MatmulConfig(1, 64, 128, 1))


@pytest.mark.parametrize("path", ["gemm", "dequant", "torch"])
def test_silu_mul_epilogue_on_the_other_paths(path: str) -> None:
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, "gemv", seed=22)
    x = torch.randn(5, k, device=DEVICE, dtype=torch.float16)
    full = x.double() @ L.dequantize(packed, torch.float64).t()
    ref = torch.nn.functional.silu(full[:, 0::2]) * full[:, 1::2]
    assert rel_err(awq_linear(x, packed, path=path, epilogue="silu_mul"), ref) < TOL  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown epilogue"):
        awq_linear(x, packed, path=path, epilogue="gelu")  # type: ignore[arg-type]


@pytest.mark.parametrize("cfg", [MatmulConfig(1, 32, 128, 1), MatmulConfig(1, 32, 128, 2), MatmulConfig(2, 32, 128, 1),
                                 MatmulConfig(1, 32, 64, 2, prefetch=True),
                                 MatmulConfig(1, 32, 64, 2, prefetch=True, interleave_k=True)])
def test_last_tile_past_k_reads_no_x_beyond_k(cfg: MatmulConfig) -> None:
    """K = 320 with 128-wide tiles: the last tile is half outside; x's row goes on with junk."""
    k, n = 320, 72
    packed = random_packed(k, n, 64, "gemv", seed=9)
    wide = torch.full((3, k + 64), float("nan"), device=DEVICE, dtype=torch.float16)
    wide[:, :k] = torch.randn(3, k, device=DEVICE, dtype=torch.float16)
    x = wide[:, :k]  # rows at stride k + 64: reading x past K would bring NaN in
    ref = x.double() @ L.dequantize(packed, torch.float64).t()
    assert rel_err(awq_linear(x, packed, path="gemv", config=cfg), ref) < TOL


@pytest.mark.parametrize("cfg", [MatmulConfig(1, 32, 128, 2), MatmulConfig(1, 64, 64, 2, interleave_k=True)])
def test_one_token_fp16_path_with_outliers_and_an_unaligned_x(cfg: MatmulConfig) -> None:
    """The one-token fp16 path sums eight products in fp16 (as ``(q - z) / 16 * x``) and reads x
    as int64 words: activations of +-3000 (LLMs' "massive activations"), a whole pair of words'
    worth of them together, and x 2 bytes off alignment."""
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, "gemv", seed=11)
    buf = torch.randn(1, k + 1, device=DEVICE, dtype=torch.float16)
    buf[0, 1::97] = 3000.0 * torch.sign(buf[0, 1::97])
    buf[0, 17:33] = 3000.0 * torch.sign(buf[0, 17:33])  # x[16:32]: one int64 of words, all outliers
    x = buf[:, 1:]
    assert x.data_ptr() % 8
    ref = x.double() @ L.dequantize(packed, torch.float64).t()
    assert rel_err(awq_linear(x, packed, path="gemv", config=cfg), ref) < TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("cfg", [MatmulConfig(1, 32, 64, 2), MatmulConfig(1, 64, 64, 2, prefetch=True, interleave_k=True),
                                 MatmulConfig(2, 32, 128, 1), MatmulConfig(2, 32, 64, 3, prefetch=True, interleave_k=True),
                                 MatmulConfig(1, 16, 512, 1, prefetch=True),  # K = 384 in one masked step
                                 MatmulConfig(4, 32, 64, 3, prefetch=True, interleave_k=True)])
def test_pair_paths_with_an_odd_token_count_and_an_unaligned_x(cfg: MatmulConfig, dtype: torch.dtype) -> None:
    """The pair paths (one, two or four tokens per program, words and x read as int64): bf16
    with values beyond fp16's range, fp16 with LLM-sized outliers; M below the tile's tokens
    (1 on two, 2 and 3 on four) leaves tokens of the last program empty, and the tile dots only
    the live ones (``TOKENS``); x 2 bytes off alignment (the launcher copies it)."""
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, "gemv", seed=17)
    ref_w = L.dequantize(packed, torch.float64)
    for m in (2, 3) if cfg.block_m == 4 else (1, 3):  # four tokens at M = 1, 8, 11: test_tile_configurations
        buf = torch.randn(m, k + 1, device=DEVICE) * (3e5 if dtype == torch.bfloat16 else 1.0)
        if dtype == torch.float16:
            buf[:, 1::97] = 3000.0 * torch.sign(buf[:, 1::97])
        x = buf.to(dtype)[:, 1:]
        assert x.data_ptr() % 8
        poison_allocator(m * n)
        out = awq_linear(x, packed, path="gemv", config=cfg)
        bound = BF16_TOL if dtype == torch.bfloat16 else TOL
        assert out.dtype == dtype and rel_err(out, x.double() @ ref_w.t()) < bound, f"M={m}"


def test_four_token_tiles_without_the_pair_path() -> None:
    """fp32 x, or words whose rows are not 8-byte aligned, take the nibble-by-nibble path of the
    same four-token tile, loading the next tile early as the pair path does."""
    k, n = SHAPES[0]
    cfg = MatmulConfig(4, 32, 64, 3, prefetch=True, interleave_k=True)
    packed = random_packed(k, n, 64, "gemv", seed=23)
    x = torch.randn(5, k, device=DEVICE)
    ref = x.double() @ L.dequantize(packed, torch.float64).t()
    assert rel_err(awq_linear(x, packed, path="gemv", config=cfg), ref) < TOL


@pytest.mark.parametrize("cfg", [MatmulConfig(2, 64, 64, 1), MatmulConfig(1, 64, 64, 1, w_first=True),
                                 MatmulConfig(2, 64, 64, 1, prefetch=True), MatmulConfig(16, 64, 256, 1),
                                 MatmulConfig(1, 64, 64, 2, interleave_k=True)])
def test_impossible_tiles_are_refused(cfg: MatmulConfig) -> None:
    """On the GEMM layout: BLOCK_M = 2, w_first or prefetch with its FMA path, a tl.dot tile wider
    than a group, interleave_k."""
    packed = random_packed(*SHAPES[0], 64, "gemm", seed=2)
    with pytest.raises(ValueError):
        awq_linear(torch.randn(2, SHAPES[0][0], device=DEVICE, dtype=torch.float16), packed,
                   path="gemv", config=cfg)


@pytest.mark.parametrize("layout", ["gemm", "gemv"])
def test_dequant_path_in_column_chunks(layout: str) -> None:
    """Chunks smaller than the layer (the last one partial) give the same product, bias included."""
    k, n = SHAPES[-1]
    assert n > 128
    packed = random_packed(k, n, 64, layout, seed=9)
    ref_w = L.dequantize(packed, torch.float64)
    x = torch.randn(40, k, device=DEVICE, dtype=torch.float16)
    bias = torch.randn(n, device=DEVICE, dtype=torch.float16)
    policy = DispatchPolicy(dequant_chunk_bytes=2 * k * 128, dequant_chunk_min_cols=0)  # 128 columns a chunk
    for b in (None, bias):
        out = awq_linear(x, packed, b, path="dequant", plan=default_plan(x.device).with_policy(policy))
        ref = x.double() @ ref_w.t() + (b.double() if b is not None else 0)
        assert rel_err(out, ref) < TOL


def test_module_repeats_launches_correctly() -> None:
    """The modules' cached launches (GPU) give what a fresh dispatch gives, follow new weights
    and inputs, and are dropped when the buffers change."""
    from awq_kernel_select.modules import AKSLinearGEMV

    k, n = SHAPES[0]
    mod = AKSLinearGEMV.from_packed(random_packed(k, n, 64, "gemv", seed=4),
                                    torch.randn(n, device=DEVICE, dtype=torch.float16))
    for m in (1, 1, 2, 2, 1):
        x = torch.randn(1, m, k, device=DEVICE, dtype=torch.float16)
        ref = x.double() @ mod.dequantize(torch.float64).t() + mod.bias.double()  # type: ignore[union-attr]
        assert rel_err(mod(x), ref) < TOL
    assert len(mod._replays) == (2 if GPU else 0)
    other = random_packed(k, n, 64, "gemv", seed=5)
    mod._load_packed(other)  # new buffers: the kept launches must not run the old weights
    assert not mod._replays
    x = torch.randn(1, 1, k, device=DEVICE, dtype=torch.float16)
    assert rel_err(mod(x), x.double() @ L.dequantize(other, torch.float64).t() + mod.bias.double()) < TOL  # type: ignore[union-attr]


def test_kept_launches_are_dropped_when_buffers_change() -> None:
    """The fast path reads no buffer, so every way of replacing one must drop the kept launches:
    assignment (also ``load_state_dict(assign=True)``) and ``.to()``/``.half()``; an in-place
    ``load_state_dict`` keeps them (same addresses, new values: still correct)."""
    from awq_kernel_select.modules import AKSLinearGEMV

    k, n = SHAPES[0]
    mod = AKSLinearGEMV.from_packed(random_packed(k, n, 64, "gemv", seed=4))
    x = torch.randn(1, k, device=DEVICE, dtype=torch.float16)
    key = (x.shape, x.dtype, x.get_device(), mod.path, id(mod.dispatch), "none")

    def keep() -> None:
        mod._replays[key] = lambda x2: torch.full((1, n), 7.0, dtype=x2.dtype, device=x2.device)
        assert float(mod(x)[0, 0]) == 7.0  # the kept launch is what runs

    keep()
    mod.load_state_dict(mod.state_dict())  # in place
    assert mod._replays
    for change in (lambda: setattr(mod, "qweight", mod.qweight.clone()),
                   lambda: setattr(mod, "scales", mod.scales.clone()),
                   lambda: setattr(mod, "bias", torch.zeros(n, dtype=torch.float16, device=DEVICE)),
                   lambda: mod.load_state_dict(mod.state_dict(), assign=True),
                   lambda: mod.to(DEVICE),
                   lambda: mod.half()):
        keep()
        change()
        assert not mod._replays
    expected = x.double() @ mod.dequantize(torch.float64).t() + mod.bias.double()  # type: ignore[union-attr]
    assert rel_err(mod(x), expected) < TOL


@pytest.mark.parametrize("layout,epilogue", [("gemv", "none"), ("gemv", "silu_mul"), ("gemm", "silu_mul")])
def test_kept_launch_takes_x_as_is_and_returns_the_output_in_its_shape(monkeypatch: pytest.MonkeyPatch, layout: str,
                                                                        epilogue: str) -> None:
    """The kept launch (a GPU-only path: here Triton's launcher is faked) reads only x's address
    and allocates the output in its final shape: the module and the operator pass x as it is,
    3-D included, and return what it returns, with no view on either side."""
    from awq_kernel_select.kernels import matmul, op
    from awq_kernel_select.modules import LAYOUT_CLASSES

    launches: list[tuple[int, ...]] = []

    def fake_launch(kernel, grid, args, meta, num_warps, num_stages, launch_pdl=False):  # type: ignore[no-untyped-def]
        kernel[grid](*args, **meta, num_warps=num_warps, num_stages=num_stages)  # the real first launch
        return lambda grid, stream, values: launches.append((values[0], values[5]))  # x, out addresses

    monkeypatch.setattr(matmul, "launch", fake_launch)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: 0, raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    k, n = SHAPES[0]
    packed = random_packed(k, n, 64, layout, seed=6)
    mod = LAYOUT_CLASSES[layout].from_packed(packed)
    width = n // 2 if epilogue == "silu_mul" else n
    x = torch.randn(2, 1, k, device=DEVICE, dtype=torch.float16)
    first = mod(x, epilogue=epilogue)  # plans, launches, keeps the launch
    assert first.shape == (2, 1, width) and len(mod._replays) == 1 and not launches
    again = mod(x, epilogue=epilogue)  # the kept launch
    assert again.shape == (2, 1, width) and again.is_contiguous()
    if epilogue == "none":  # the kernel's output is what is returned
        assert launches == [(x.data_ptr(), again.data_ptr())]
    monkeypatch.setattr(op, "_KEPT", {})
    args = (mod.qweight, mod.qzeros, mod.scales, None, layout, k, n, 64, "auto", 0, epilogue)
    assert op._linear(x, *args).shape == (2, 1, width) and len(op._KEPT) == 1  # type: ignore[arg-type]
    assert op._linear(x, *args).shape == (2, 1, width) and len(launches) == 2  # type: ignore[arg-type]


def test_drop_kept_launches_forgets_the_modules_and_the_operators(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a setting a kept launch baked in changes (PDL, tiles), every layer plans afresh."""
    from awq_kernel_select.kernels import op
    from awq_kernel_select.modules import AKSLinearGEMV, drop_kept_launches

    k, n = SHAPES[0]
    model = torch.nn.Sequential(AKSLinearGEMV.from_packed(random_packed(k, n, 64, "gemv", seed=4)),
                                AKSLinearGEMV.from_packed(random_packed(k, n, 64, "gemv", seed=5)))
    monkeypatch.setattr(op, "_KEPT", {("a key",): ((), lambda x: x)})
    for layer in model:
        layer._replays[("a key",)] = lambda x: x
    drop_kept_launches(model)
    assert not op._KEPT and not any(layer._replays for layer in model)


@pytest.mark.gpu
@pytest.mark.skipif(not GPU or torch.cuda.get_device_capability()[0] < 9, reason="PDL needs sm90+")
def test_pdl_launches_match_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    """Programmatic dependent launch (opt-in): back-to-back launches over layers that share the
    split-K scratch, eager and captured in a CUDA graph, stay exact."""
    from awq_kernel_select.kernels import matmul

    monkeypatch.setattr(matmul, "USE_PDL", True)
    for layout in ("gemv", "gemm"):
        layers = [random_packed(4096, 11008, 128, layout, seed=s) for s in range(3)]
        refs_w = [L.dequantize(p, torch.float64) for p in layers]
        for m in (1, 2, 16, 100):
            x = torch.randn(m, 4096, device=DEVICE, dtype=torch.float16)
            eager = [awq_linear(x, p) for p in layers]
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                captured = [awq_linear(x, p) for p in layers]
            graph.replay()
            torch.cuda.synchronize()
            for out_e, out_g, w in zip(eager, captured, refs_w):
                ref = x.double() @ w.t()
                assert rel_err(out_e, ref) < TOL and rel_err(out_g, ref) < TOL, (layout, m)


def test_each_stream_has_its_own_split_k_workspace() -> None:
    """Launches on one stream are ordered, on two they may overlap: the partial sums and tickets
    of split-K are per stream (the linears' and the decode attention's)."""
    from awq_kernel_select.kernels import attention
    from awq_kernel_select.kernels.matmul import _workspace

    dev = torch.device("cpu")
    first, again, other = (_workspace(dev, s, 16, 64, 4) for s in (101, 101, 102))
    assert first[0] is again[0] and first[0].data_ptr() != other[0].data_ptr()
    assert first[1].data_ptr() != other[1].data_ptr()
    first_a, other_a = (attention._workspace(dev, s, 8, 32, 2) for s in (101, 102))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(first_a, other_a))


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="two CUDA streams")
@pytest.mark.parametrize("kept", [False, True])
def test_one_layer_run_on_two_streams_at_once_keeps_their_sums_apart(kept: bool) -> None:
    """Two requests served concurrently: the same split-K layer on two streams, launches
    interleaved so that they overlap on the GPU; each output matches float64 every time,
    through a fresh dispatch and through the kept launch (made on the other stream)."""
    from awq_kernel_select.modules import AKSLinearGEMV

    k, n = 4096, 4096
    packed = random_packed(k, n, 128, "gemv", seed=21)
    assert default_plan(torch.device(DEVICE)).decide(torch.device(DEVICE), "gemv", 1, n, k, 128)[1].split_k > 1
    module = AKSLinearGEMV.from_packed(packed)
    ref_w = L.dequantize(packed, torch.float64)
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    xs = [torch.randn(1, k, device=DEVICE, dtype=torch.float16) for _ in streams]
    call = module if kept else (lambda x: awq_linear(x, packed))
    if kept:
        with torch.cuda.stream(streams[0]):
            module(xs[0])  # the launch is kept from stream 0 and repeated on both
    torch.cuda.synchronize()
    outs: list[list[torch.Tensor]] = [[], []]
    for _ in range(200):
        for i, (stream, x) in enumerate(zip(streams, xs)):
            with torch.cuda.stream(stream):
                outs[i].append(call(x))
    torch.cuda.synchronize()
    for x, results in zip(xs, outs):
        ref = x.double() @ ref_w.t()
        assert max(rel_err(out, ref) for out in results) < TOL


HOPPER = GPU and torch.cuda.get_device_capability() == (9, 0)
WGMMA_TILES = [HopperConfig(64, 128, 64, 2, 4), HopperConfig(64, 256, 64, 3, 4, 2), HopperConfig(128, 128, 64, 2, 8),
               HopperConfig(128, 128, 64, 2, 8, 2), HopperConfig(64, 128, 32, 2, 4),
               HopperConfig(8, 128, 64, 2, 4, 8, True), HopperConfig(16, 64, 64, 3, 4, 4, True),
               HopperConfig(32, 256, 64, 2, 8, 2, True), HopperConfig(64, 128, 64, 2, 4, 1, True),
               HopperConfig(16, 128, 64, 2, 4, 4, True, True), HopperConfig(8, 256, 64, 3, 8, 16, True, True),
               HopperConfig(64, 128, 32, 2, 4, 3, True, True), HopperConfig(16, 128, 128, 2, 4, 3, True, True),
               HopperConfig(32, 256, 128, 3, 8, 1, True, True)]


@pytest.mark.skipif(not HOPPER, reason="the wgmma tile (kernels/hopper.py) runs on sm_90 only")
@pytest.mark.parametrize("cfg", WGMMA_TILES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_wgmma_tiles_match_float64(cfg: HopperConfig, dtype: torch.dtype) -> None:
    """Every tile, M and N not multiples of it, group 64 and 128 (where the tile takes it), bias on
    odd calls; split-K leaves its workspace clean (a dirty one would show in the next call's result).
    Splits of an ``a_regs`` tile are evened out (3 on K = 4096 / 32 steps: 43 each becomes 44)."""
    for (k, n), g in itertools.product(SHAPES[:2], (64, 128)):
        if g % cfg.block_k:  # a K step lies in one group
            continue
        packed = random_packed(k, n - 8, g, "gemv", seed=k + g)
        ref_w = L.dequantize(packed, torch.float64)
        dense = ref_w.to(dtype)
        for i, m in enumerate((5, 17, 100, 1024)):
            x = torch.randn(m, k, device=DEVICE, dtype=dtype) * (64 if dtype == torch.bfloat16 and i == 3 else 1)
            bias = torch.randn(n - 8, device=DEVICE, dtype=dtype) if i % 2 else None
            poison_allocator(m * (n - 8))
            out = awq_linear(x, packed, bias, path="wgmma", config=cfg.as_matmul())
            ref = x.double() @ ref_w.t() + (bias.double() if bias is not None else 0)
            dense_err = rel_err(torch.nn.functional.linear(x, dense, bias), ref)
            assert out.dtype == dtype and rel_err(out, ref) < max(TOL, 1.5 * dense_err), f"{k}x{n - 8} g{g} M={m}"
    for workspace, tickets in _WORKSPACES.values():
        assert workspace.abs().sum().item() == 0 and tickets.abs().sum().item() == 0


@pytest.mark.skipif(not HOPPER, reason="the wgmma tile (kernels/hopper.py) runs on sm_90 only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_wgmma_a_regs_tiles_with_an_odd_number_of_k_steps(dtype: torch.dtype) -> None:
    """``a_regs`` runs two K steps per trip: 33 steps of 128 (one split), and 18 + 15 (two), end
    with a step past the split's end that must add nothing; 66 steps of 64 in one group each pair."""
    k, n = 33 * 128, 1000
    packed = random_packed(k, n, 128, "gemv", seed=3)
    ref_w = L.dequantize(packed, torch.float64)
    for cfg in (HopperConfig(16, 128, 128, 2, 4, 1, True, True), HopperConfig(16, 128, 128, 2, 4, 2, True, True),
                HopperConfig(32, 128, 64, 2, 4, 3, True, True)):
        for m in (3, 16, 29):
            x = torch.randn(m, k, device=DEVICE, dtype=dtype)
            ref = x.double() @ ref_w.t()
            dense_err = rel_err(torch.nn.functional.linear(x, ref_w.to(dtype)), ref)
            out = awq_linear(x, packed, path="wgmma", config=cfg.as_matmul())
            assert rel_err(out, ref) < max(TOL, 1.5 * dense_err), f"{cfg} M={m}"


@pytest.mark.skipif(not HOPPER, reason="the wgmma tile (kernels/hopper.py) runs on sm_90 only")
@pytest.mark.parametrize("epilogue", ["none", "silu_mul"])
def test_wgmma_kept_launches_repeat_the_launch(epilogue: str) -> None:
    """A module on the wgmma path keeps its launch per input shape, as on the fused paths: the
    repeats give what the first call gives for new inputs, bias and epilogue included."""
    from awq_kernel_select.modules import AKSLinearGEMV

    k, n = SHAPES[0]
    mod = AKSLinearGEMV.from_packed(random_packed(k, n, 128, "gemv", seed=8),
                                    torch.randn(n, device=DEVICE, dtype=torch.float16))
    mod.path = "wgmma"
    ref_w = mod.dequantize(torch.float64)
    for m in (17, 17, 40, 17, 40):
        x = torch.randn(2, m, k, device=DEVICE, dtype=torch.float16)
        ref = apply_epilogue(x.double() @ ref_w.t() + mod.bias.double(), epilogue)  # type: ignore[union-attr]
        assert rel_err(mod(x, epilogue=epilogue), ref) < TOL, m
    assert len(mod._replays) == 2


@pytest.mark.skipif(not HOPPER, reason="the wgmma tile (kernels/hopper.py) runs on sm_90 only")
def test_wgmma_path_with_the_silu_mul_epilogue() -> None:
    k, n = SHAPES[0]
    packed = random_packed(k, n, 128, "gemv", seed=5)
    x = torch.randn(40, k, device=DEVICE, dtype=torch.float16)
    out = awq_linear(x, packed, path="wgmma", epilogue="silu_mul")
    ref = awq_linear(x, packed, path="torch", epilogue="silu_mul")
    assert out.shape == (40, n // 2) and rel_err(out, ref.double()) < 2e-3
