"""export() and compressed-tensors checkpoints: lossless both ways, checked against the
compressed-tensors library itself where it imports (transformers 4.53+: the 5.x compatibility
environment of scripts/run-tests.sh), and loaded onto this library's kernels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from awq_kernel_select import layouts as L
from awq_kernel_select.checkpoint import CheckpointError, read_checkpoint
from awq_kernel_select.cli import main
from awq_kernel_select.compressed import SchemeError, from_compressed, to_compressed
from awq_kernel_select.export import ExportError, export
from awq_kernel_select.load import load_quantized
from awq_kernel_select.quantize import quantize

import tiny

IDS = torch.tensor([[1, 17, 40, 99, 3, 250, 7, 64]])


@pytest.fixture(scope="module")
def ckpts(fp16_dir: Path) -> dict[str, Path]:
    """RTN checkpoints of the tiny model: GEMM, GEMV, and GEMM without zero points."""
    root = fp16_dir.parent / "export"
    out = {}
    for name, kwargs in {"gemm": dict(version="gemm"), "gemv": dict(version="gemv"),
                         "sym": dict(version="gemm", zero_point=False)}.items():
        out[name] = root / name
        if not out[name].exists():
            quantize(fp16_dir, out[name], method="rtn", group_size=32, **kwargs)  # type: ignore[arg-type]
            tiny.make_tokenizer(320).save_pretrained(out[name])
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        found.update(load_file(str(f)))
    return found


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("layout", ["gemm", "gemv"])
@pytest.mark.parametrize("g", [32, 64, 128])
def test_one_layer_round_trips_bit_for_bit(layout: str, g: int) -> None:
    gen = torch.Generator().manual_seed(g)
    packed = L.pack(*L.quantize_rtn(torch.randn(48, 256, generator=gen), g), g, layout)
    ct = to_compressed(packed, symmetric=False)
    assert ct["weight_packed"].shape == (48, 32) and ct["weight_zero_point"].shape == (6, 256 // g)
    back = from_compressed(ct, g, layout)
    assert all(torch.equal(getattr(back, t), getattr(packed, t)) for t in ("qweight", "qzeros", "scales"))
    # the format's own definition: nibble i of weight_packed[n, j] is q[n, 8j + i], stored as q
    q, z, _ = L.integers(packed)
    assert int((ct["weight_packed"][5, 3] >> 8) & 0xF) == int(q[5, 26])
    assert int((ct["weight_zero_point"][1, 0] >> 4) & 0xF) == int(z[9, 0])


def test_whole_checkpoints_round_trip_and_load_to_the_same_logits(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """AutoAWQ GEMM and GEMV -> compressed-tensors -> AutoAWQ GEMM: every tensor bit for bit (a
    GEMV source comes back as its lossless GEMM conversion); the export loads onto our kernels
    with the source's logits exactly; tokenizer and config carried over."""
    reference = load_quantized(ckpts["gemm"], device="cpu").model(IDS).logits
    for name in ("gemm", "gemv", "sym"):
        ct, back = tmp_path / f"{name}-ct", tmp_path / f"{name}-back"
        report = export(ckpts[name], ct, progress=False)
        assert report.layers == 14 and report.source_format == f"autoawq {'gemv' if name == 'gemv' else 'gemm'}"
        config = json.loads((ct / "config.json").read_text())["quantization_config"]
        weights = config["config_groups"]["config_group_0"]["weights"]
        assert config["quant_method"] == "compressed-tensors" and weights["symmetric"] == (name == "sym")
        assert (ct / "tokenizer.json").is_file()
        assert any(k.endswith("weight_zero_point") for k in tensors(ct)) == (name != "sym")
        export(ct, back, format="autoawq-gemm", progress=False)
        if name != "gemv":
            assert same(tensors(back), tensors(ckpts[name]))
        else:
            gemm_twin = tmp_path / "gemv-as-gemm"
            export(ckpts["gemv"], gemm_twin, format="autoawq-gemm", progress=False)
            assert same(tensors(back), tensors(gemm_twin))
        info = read_checkpoint(ct)
        assert info.format == "compressed-tensors" and info.zero_point == (name != "sym")
        loaded = load_quantized(ct, device="cpu")
        assert loaded.awq_source_format == "compressed-tensors"
        if name != "sym":
            assert torch.equal(loaded.model(IDS).logits, reference)


