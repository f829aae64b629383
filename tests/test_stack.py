"""Every transformers version the library allows (awq_kernel_select/stack.py): each break between
versions at its cause, and checkpoints written on one version read on another.

``scripts/run-tests.sh`` runs the tests marked ``stack`` on each end of the range, each in its own
environment, with ``AKS_STACK_EXCHANGE`` naming one folder for all of them: each version writes
its checkpoints there, and reads (and compares bit for bit) those the others wrote.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from packaging.version import Version

from awq_kernel_select.load import load_quantized
from awq_kernel_select.quantize import quantize
from awq_kernel_select.stack import StackError, check_transformers, crop_cache, portable_config, require_awq

import tiny

pytestmark = pytest.mark.stack

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
IDS = torch.tensor([[1, 17, 40, 99, 3, 250, 7, 64, 200, 31, 5, 77]])


def test_range_refuses_by_name_what_autoawq_cannot_run_on() -> None:
    with pytest.raises(StackError, match=r"4\.45\.2 is too old.*qwen3.*4\.51"):
        check_transformers(Version("4.45.2"))
    with pytest.raises(StackError, match=r"6\.0\.0 is newer"):
        check_transformers(Version("6.0.0"))
    for allowed in ("4.51.0", "4.53.3", "4.57.6", "5.25.0"):
        check_transformers(Version(allowed))
    assert check_transformers() == Version(transformers.__version__)


def test_awq_imports_where_transformers_has_no_gelu_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    """4.57.x removed ``PytorchGELUTanh``, which AutoAWQ's ``quantize/scale.py`` imports."""
    activations = importlib.import_module("transformers.activations")
    if not hasattr(activations, "GELUTanh"):
        pytest.skip(f"transformers {transformers.__version__} has PytorchGELUTanh as its own class")
    monkeypatch.delattr(activations, "PytorchGELUTanh")
    monkeypatch.delitem(sys.modules, "awq.quantize.scale", raising=False)
    require_awq()
    scale = importlib.import_module("awq.quantize.scale")
    assert scale.PytorchGELUTanh is activations.GELUTanh


def test_crop_cache_keeps_the_first_tokens() -> None:
    """``crop(n)`` with n > 0 meant "keep n" before 5.15 and raises from 5.15."""
    cache = transformers.DynamicCache()
    keys = torch.randn(1, 2, 5, 4)
    cache.update(keys, keys.clone(), 0)
    crop_cache(cache, 3)
    assert cache.get_seq_length() == 3
    crop_cache(cache, 3)  # nothing to cut: unchanged (crop(0) would empty it before 5.15)
    assert cache.get_seq_length() == 3


def test_portable_config_adds_the_rope_fields_4x_reads() -> None:
    written_by_5x = {"model_type": "llama", "rope_parameters": {"rope_theta": 500000.0, **LLAMA3_ROPE}}
    out = portable_config(written_by_5x)
    assert out["rope_theta"] == 500000.0 and out["rope_scaling"] == LLAMA3_ROPE
    assert out["rope_parameters"] == written_by_5x["rope_parameters"]  # 5.x reads it as it wrote it
    plain = portable_config({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})
    assert plain["rope_theta"] == 10000.0 and plain["rope_scaling"] is None
    written_by_4x = {"rope_theta": 10000.0, "rope_scaling": None}
    assert portable_config(written_by_4x) == written_by_4x


def test_a_repeated_static_cache_step_stays_at_its_position() -> None:
    """The bench replays one decode step on a prefilled static cache; from 5.0 the cache counts
    its tokens and writes after them, so without the rewind each repetition wrote one slot
    further and ran off the end (a device-side assert on the GPU, an IndexError here)."""
    from awq_kernel_select.bench.latency import repeatable_step
    from awq_kernel_select.bench.model import TINY, random_llama

    model = random_llama(TINY, 1, torch.device("cpu")).float()
    prompt = IDS[:, :8]
    cache = transformers.StaticCache(config=model.config, max_batch_size=1, max_cache_len=10, device="cpu",
                                     dtype=torch.float32)
    with torch.no_grad():
        model(input_ids=prompt, past_key_values=cache, cache_position=torch.arange(8), use_cache=True)
        step = repeatable_step(model, cache, prompt[:, -1:], torch.tensor([8]))
        first = step().logits
        for _ in range(4):
            assert torch.equal(step().logits, first)


def test_the_swiglu_mlp_of_this_version_gets_the_gated_kernel() -> None:
    """5.x's Llama MLP runs ``transformers.activations.SiLUActivation``, 4.x's ``nn.SiLU``."""
    from awq_kernel_select.bench.model import TINY, quantize_linears_rtn, random_llama
    from awq_kernel_select.fuse import GatedMLP, fuse_projections

    model = quantize_linears_rtn(random_llama(TINY, 1, torch.device("cpu")), 64)
    report = fuse_projections(model)
    assert not report.ungated and isinstance(model.model.layers[0].mlp, GatedMLP)


