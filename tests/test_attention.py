"""Decode attention (kernels/attention.py, attention.py): the kernel against float64 softmax
attention, its splits and tickets, its refusals, and a transformers model's decode step with it.

On the CPU the kernel runs in Triton's interpreter at small shapes; on a GPU at a 7B-like shape too.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from awq_kernel_select.attention import ATTN_IMPLEMENTATION, use_decode_attention
from awq_kernel_select.bench.model import TINY, random_llama
from awq_kernel_select.kernels import attention as A
from awq_kernel_select.kernels.dispatch import DispatchPlan

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
BACKEND = "inductor" if GPU else "aot_eager"
ONE_SPLIT = A.DecodeAttentionConfig(block_n=16, programs=1)
MANY_SPLITS = A.DecodeAttentionConfig(block_n=16, programs=10_000)

SHAPES = [(1, 4, 4, 37, 32), (2, 4, 2, 50, 16), (1, 2, 1, 5, 64)]  # batch, heads, kv heads, keys, head dim
if GPU:
    SHAPES.append((1, 32, 32, 144, 128))  # the 7B-shaped bench's decode step


def inputs(batch: int, heads: int, kv_heads: int, keys: int, head_dim: int, dtype: torch.dtype, seed: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q as transformers hands it over (a transposed view), k and v a cache longer than ``keys``
    cut to ``keys`` (strided), all random."""
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    q = torch.randn(batch, 1, heads, head_dim, generator=gen, device=DEVICE).to(dtype).transpose(1, 2)
    cache = torch.randn(2, batch, kv_heads, keys + 3, head_dim, generator=gen, device=DEVICE).to(dtype)
    return q, cache[0, :, :, :keys], cache[1, :, :, :keys]


