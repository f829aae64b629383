"""Re-makes the table in docs/compatibility.md from the compatibility subset's own results.

For each transformers version: the tests marked ``stack`` (pytest -m stack) in that version's
environment (scripts/stack-env.sh), all versions sharing one checkpoint folder, so that each
reads and compares the checkpoints of the versions run before it. A version outside the range
the library declares gets the refusal it would get. Run from the repository root, CPU only:

    .venv/bin/python scripts/compat_table.py                     # the versions in the doc
    .venv/bin/python scripts/compat_table.py --versions 5.25.0   # one row, printed only
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from packaging.version import Version

from awq_kernel_select.stack import StackError, check_transformers

ROOT = Path(__file__).resolve().parent.parent

VERSIONS = ("4.45.2", "4.51.0", "4.51.3", "4.53.3", "4.56.2", "4.57.6", "5.25.0")
Q, S, A, B, C = ("tests/test_quantize_load.py", "tests/test_stack.py", "tests/test_attention.py",
                 "tests/test_bench.py", "tests/test_cli.py")
#: column -> the tests that make it (every one must pass for "ok")
COLUMNS: dict[str, tuple[str, ...]] = {
    "import awq, select": (f"{C}::test_detect_and_select_on_this_machine",
                           f"{S}::test_awq_imports_where_transformers_has_no_gelu_alias"),
    "quantize (awq gemm/gemv, rtn)": (f"{Q}::test_quantize_with_the_embedded_corpus",
                                      f"{Q}::test_gemm_checkpoint_and_its_gemv_conversion_give_identical_logits",
                                      f"{S}::test_checkpoint_config_carries_both_versions_rope_fields"),
    "load_quantized + forward, generate, fused": (f"{Q}::test_load_auto_matches_autoawqs_own_dequantized_weights",
                                                  f"{Q}::test_loaded_model_generates",
                                                  f"{Q}::test_fuse_layers_fuses_our_linears_and_keeps_the_logits"),
    "use_decode_attention vs SDPA": (f"{A}::test_model_decodes_with_the_kernel_as_with_sdpa",),
    "bench (CPU path)": (f"{B}::test_tiny_end_to_end_cpu_run", f"{S}::test_crop_cache_keeps_the_first_tokens"),
    "checkpoints across versions": (f"{S}::test_a_config_with_only_rope_parameters_loads_as_written",
                                    f"{S}::test_checkpoints_of_every_other_version_are_bit_identical_and_load_alike"),
}


def run_version(version: str, exchange: Path, xml: Path) -> None:
    env = {**os.environ, "AKS_STACK_EXCHANGE": str(exchange), "TRITON_INTERPRET": "1"}
    script = (f"source scripts/stack-env.sh {version} && "
              f"python -m pytest -q -p no:cacheprovider -m stack tests -o junit_family=legacy --junitxml={xml}")
    subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, check=False)


def results(xml: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """test node id -> (outcome or first line of its failure, recorded properties)."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        node = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
        props = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
        outcome = "ok"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = f"{tag}: {(found.get('message') or '').splitlines()[0][:120]}" if found.get("message") else tag
        out[node.split("[")[0]] = (outcome, props)
    return out


def row(version: str, exchange: Path, workdir: Path) -> list[str]:
    try:
        check_transformers(Version(version))
    except StackError as exc:
        return [f"refused: {exc}"] + [""] * (len(COLUMNS) - 1)
    xml = workdir / f"{version}.xml"
    run_version(version, exchange, xml)
    if not xml.is_file():
        return ["the environment could not be made: see the output above"] + [""] * (len(COLUMNS) - 1)
    found = results(xml)
    cells = []
    for tests in COLUMNS.values():
        outcomes = [found.get(t, ("not run", {}))[0] for t in tests]
        bad = [f"{t.split('::')[1]}: {o}" for t, o in zip(tests, outcomes) if o != "ok" and not o.startswith("skipped")]
        props = {k: v for t in tests for k, v in found.get(t, ("", {}))[1].items()}
        text = "; ".join(bad) if bad else "ok"
        if "rel_err_vs_sdpa" in props:
            text += f" (rel. err {props['rel_err_vs_sdpa']})"
        digests = sorted(v for k, v in props.items() if k.endswith("_sha256"))
        if digests:
            text += " (tensors " + "/".join(digests) + ")"
        read = sorted(k.removeprefix("read_") for k in props if k.startswith("read_"))
        if read:
            text += " (read " + ", ".join(read) + ": bit-identical)"
        cells.append(text)
    return cells


def markdown(rows: dict[str, list[str]]) -> str:
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = [f"Made {datetime.date.today().isoformat()} on commit {commit}, CPU, torch {torch.__version__}, "
             "kernels in Triton's interpreter; `.venv/bin/python scripts/compat_table.py`.", "",
             "| transformers | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for version, cells in rows.items():
        lines.append(f"| {version} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=list(VERSIONS))
    parser.add_argument("--out", type=Path, default=None, help="default: docs/compatibility.md when every version runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exchange = Path(tmp) / "exchange"
        exchange.mkdir()
        rows = {v: row(v, exchange, Path(tmp)) for v in args.versions}
    table = markdown(rows)
    print(table)
    out = args.out or (ROOT / "docs" / "compatibility.md" if args.versions == list(VERSIONS) else None)
    if out is not None:
        doc = out.read_text()
        start, end = "<!-- table: scripts/compat_table.py -->", "<!-- end of table -->"
        head, _, rest = doc.partition(start)
        _, _, tail = rest.partition(end)
        out.write_text(f"{head}{start}\n{table}{end}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