# --- checkpoints across versions -----------------------------------------------------------------


def llama3_style(folder: Path) -> Path:
    """A tiny Llama with Llama-3 RoPE (theta 500000, llama3 scaling) whose weights come from a
    seeded generator, not from transformers' initialisation, so every version saves the same."""
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE), tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1.0 + 0.1 * noise if "norm" in name else 0.05 * noise)
    model.half().save_pretrained(folder)
    tiny.make_tokenizer(320).save_pretrained(folder)
    return folder


#: token ids, not text: the tokenizers library differs between the stacks, the ids must not
CALIBRATION = torch.randint(2, 320, (8, 64), generator=torch.Generator().manual_seed(1)).tolist()
CHECKPOINTS = {
    "awq-gemm": dict(version="gemm", group_size=64, calibration=CALIBRATION, max_calib_seq_len=64),
    "awq-gemv": dict(version="gemv", group_size=64, calibration=CALIBRATION, max_calib_seq_len=64),
    "rtn-gemm": dict(version="gemm", group_size=64, method="rtn"),
}


def logits_of(path: Path) -> torch.Tensor:
    with torch.no_grad():
        return load_quantized(path, device="cpu").model(IDS).logits.float()


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This version's checkpoints (and their logits) in the shared folder, written afresh."""
    root = Path(os.environ.get("AKS_STACK_EXCHANGE") or tmp_path_factory.mktemp("exchange"))
    mine = root / transformers.__version__
    shutil.rmtree(mine, ignore_errors=True)
    fp16 = llama3_style(tmp_path_factory.mktemp("fp16") / "llama3-style")
    for name, kwargs in CHECKPOINTS.items():
        quantize(fp16, mine / name, **kwargs)  # type: ignore[arg-type]
        torch.save(logits_of(mine / name), mine / f"{name}.logits.pt")
    return root


def rope_theta_of(config: object) -> float:
    params = getattr(config, "rope_parameters", None)  # 5.x
    return float(params["rope_theta"]) if isinstance(params, dict) else float(getattr(config, "rope_theta"))


def test_checkpoint_config_carries_both_versions_rope_fields(exchange: Path, record_property: Any) -> None:
    import hashlib

    from safetensors.torch import load_file

    for name in CHECKPOINTS:
        tensors = load_file(str(exchange / transformers.__version__ / name / "model.safetensors"))
        digest = hashlib.sha256(b"".join(tensors[k].numpy().tobytes() for k in sorted(tensors))).hexdigest()
        record_property(f"{name}_tensors_sha256", digest[:12])
        config = json.loads((exchange / transformers.__version__ / name / "config.json").read_text())
        assert config["rope_theta"] == 500000.0 and config["rope_scaling"]["rope_type"] == "llama3", name
        assert rope_theta_of(load_quantized(exchange / transformers.__version__ / name, device="cpu").model.config) \
            == 500000.0


def test_a_config_with_only_rope_parameters_loads_as_written(exchange: Path, tmp_path: Path) -> None:
    """What 5.x's ``save_pretrained`` writes (and other tools that write for 5.x): 4.x would run
    rope_theta=10000 without scaling and give other logits."""
    def as_5x_writes_it(config: dict[str, Any], _: Path) -> None:
        config["rope_parameters"] = {**config.pop("rope_scaling"), "rope_theta": config.pop("rope_theta")}

    copy = tiny.copy_checkpoint(exchange / transformers.__version__ / "awq-gemm", tmp_path / "five-style",
                                as_5x_writes_it)
    assert torch.equal(logits_of(copy), torch.load(exchange / transformers.__version__ / "awq-gemm.logits.pt"))


def test_checkpoints_of_every_other_version_are_bit_identical_and_load_alike(exchange: Path,
                                                                            record_property: Any) -> None:
    from safetensors.torch import load_file

    others = sorted(p for p in exchange.iterdir() if p.is_dir() and p.name != transformers.__version__)
    if not others:
        pytest.skip("no other transformers version wrote checkpoints here: scripts/run-tests.sh runs them all")
    mine = exchange / transformers.__version__
    for other in others:
        for name in CHECKPOINTS:
            ours, theirs = load_file(str(mine / name / "model.safetensors")), load_file(str(other / name / "model.safetensors"))
            assert ours.keys() == theirs.keys(), (other.name, name)
            for key in ours:
                assert torch.equal(ours[key], theirs[key]), (other.name, name, key)
            expected = torch.load(mine / f"{name}.logits.pt")
            loaded_here = logits_of(other / name)
            assert torch.equal(loaded_here, expected), (other.name, name)
        record_property(f"read_{other.name}", "bit-identical")