def mask_of(kind: str, batch: int, heads: int, keys: int, dtype: torch.dtype, seed: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    gen = torch.Generator(device=DEVICE).manual_seed(seed + 100)
    per_head = heads if kind.endswith("per-head") else 1
    keep = torch.rand(batch, per_head, 1, keys + 7, generator=gen, device=DEVICE) > 0.3  # longer than the cache
    keep[..., 0] = True  # every row sees a key
    if kind.startswith("bool"):
        return keep
    return torch.zeros(keep.shape, dtype=dtype, device=DEVICE).masked_fill(~keep, torch.finfo(dtype).min)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


@pytest.mark.parametrize("config", [ONE_SPLIT, MANY_SPLITS, A.DEFAULT_CONFIG], ids=["one-split", "splits", "default"])
@pytest.mark.parametrize("mask_kind", ["none", "additive", "bool", "additive-per-head"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_float64_attention(shape: tuple[int, int, int, int, int], mask_kind: str,
                                          config: A.DecodeAttentionConfig) -> None:
    batch, heads, kv_heads, keys, head_dim = shape
    for dtype, bound in ((torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)):
        seed = sum(shape) + len(mask_kind)
        q, k, v = inputs(*shape, dtype, seed)
        mask = mask_of(mask_kind, batch, heads, keys, dtype, seed)
        out = A.decode_attention(q, k, v, mask, 0.3, config=config)
        ref = A.reference_decode_attention(q, k, v, mask, 0.3)
        assert out.shape == (batch, 1, heads, head_dim) and out.dtype == dtype
        assert rel_err(out, ref) < bound, (dtype, rel_err(out, ref))


@pytest.mark.parametrize("config", [ONE_SPLIT, MANY_SPLITS], ids=["one-split", "splits"])
def test_a_row_masked_out_by_finfo_min_averages_as_in_sdpa(config: A.DecodeAttentionConfig) -> None:
    """Every key of a row masked by transformers' additive ``finfo.min``: SDPA (and float64)
    average the values (fp16's -65504 leaves the scores' softmax). bf16's -3.4e38 is clamped in
    the kernel, and must stay above the running maximum's start, or the row would be 0 / 0."""
    for dtype, bound in ((torch.float16, 2e-3), (torch.bfloat16, 1.5e-2)):
        q, k, v = inputs(1, 4, 2, 40, 32, dtype, seed=11)
        mask = torch.zeros(1, 4, 1, 40, dtype=dtype, device=DEVICE)
        mask[:, 1] = torch.finfo(dtype).min  # head 1 sees no key
        out = A.decode_attention(q, k, v, mask, 0.3, config=config)
        ref = A.reference_decode_attention(q, k, v, mask, 0.3)
        assert not out.isnan().any() and rel_err(out, ref) < bound, (dtype, rel_err(out, ref))


def test_splits_put_their_tickets_back() -> None:
    """Every head's last split merges and zeroes its ticket: a second call on fresh inputs (and
    a third of another size) is right again, with no reset between."""
    for seed, keys in ((1, 40), (2, 40), (3, 23)):
        q, k, v = inputs(2, 4, 4, keys, 32, torch.float16, seed)
        out = A.decode_attention(q, k, v, None, config=MANY_SPLITS)
        assert rel_err(out, A.reference_decode_attention(q, k, v)) < 2e-3
    assert MANY_SPLITS.splits(40, 8, 4) == (16, 16, 3)
    for _, _, tickets in A._WORKSPACES.values():
        assert int(tickets.abs().sum()) == 0


def test_splits_spread_the_keys_over_the_gpu() -> None:
    sms = 132  # an H100's
    h100 = A.DecodeAttentionConfig(programs=528)  # the default's 4 programs per SM of an H100
    assert A.DEFAULT_CONFIG.splits(1040, 32, sms) == h100.splits(1040, 32, sms)
    assert h100.splits(144, 32, sms) == (32, 32, 5)  # 160 programs of one step each
    assert h100.splits(1040, 32, sms) == (64, 64, 17)  # 544 programs
    assert h100.splits(4096, 32, sms) == (64, 256, 16)  # 512 programs of 4 steps
    assert h100.splits(100, 1024, sms) == (64, 128, 1)  # enough heads: one split each
    assert A.DecodeAttentionConfig(block_n=32, programs=264).splits(4096, 32, sms) == (32, 480, 9)
    assert h100.splits(1, 1, sms) == (32, 32, 1)


@pytest.mark.parametrize("bad,match", [
    (dict(q=(1, 4, 2, 32)), "one query token"),
    (dict(q=(1, 3, 1, 32), kv=(1, 2, 9, 32)), "evenly"),
    (dict(q=(1, 4, 1, 48), kv=(1, 4, 9, 48)), "powers of two"),
    (dict(mask=(1, 1, 1, 8)), "mask must be"),
    (dict(mask=(1, 1, 2, 9)), "mask must be"),
])
def test_kernel_refuses_what_it_does_not_compute(bad: dict[str, Any], match: str) -> None:
    q = torch.randn(*bad.get("q", (1, 4, 1, 32)), device=DEVICE).half()
    k = torch.randn(*bad.get("kv", (1, 4, 9, 32)), device=DEVICE).half()
    mask = torch.zeros(*bad["mask"], device=DEVICE).half() if "mask" in bad else None
    with pytest.raises(ValueError, match=match):
        A.decode_attention(q, k, k.clone(), mask)


def test_operator_compiles_and_matches_the_kernel() -> None:
    q, k, v = inputs(1, 4, 2, 30, 32, torch.float16, seed=7)
    mask = mask_of("additive", 1, 4, 30, torch.float16, seed=7)
    torch.library.opcheck(torch.ops.awq_kernel_select.decode_attention.default, (q, k, v, mask, 0.2))

    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.ops.awq_kernel_select.decode_attention(q * 1.0, k, v, mask, 0.2) + 0.0

    compiled = torch.compile(step, backend=BACKEND, fullgraph=True)
    out = compiled(q, k, v, mask)
    assert rel_err(out, A.reference_decode_attention(q, k, v, mask, 0.2)) < 2e-3


def tiny_llama() -> Any:
    return random_llama(TINY, 2, torch.device(DEVICE))


@pytest.mark.stack
def test_model_decodes_with_the_kernel_as_with_sdpa(record_property: Any) -> None:
    """A static-cache decode step of a tiny Llama: the logits with decode attention are SDPA's;
    the prompt (several tokens) still runs SDPA, bit for bit."""
    import transformers

    sdpa = tiny_llama()
    ours = copy.deepcopy(sdpa)
    assert use_decode_attention(ours) == ATTN_IMPLEMENTATION
    assert sdpa.config._attn_implementation == "sdpa"  # the copy's config is its own
    prompt = torch.randint(0, TINY["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    logits = {}
    for name, model in (("sdpa", sdpa), ("ours", ours)):
        cache = transformers.StaticCache(config=model.config, max_batch_size=2, max_cache_len=16,
                                         device=DEVICE, dtype=torch.float16)
        with torch.no_grad():
            first = model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(11, device=DEVICE)).logits
            step = model(input_ids=prompt[:, -1:], past_key_values=cache,
                         cache_position=torch.tensor([11], device=DEVICE)).logits
        logits[name] = (first, step)
    assert torch.equal(logits["ours"][0], logits["sdpa"][0])
    record_property("rel_err_vs_sdpa", f"{rel_err(logits['ours'][1], logits['sdpa'][1].double()):.1e}")
    assert rel_err(logits["ours"][1], logits["sdpa"][1].double()) < 2e-3
    assert use_decode_attention(ours, enabled=False) == "sdpa"


def test_use_decode_attention_refuses_other_implementations() -> None:
    model = tiny_llama()
    model.config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="attn_implementation='sdpa'"):
        use_decode_attention(model)
    with pytest.raises(ValueError, match="no transformers config"):
        use_decode_attention(torch.nn.Linear(2, 2))


def test_compiled_decode_step_matches_the_uncompiled_model() -> None:
    """The whole model compiled (fullgraph) with decode attention: the operator in the graph,
    the step's logits those of the uncompiled SDPA model."""
    import transformers

    sdpa = tiny_llama()
    ours = copy.deepcopy(sdpa)
    use_decode_attention(ours)
    prompt = torch.randint(0, TINY["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    logits = []
    for model, compile_it in ((sdpa, False), (ours, True)):
        cache = transformers.StaticCache(config=model.config, max_batch_size=1, max_cache_len=12,
                                         device=DEVICE, dtype=torch.float16)
        forward = torch.compile(model.forward, backend=BACKEND, fullgraph=True) if compile_it else model.forward
        with torch.no_grad():
            model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(9, device=DEVICE))
            logits.append(forward(input_ids=prompt[:, -1:], past_key_values=cache,
                                  cache_position=torch.tensor([9], device=DEVICE)).logits)
    assert rel_err(logits[1], logits[0].double()) < (1e-2 if GPU else 2e-3)  # inductor's fp16 fusions round differently


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="two CUDA streams")
def test_decode_attention_on_two_streams_at_once_keeps_their_splits_apart() -> None:
    """Two sequences' decode steps on two streams, interleaved so that they overlap: each
    merges only its own splits."""
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    cases = [inputs(1, 32, 32, 2048, 128, torch.float16, seed) for seed in (31, 32)]
    torch.cuda.synchronize()
    outs: list[list[torch.Tensor]] = [[], []]
    for _ in range(100):
        for i, (stream, (q, k, v)) in enumerate(zip(streams, cases)):
            with torch.cuda.stream(stream):
                outs[i].append(A.decode_attention(q, k, v, plan=DispatchPlan(multiprocessors=132)))
    torch.cuda.synchronize()
    for (q, k, v), results in zip(cases, outs):
        ref = A.reference_decode_attention(q, k, v)
        assert max(rel_err(out, ref) for out in results) < 2e-3
