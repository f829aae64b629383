"""quantize() and load_quantized() on tiny Llama models built in the test (no downloads)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch

from awq_kernel_select.calibration import CalibrationError, load_preset, prepare_calibration
from awq_kernel_select.load import CheckpointError, kernels_in, load_quantized, read_checkpoint, resolve_device
from awq_kernel_select.modules import AKSLinearGEMM, AKSLinearGEMV, AWQLinear
from awq_kernel_select.quantize import QuantizeError, quantize
from awq_kernel_select.stack import dtype_kwargs

import tiny

FAST = dict(group_size=64, max_calib_samples=8, max_calib_seq_len=64)


@pytest.fixture(scope="module")
def gemm_ckpt(fp16_dir: Path) -> Path:
    out = fp16_dir.parent / "q-gemm"
    quantize(fp16_dir, out, version="gemm", **FAST)
    return out


@pytest.fixture(scope="module")
def gemv_ckpt(fp16_dir: Path) -> Path:
    out = fp16_dir.parent / "q-gemv"
    quantize(fp16_dir, out, version="gemv", **FAST)
    return out


def logits(wrapper, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return wrapper.model(ids).logits.float()


IDS = torch.tensor([[1, 17, 40, 99, 3, 250, 7, 64]])


# --- quantize ------------------------------------------------------------------------------------


@pytest.mark.stack
def test_quantize_with_the_embedded_corpus(fp16_dir: Path, tmp_path: Path) -> None:
    report = quantize(fp16_dir, tmp_path / "out", **FAST)
    assert report.calibration_source == "preset:prose" and report.calibration_tokens_used == 8 * 64
    assert report.calibration_samples_used >= 2 and report.layers == 2 and report.linears == 14
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["quantization_config"] == {  # exactly AutoAWQ's to_transformers_dict()
        "quant_method": "awq", "zero_point": True, "group_size": 64, "bits": 4, "version": "gemm",
        "modules_to_not_convert": None,
    }
    assert (tmp_path / "out" / "tokenizer.json").is_file()
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temp folders left


@pytest.mark.stack
def test_load_auto_matches_autoawqs_own_dequantized_weights(gemm_ckpt: Path, fp16_dir: Path) -> None:
    from awq.utils.packing_utils import dequantize_gemm
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    wrapper = load_quantized(gemm_ckpt, kernel="auto", device="cpu")
    assert type(wrapper).__name__ == "LlamaAWQForCausalLM"  # what from_quantized returns
    assert set(wrapper.awq_kernel_layers.values()) == {"aks_gemm:torch"}
    assert wrapper.awq_kernel_selection.name == "torch_dequant"
    # reference: AutoAWQ's own dequantization, in an fp32 copy of the model
    state = load_file(str(gemm_ckpt / "model.safetensors"))
    ref_model = AutoModelForCausalLM.from_pretrained(fp16_dir, **dtype_kwargs(torch.float32))
    ref_state = ref_model.state_dict()
    for key in [k for k in state if k.endswith(".qweight")]:
        prefix = key[: -len(".qweight")]
        w = dequantize_gemm(state[key], state[prefix + ".qzeros"], state[prefix + ".scales"], 4, 64)
        ref_state[prefix + ".weight"] = w.t().float()
    for key, value in state.items():
        if not key.endswith((".qweight", ".qzeros", ".scales")):
            ref_state[key] = value.float()
    ref_model.load_state_dict(ref_state)
    ours, ref = logits(wrapper, IDS), ref_model(IDS).logits.float().detach()
    assert float((ours - ref).norm() / ref.norm()) < 2e-3


@pytest.mark.stack
def test_gemm_checkpoint_and_its_gemv_conversion_give_identical_logits(gemm_ckpt: Path, gemv_ckpt: Path) -> None:
    as_gemm = load_quantized(gemm_ckpt, device="cpu")
    as_gemv = load_quantized(gemm_ckpt, device="cpu", layout="gemv")
    native_gemv = load_quantized(gemv_ckpt, device="cpu")
    assert all(isinstance(m, AKSLinearGEMV) for m in as_gemv.model.modules() if isinstance(m, AWQLinear))
    a, b, c = logits(as_gemm, IDS), logits(as_gemv, IDS), logits(native_gemv, IDS)
    assert torch.equal(a, b)  # lossless conversion: bit-identical
    assert torch.equal(a, c)  # AutoAWQ wrote the same integers in both versions
    back = {n: m.to_layout("gemm") for n, m in as_gemv.model.named_modules() if isinstance(m, AKSLinearGEMV)}
    original = {n: m for n, m in as_gemm.model.named_modules() if isinstance(m, AKSLinearGEMM)}
    for name, module in back.items():
        for buf in ("qweight", "qzeros", "scales"):
            assert torch.equal(getattr(module, buf), getattr(original[name], buf)), (name, buf)


@pytest.mark.stack
def test_fuse_layers_fuses_our_linears_and_keeps_the_logits(gemm_ckpt: Path) -> None:
    """``fuse_layers=True`` (from_quantized's flag) fuses q/k/v and gate/up instead of being ignored."""
    plain = load_quantized(gemm_ckpt, device="cpu")
    fused = load_quantized(gemm_ckpt, device="cpu", fuse_layers=True)
    assert fused.awq_fuse_report.fused and not fused.awq_fuse_report.skipped
    assert any(name.endswith("qkv_proj.linear") for name in kernels_in(fused.model))
    a, b = logits(plain, IDS).double(), logits(fused, IDS).double()
    assert float((a - b).norm() / a.norm()) < 1e-3


@pytest.mark.stack
def test_loaded_model_generates(gemm_ckpt: Path) -> None:
    wrapper = load_quantized(gemm_ckpt, device=torch.device("cpu"))
    out = wrapper.generate(IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=4, do_sample=False,
                           pad_token_id=0)
    assert out.shape == (1, IDS.shape[1] + 4)


def test_quantize_a_loaded_model_inside_a_training_script(tmp_path: Path) -> None:
    model = tiny.make_llama(seed=3)
    report = quantize(model, tmp_path / "q", tokenizer=tiny.make_tokenizer(), method="rtn", group_size=64)
    assert report.method == "rtn" and report.calibration_source is None
    assert kernels_in(load_quantized(tmp_path / "q", device="cpu").model)


# --- bad input: a clear error, and no output folder ------------------------------------------------


class NothingTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return []


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(calibration=[]), CalibrationError, "calibration list is empty"),
        (dict(calibration=["hi", "there"]), CalibrationError, "fewer than one block"),
        (dict(calibration=["some text"] * 4, tokenizer=NothingTokenizer()), CalibrationError, "no tokens"),
        (dict(calibration="/nonexistent/calib.txt"), CalibrationError, "does not exist"),
        (dict(calibration=["a", [1, 2]]), CalibrationError, "not a mix"),
        (dict(w_bit=8), QuantizeError, "only 4-bit"),
        (dict(group_size=48), QuantizeError, r"does not divide layers\.0\.self_attn\.q_proj\.in_features=64.*\[32, 64\]"),
        (dict(group_size=12), QuantizeError, "multiple of 8"),
        (dict(version="marlin"), QuantizeError, "writes 'gemm' or 'gemv'"),
        (dict(method="gptq"), QuantizeError, "use 'awq' or 'rtn'"),
        (dict(zero_point=False), QuantizeError, "zero_point=False"),
    ],
)
def test_bad_input_fails_fast_and_writes_nothing(fp16_dir: Path, tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    args = {**FAST, **kwargs}
    with pytest.raises(error, match=match):
        quantize(fp16_dir, tmp_path / "out", **args)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten_unless_asked(fp16_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(QuantizeError, match="not empty"):
        quantize(fp16_dir, out, method="rtn", group_size=64)
    assert (out / "keep.txt").read_text() == "mine"
    quantize(fp16_dir, out, method="rtn", group_size=64, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_a_crash_while_writing_leaves_no_folder(fp16_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from awq.models.base import BaseAWQForCausalLM

    def boom(self, save_dir: str, **kwargs) -> None:
        (Path(save_dir) / "half-written.safetensors").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(BaseAWQForCausalLM, "save_quantized", boom)
    with pytest.raises(OSError, match="disk full"):
        quantize(fp16_dir, tmp_path / "out", method="rtn", group_size=64)
    assert list(tmp_path.iterdir()) == []


def test_long_samples_are_split_not_dropped() -> None:
    tok = tiny.make_tokenizer()
    long_text = " ".join(load_preset("prose")[:3])
    calib = prepare_calibration([long_text], tok, max_samples=4, seq_len=64)
    assert len(calib.blocks) == 4 and all(len(b) == 64 for b in calib.blocks)
    assert calib.samples_used == 1 and calib.tokens_used == 256


# --- loading bad checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c, d: c["quantization_config"].update(version="gemx"), r"quantization_config\.version is 'gemx'"),
        (lambda c, d: c["quantization_config"].update(bits=8), r"quantization_config\.bits is 8"),
        (lambda c, d: c.pop("quantization_config"), "no 'quantization_config'"),
        (lambda c, d: (d / "model.safetensors").unlink(), "has no weights"),
        (lambda c, d: c["quantization_config"].update(group_size=32), r"model\.safetensors: .*qweight|qzeros|scales.* has shape"),
    ],
)
def test_bad_checkpoints_name_the_file_and_field(gemm_ckpt: Path, tmp_path: Path, edit, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        load_quantized(tiny.copy_checkpoint(gemm_ckpt, tmp_path / "bad", edit), device="cpu")


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_checkpoint(tmp_path)


def _with_auto_map(ckpt: Path, folder: Path) -> tuple[Path, Path]:
    """A copy of ``ckpt`` whose config.json maps AutoConfig to a Python file in the checkpoint
    that leaves a marker file when it runs."""
    marker = folder.parent / "checkpoint-code-ran"

    def add_auto_map(config: dict, copy: Path) -> None:
        (copy / "evil.py").write_text(
            f"open({str(marker)!r}, 'w').write('ran')\n"
            "from transformers import LlamaConfig\n"
            "class EvilConfig(LlamaConfig):\n    pass\n")
        config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}

    return tiny.copy_checkpoint(ckpt, folder, add_auto_map), marker


def test_checkpoint_code_does_not_run_without_consent(gemm_ckpt: Path, tmp_path: Path) -> None:
    copy, marker = _with_auto_map(gemm_ckpt, tmp_path / "remote")
    wrapper = load_quantized(copy, device="cpu")
    assert not marker.exists() and type(wrapper.model.config).__name__ == "LlamaConfig"


def test_autoawqs_loader_is_told_not_to_run_checkpoint_code(gemm_ckpt: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """AutoAWQ's ``from_quantized`` defaults ``trust_remote_code`` to True: it is passed False
    unless the caller says otherwise."""
    from awq import AutoAWQForCausalLM

    from awq_kernel_select import AutoAWQRunner, KernelSpec, register_kernel
    from awq_kernel_select.policy import reset_default_table

    seen: list[dict] = []
    def from_quantized(cls: type, path: str, **kwargs: object) -> object:
        seen.append(kwargs)
        return SimpleNamespace(model=torch.nn.Module())

    monkeypatch.setattr(AutoAWQForCausalLM, "from_quantized", classmethod(from_quantized))
    register_kernel(KernelSpec(name="autoawq_on_cpu", layout="gemm", devices=("cpu",), priority=999,
                               runner=AutoAWQRunner(), source="test"))
    try:
        load_quantized(gemm_ckpt, device="cpu")
        assert seen[-1]["trust_remote_code"] is False
        load_quantized(gemm_ckpt, device="cpu", trust_remote_code=True)
        assert seen[-1]["trust_remote_code"] is True
    finally:
        reset_default_table()


def test_a_row_of_ones_own_loads_a_checkpoint_through_its_runner(gemm_ckpt: Path) -> None:
    """A user's row for a new capability, run by the plain-torch path under a new name: the
    selection picks it and load_quantized calls its runner, knowing no row by name."""
    from awq_kernel_select import KernelSpec, LoadRequest, OursRunner, register_kernel
    from awq_kernel_select.policy import reset_default_table

    calls: list[LoadRequest] = []

    def my_runner(request: LoadRequest) -> object:
        calls.append(request)
        return OursRunner(path="torch")(request)

    register_kernel(KernelSpec(name="my_cpu_path", layout="gemv", devices=("cpu",), priority=500,
                               runner=my_runner, source="test"))
    try:
        wrapper = load_quantized(gemm_ckpt, device="cpu")
    finally:
        reset_default_table()
    assert wrapper.awq_kernel_selection.name == "my_cpu_path" and calls[0].checkpoint.version == "gemm"
    assert set(wrapper.awq_kernel_layers.values()) == {"aks_gemv:torch"}  # the row's layout, converted
    reference = load_quantized(gemm_ckpt, device="cpu")
    assert torch.equal(logits(wrapper, IDS), logits(reference, IDS))


def test_load_knows_no_kernel_by_name() -> None:
    """No comparison with, and no table keyed by, a row's name: the row's runner decides."""
    import ast
    import inspect

    from awq_kernel_select import DEFAULT_TABLE
    from awq_kernel_select import load as load_module

    names = {row.name for row in DEFAULT_TABLE}
    for node in ast.walk(ast.parse(inspect.getsource(load_module))):
        if isinstance(node, (ast.Compare, ast.Dict, ast.Set, ast.Tuple, ast.List)):
            literals = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            assert not literals & names, ast.unparse(node)


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match="not supported"):
        resolve_device("mps")


# --- AutoAWQ's CPU corruption (issue 7): fails on stock AutoAWQ, passes with ours --------------------


def _scale_search(quantizer_cls) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 64, bias=False).half().requires_grad_(False)
    before = linear.weight.detach().clone()
    q = quantizer_cls.__new__(quantizer_cls)
    q.w_bit, q.group_size, q.zero_point, q.duo_scaling = 4, 64, True, True
    q.n_parallel_calib_samples, q.max_chunk_memory = None, 1 << 30
    x = torch.randn(16, 64).half()
    q._compute_best_scale(x, linear.weight.abs().mean(0), x.abs().mean(0), linear, [linear],
                          linear(x), {})
    return before, linear.weight.detach()


def test_stock_autoawq_corrupts_weights_on_cpu_and_ours_does_not() -> None:
    from awq.quantize.quantizer import AwqQuantizer

    from awq_kernel_select.quantize import _cpu_safe_quantizer_cls

    before, after = _scale_search(AwqQuantizer)
    assert not torch.equal(before, after)  # the bug: the restored weights are the scaled ones
    before, after = _scale_search(_cpu_safe_quantizer_cls())
    assert torch.equal(before, after)


def test_autoawq_kernel_on_a_converted_checkpoint(gemv_ckpt: Path, gemm_ckpt: Path) -> None:
    """A row of AutoAWQ's that reads the other layout gets converted buffers in AutoAWQ's class."""
    from awq_kernel_select.runners import hand_to_autoawq

    wrapper = load_quantized(gemv_ckpt, device="cpu", layout="gemm")
    hand_to_autoawq(wrapper.model, "WQLinear_GEMM")
    assert set(kernels_in(wrapper.model).values()) == {"autoawq_gemm"}
    theirs = {k: v for k, v in wrapper.model.state_dict().items() if k.endswith(("qweight", "qzeros", "scales"))}
    ours = {k: v for k, v in load_quantized(gemm_ckpt, device="cpu").model.state_dict().items()
            if k.endswith(("qweight", "qzeros", "scales"))}
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_the_custom_row_example_loads_a_checkpoint_onto_its_row(gemm_ckpt: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "examples" / "custom_policy_row.py"), str(gemm_ckpt)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"loading {gemm_ckpt} (gemm) for my_next_gen" in done.stdout and "aks_gemm:torch" in done.stdout