def test_export_checks_first_and_writes_nothing_on_failure(ckpts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="format='gguf'"):
        export(ckpts["gemm"], tmp_path / "x", format="gguf")  # type: ignore[arg-type]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export(ckpts["gemm"], tmp_path / "full")
    with pytest.raises(ExportError, match="is the source checkpoint"):
        export(ckpts["gemm"], ckpts["gemm"], overwrite=True)
    broken = tiny.copy_checkpoint(ckpts["gemm"], tmp_path / "broken",
                                  lambda c, d: c["quantization_config"].update(version="marlin"))
    with pytest.raises(ExportError, match="version is 'marlin'"):
        export(broken, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert main(["export", str(ckpts["gemm"]), str(tmp_path / "cli")]) == 0
    assert read_checkpoint(tmp_path / "cli").format == "compressed-tensors"


@pytest.mark.parametrize("edit,match", [
    (lambda q: q["config_groups"]["config_group_0"].update(format="float-quantized"), "format is 'float-quantized'"),
    (lambda q: q["config_groups"]["config_group_0"].update(input_activations={"num_bits": 8}), "W4A8/W8A8"),
    (lambda q: q["config_groups"]["config_group_0"]["weights"].update(num_bits=8), "num_bits is 8"),
    (lambda q: q["config_groups"]["config_group_0"]["weights"].update(actorder="group"), "activation reordering"),
    (lambda q: q["config_groups"]["config_group_0"]["weights"].update(strategy="channel"), "strategy is 'channel'"),
    (lambda q: q.update(config_groups={}), "config_groups is missing or empty"),
])
def test_schemes_this_library_does_not_run_are_named(ckpts: dict[str, Path], tmp_path: Path, edit, match: str) -> None:  # type: ignore[no-untyped-def]
    ct = tmp_path / "ct"
    export(ckpts["gemm"], ct, progress=False)
    tiny.copy_checkpoint(ct, tmp_path / "bad", lambda c, d: edit(c["quantization_config"]))
    with pytest.raises(CheckpointError, match=match) as caught:
        load_quantized(tmp_path / "bad", device="cpu")
    assert "config.json: quantization_config.config_groups" in str(caught.value) or "config_groups is missing" in str(caught.value)


def test_a_damaged_compressed_layer_is_named(ckpts: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    ct = tmp_path / "ct"
    export(ckpts["gemm"], ct, progress=False)
    found = tensors(ct)
    name = "model.layers.0.mlp.down_proj"
    found[f"{name}.weight_packed"] = found[f"{name}.weight_packed"][:, :-1].contiguous()
    save_file(found, str(ct / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportError, match=f"{name}.weight_packed is"):
        load_quantized(ct, device="cpu")
    with pytest.raises(SchemeError, match="fp16 cannot represent exactly"):
        packed = L.pack(*L.quantize_rtn(torch.randn(16, 64), 32), 32, "gemm")
        ct_layer = to_compressed(packed, symmetric=False)
        ct_layer["weight_scale"] = ct_layer["weight_scale"].float() * (1 + 2**-20)
        from_compressed(ct_layer, 32, "gemm", "layer")


# --- against the compressed-tensors library (imports on transformers 4.53+) ------------------------

@pytest.mark.stack
def test_our_export_equals_compressed_tensors_own_converter(ckpts: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("compressed_tensors", reason="compressed-tensors needs transformers 4.53+")
    from compressed_tensors.entrypoints.convert import convert_checkpoint
    from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter

    convert_checkpoint(str(ckpts["gemm"]), str(tmp_path / "theirs"),
                       AutoAWQConverter.from_pretrained(str(ckpts["gemm"])), device="cpu")
    export(ckpts["gemm"], tmp_path / "ours", progress=False)
    assert same(tensors(tmp_path / "ours"), tensors(tmp_path / "theirs"))
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())["quantization_config"]
    theirs = json.loads((tmp_path / "theirs" / "config.json").read_text())["quantization_config"]
    assert ours["config_groups"] == theirs["config_groups"] and ours["format"] == theirs["format"]


@pytest.mark.stack
@pytest.mark.parametrize("symmetric", [False, True])
def test_compressed_tensors_decompresses_our_export_to_our_reference(ckpts: dict[str, Path], tmp_path: Path,
                                                                    symmetric: bool) -> None:
    """The library's own decompression of our tensors (PackedQuantizationCompressor, the scheme read
    from our config) gives exactly our dequantization of the source's packed buffers."""
    pytest.importorskip("compressed_tensors", reason="compressed-tensors needs transformers 4.53+")
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig

    source = ckpts["sym" if symmetric else "gemm"]
    export(source, tmp_path / "ct", progress=False)
    ct, awq = tensors(tmp_path / "ct"), tensors(source)
    config = QuantizationConfig.model_validate(json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"])
    scheme = config.config_groups["config_group_0"]
    for name in ("model.layers.1.self_attn.o_proj", "model.layers.0.mlp.down_proj"):
        local = {s: ct[f"{name}.{s}"] for s in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")
                 if f"{name}.{s}" in ct}
        theirs = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
        n, k = local["weight_shape"].tolist()
        packed = L.PackedWeights("gemm", awq[f"{name}.qweight"], awq[f"{name}.qzeros"], awq[f"{name}.scales"], k, n, 32)
        assert theirs.dtype == torch.float16 and torch.equal(theirs, L.dequantize(packed, torch.float16))


@pytest.mark.stack
def test_a_checkpoint_the_compressed_tensors_library_wrote_loads_onto_our_kernels(fp16_dir: Path, tmp_path: Path) -> None:
    """Not made by our exporter: compressed-tensors' own compressor packs a model it quantized;
    load_quantized runs it and matches the library's decompressed weights."""
    pytest.importorskip("compressed_tensors", reason="compressed-tensors needs transformers 4.53+")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 QuantizationStatus, apply_quantization_config)
    from compressed_tensors.quantization.lifecycle import initialize_module_for_quantization  # noqa: F401
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(fp16_dir), dtype=torch.float16)
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=False, group_size=32, strategy="group"))
    config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"], format="pack-quantized",
                                quantization_status=QuantizationStatus.CALIBRATION)
    apply_quantization_config(model, config)
    from compressed_tensors.quantization.utils import calculate_qparams

    for module in model.modules():
        if hasattr(module, "weight_scale"):
            w = module.weight.data.float().reshape(module.weight.shape[0], -1, 32)
            scale, zero = calculate_qparams(w.amin(dim=2), w.amax(dim=2), module.quantization_scheme.weights)
            module.weight_scale.data.copy_(scale)
            module.weight_zero_point.data.copy_(zero)
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    compressor.compress_model(model)
    model.save_pretrained(tmp_path / "theirs")
    compressor.update_config(str(tmp_path / "theirs"))
    tiny.make_tokenizer(model.config.vocab_size).save_pretrained(tmp_path / "theirs")
    ct = tensors(tmp_path / "theirs")
    assert any(k.endswith("weight_packed") for k in ct)
    ours = load_quantized(tmp_path / "theirs", device="cpu")
    from awq_kernel_select.modules import AWQLinear

    name = "model.layers.0.mlp.up_proj"
    layer = ours.model.get_submodule(name)
    assert isinstance(layer, AWQLinear)
    reference = from_compressed({s: ct[f"{name}.{s}"] for s in ("weight_packed", "weight_scale", "weight_zero_point",
                                                                 "weight_shape")}, 32, "gemm")
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    shape = torch.Size(ct[f"{name}.weight_shape"].tolist())
    q = unpack_from_int32(ct[f"{name}.weight_packed"], 4, shape).to(torch.float64)
    z = unpack_from_int32(ct[f"{name}.weight_zero_point"], 4, torch.Size([shape[0], shape[1] // 32]),
                          packed_dim=0).to(torch.float64)
    s = ct[f"{name}.weight_scale"].to(torch.float64)
    theirs = (q - z.repeat_interleave(32, dim=1)) * s.repeat_interleave(32, dim=1)
    assert torch.equal(layer.dequantize(torch.float64), theirs)
    assert torch.equal(L.dequantize(reference, torch.float64), theirs)
    assert torch.isfinite(ours.model(IDS).logits).all()


def transformers_vs_ours(source: Path, tmp_path: Path) -> float:
    """Relative difference of the logits transformers gives for ``source``'s compressed-tensors
    export (loaded natively on the CPU) and those of load_quantized."""
    pytest.importorskip("compressed_tensors", reason="compressed-tensors needs transformers 4.53+")
    from transformers import AutoModelForCausalLM

    export(source, tmp_path / "ct", progress=False)
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ct"), dtype=torch.float16)
    ours = load_quantized(tmp_path / "ct", device="cpu").model
    with torch.no_grad():
        a, b = theirs(IDS).logits.double(), ours(IDS).logits.double()
    return float((a - b).norm() / b.norm())


@pytest.mark.stack
@pytest.mark.xfail(strict=True, raises=RuntimeError, reason=(
    "transformers 5.25 with compressed-tensors 0.20.1 expects weight_zero_point unpacked [N, K/G] when it "
    "loads a pack-quantized checkpoint on the CPU; the output of compressed-tensors' own AutoAWQConverter "
    "fails the same way (test_our_export_equals_compressed_tensors_own_converter: ours is bit-identical)"))
def test_transformers_reads_our_export_with_the_same_logits(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """transformers (5.x here, with compressed-tensors installed) loads the export natively on the
    CPU; its logits match load_quantized's within fp16 rounding."""
    assert transformers_vs_ours(ckpts["gemm"], tmp_path) < 2e-3


@pytest.mark.stack
def test_transformers_reads_our_symmetric_export_with_the_same_logits(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """Without zero points transformers 5 (with compressed-tensors) loads the export natively on the
    CPU; its logits match load_quantized's within fp16 rounding (engines.py's transformers row)."""
    assert transformers_vs_ours(ckpts["sym"], tmp_path) < 2e-3
