"""Fused projections (q/k/v, gate/up as one packed linear): lossless buffers, the same model
output, any call order, and the cases that are left alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from awq_kernel_select import layouts as L
from awq_kernel_select.bench.model import TINY, quantize_linears_rtn, random_llama
from awq_kernel_select.fuse import GatedMLP, ProjectionSlice, SharedProjection, fuse_projections
from awq_kernel_select.modules import LAYOUT_CLASSES, set_layout, set_path

G = 32


def packed(n: int, k: int, seed: int, layout: str) -> L.PackedWeights:
    gen = torch.Generator().manual_seed(seed)
    return L.pack(*L.quantize_rtn(torch.randn(n, k, generator=gen), G), G, layout)


@pytest.mark.parametrize("layout", ["gemm", "gemv"])
def test_concatenated_buffers_dequantize_to_the_stacked_weights(layout: str) -> None:
    parts = [packed(n, 128, seed, layout) for seed, n in enumerate((64, 32, 40))]
    whole = L.concat_out_features(parts)
    assert whole.out_features == 136
    assert torch.equal(L.dequantize(whole, torch.float64), torch.cat([L.dequantize(p, torch.float64) for p in parts]))
    assert torch.equal(L.convert(whole, "gemv" if layout == "gemm" else "gemm").qweight,  # still a valid layer
                       L.concat_out_features([L.convert(p, "gemv" if layout == "gemm" else "gemm")
                                              for p in parts]).qweight)


@pytest.mark.parametrize("layout", ["gemm", "gemv"])
def test_interleaved_buffers_dequantize_to_the_woven_weights(layout: str) -> None:
    gate, up = packed(40, 128, 0, layout), packed(40, 128, 1, layout)
    woven = L.interleave_out_features([gate, up])
    assert (woven.layout, woven.out_features) == (layout, 80)
    w = L.dequantize(woven, torch.float64)
    assert torch.equal(w[0::2], L.dequantize(gate, torch.float64))
    assert torch.equal(w[1::2], L.dequantize(up, torch.float64))
    with pytest.raises(ValueError, match="must match"):
        L.interleave_out_features([gate, packed(48, 128, 2, layout)])


def test_concatenation_refuses_layers_of_other_inputs() -> None:
    with pytest.raises(ValueError, match="256 inputs"):
        L.concat_out_features([packed(32, 128, 0, "gemm"), packed(32, 256, 1, "gemm")])


DEVICES = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def tiny_model(layout: str, device: str = "cpu") -> nn.Module:
    model = quantize_linears_rtn(random_llama(TINY, 2, torch.device(device)), 64, layout)
    if device == "cpu":
        set_path(model, "torch")  # plain torch on the CPU; on a GPU the Triton kernels (path auto)
    return model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["gemm", "gemv"])
def test_fused_model_gives_the_same_logits(layout: str, device: str) -> None:
    model = tiny_model(layout, device)
    fused = copy.deepcopy(model)
    report = fuse_projections(fused)
    assert report.fused == [f"model.layers.{i}.{m}" for i in range(2)
                            for m in ("self_attn.qkv_proj", "mlp.gate_up_proj")]
    assert not report.skipped and not report.ungated
    assert report.gated == ["model.layers.0.mlp", "model.layers.1.mlp"]  # SiLU x up in the kernel
    assert isinstance(fused.model.layers[0].mlp, GatedMLP)
    attention = fused.model.layers[0].self_attn
    assert isinstance(attention.q_proj, ProjectionSlice) and isinstance(attention.qkv_proj, SharedProjection)
    assert attention.qkv_proj.linear.out_features == 3 * TINY["hidden_size"]
    # no weight is held twice: the slices are not modules of their own buffers
    assert sum(1 for n, _ in fused.named_buffers() if n.endswith("qweight")) == 2 * 4  # qkv, o, gate_up, down
    ids = torch.randint(0, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        ref, out = model(ids).logits.double(), fused(ids).logits.double()
    assert float((out - ref).norm() / ref.norm()) < 1e-3
    with torch.no_grad():  # decode with a cache: the fused slices feed attention the same way
        a = model.generate(ids[:1, :4], max_new_tokens=5, do_sample=False)
        b = fused.generate(ids[:1, :4], max_new_tokens=5, do_sample=False)
    # the same tokens on the CPU's exact torch path; on a GPU other tiles round differently
    assert torch.equal(a, b) if device == "cpu" else a.shape == b.shape


def test_layout_conversion_reaches_the_fused_linear() -> None:
    fused = tiny_model("gemm")
    fuse_projections(fused)
    set_layout(fused, "gemv")
    shared = fused.model.layers[1].mlp.gate_up_proj
    assert shared.linear.layout == "gemv"
    assert fused.model.layers[1].mlp.up_proj.shared is shared  # the slices see the new linear


@pytest.mark.parametrize("bias", [False, True])
def test_gated_mlp_matches_the_mlp_and_its_projections_still_answer_alone(bias: bool) -> None:
    model = tiny_model("gemv")
    mlp = model.model.layers[0].mlp
    if bias:  # a model with mlp_bias
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.bias = torch.randn(lin.out_features, generator=torch.Generator().manual_seed(3)).half()
    original = copy.deepcopy(mlp)
    fuse_projections(model)
    gated = model.model.layers[0].mlp
    assert isinstance(gated, GatedMLP) and gated.gate_up_proj.interleaved
    assert gated.intermediate_size == original.intermediate_size and gated.config is mlp.config
    x = torch.randn(2, 3, TINY["hidden_size"], generator=torch.Generator().manual_seed(4)).half()
    with torch.no_grad():
        for got, want in ((gated(x), original(x)), (gated.up_proj(x), original.up_proj(x)),
                          (gated.gate_proj(x), original.gate_proj(x))):
            assert got.shape == want.shape
            assert float((got.double() - want.double()).norm() / want.double().norm()) < 1e-3


def test_mlps_that_are_not_swiglu_keep_their_activation_with_a_reason() -> None:
    model = tiny_model("gemv")
    model.model.layers[0].mlp.act_fn = nn.GELU()
    model.model.layers[1].mlp.register_forward_hook(lambda *args: None)
    report = fuse_projections(model)
    assert report.gated == []
    assert report.ungated == {"model.layers.0.mlp.gate_up_proj": "its activation is GELU, not SiLU",
                              "model.layers.1.mlp.gate_up_proj": "its forward is wrapped or hooked"}
    assert not isinstance(model.model.layers[0].mlp, GatedMLP)
    assert isinstance(model.model.layers[0].mlp.gate_up_proj, SharedProjection)
    plain = tiny_model("gemv")
    assert "gate=False" in fuse_projections(plain, gate=False).ungated["model.layers.0.mlp.gate_up_proj"]


def shared_projection(bias: bool) -> tuple[SharedProjection, list[nn.Module]]:
    parts = []
    for seed, n in enumerate((64, 32, 32)):
        b = torch.randn(n, generator=torch.Generator().manual_seed(10 + seed)).half() if bias else None
        parts.append(LAYOUT_CLASSES["gemv"].from_packed(packed(n, 128, seed, "gemv"), b))
    holder = nn.Module()
    for name, part in zip(("q_proj", "k_proj", "v_proj"), parts):
        part.path = "torch"
        setattr(holder, name, part)
    fuse_projections(holder)
    return holder.qkv_proj, parts


@pytest.mark.parametrize("bias", [False, True])
def test_each_slice_is_its_projection_in_any_order(bias: bool) -> None:
    shared, parts = shared_projection(bias)
    slices = [ProjectionSlice(shared, i) for i in range(3)]
    x, y = torch.randn(3, 128).half(), torch.randn(3, 128).half()
    for order in ((2, 0, 1), (0, 1, 2)):
        for i in order:
            expected = parts[i](x).double()
            assert float((slices[i](x).double() - expected).norm() / expected.norm()) < 1e-3
    assert shared._last.outputs == () and shared._last.input is None  # all three served: nothing kept
    first = slices[0](x)
    other = slices[1](y)  # a different input is computed afresh, not sliced from x's output
    assert torch.allclose(other.float(), parts[1](y).float(), rtol=1e-3, atol=1e-3)
    assert torch.allclose(first.float(), parts[0](x).float(), rtol=1e-3, atol=1e-3)


def test_groups_that_cannot_share_a_linear_are_left_alone_with_a_reason() -> None:
    holder = nn.Module()
    holder.gate_proj = LAYOUT_CLASSES["gemm"].from_packed(packed(64, 128, 0, "gemm"))
    holder.up_proj = nn.Linear(128, 64)  # not packed
    holder.q_proj = LAYOUT_CLASSES["gemm"].from_packed(packed(64, 128, 1, "gemm"))  # k_proj, v_proj missing
    report = fuse_projections(holder)
    assert report.fused == []
    assert "not all of them" in report.skipped["gate_up_proj"]
    assert "missing" in report.skipped["qkv_proj"]
    assert isinstance(holder.gate_proj, LAYOUT_CLASSES["gemm"])


def test_fused_model_compiles_whole() -> None:
    """The slices' shared state traces: torch.compile with fullgraph=True takes the model."""
    model = tiny_model("gemv")
    fused = copy.deepcopy(model)
    fuse_projections(fused)
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    ids = torch.randint(0, TINY["vocab_size"], (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits.double()
        for _ in range(2):  # the second call runs the compiled graph as it is
            out = compiled(ids).logits.double()
            assert float((out - ref).norm() / ref.norm()) < 1e-3
    assert fused.model.layers[0].self_attn.qkv_proj._last.outputs == ()  # nothing kept between calls


def test_a_module_that_already_has_the_fused_name_is_left_alone() -> None:
    holder = nn.Module()
    for seed, name in enumerate(("q_proj", "k_proj", "v_proj")):
        setattr(holder, name, LAYOUT_CLASSES["gemv"].from_packed(packed(32, 128, seed, "gemv")))
    holder.qkv_proj = nn.Identity()  # e.g. a model of its own fused design
    report = fuse_projections(holder)
    assert report.skipped == {"qkv_proj": "the module already has a qkv_proj"}
    assert isinstance(holder.qkv_proj, nn.Identity)
