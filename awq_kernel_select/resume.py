"""Resumable AWQ: each finished decoder block is kept on disk, so a killed ``quantize`` restarts at
the next block instead of the first.

AutoAWQ's quantizer walks the decoder blocks in order: for block i it runs the block on the
calibration activations (whose output is block i + 1's input), searches and applies the scales
(which touch only block i's own norms and linears), clips, and replaces the linears with packed
ones. After block i is packed, its state and the activations for block i + 1 are written to the
resume folder (``.NAME.resume`` beside the output), then a marker naming how many blocks are done,
each by write-then-rename. A later run with the same settings loads the finished blocks, takes
the saved activations and quantizes the rest; the result is bit-identical to an uninterrupted
run (the search is deterministic given its inputs). Different settings, or a model that changed,
discard the folder (and say so). The folder is removed once the checkpoint is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("awq_kernel_select")

MARKER = "done.json"


def resume_folder(output_dir: Path) -> Path:
    return output_dir.parent / f".{output_dir.name}.resume"


def digest(settings: dict[str, Any], calibration: list[Any]) -> str:
    """What must match for saved blocks to be reused: the settings and the calibration tokens."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for block in calibration:
        h.update(torch.as_tensor(block).numpy().tobytes())
    return h.hexdigest()


def _write(path: Path, save: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save(tmp)
    os.replace(tmp, path)


def prepare(folder: Path, key: str, reuse: bool = True) -> int:
    """Blocks already done in ``folder`` for these settings (0: none); a folder for other
    settings, or any with ``reuse=False``, is discarded."""
    marker = folder / MARKER
    if reuse and marker.is_file():
        try:
            state = json.loads(marker.read_text())
            if state.get("key") == key and int(state.get("blocks", 0)) > 0:
                return int(state["blocks"])
        except (OSError, ValueError):
            pass
        log.warning("discarding %s: saved blocks of a run with other settings or another model", folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(json.dumps({"key": key, "blocks": 0}))
    return 0


def save_block(folder: Path, key: str, index: int, block: nn.Module, next_inputs: torch.Tensor) -> None:
    """Block ``index`` is packed: keep its state and block ``index + 1``'s input, then mark it done."""
    state = {k: v.detach().cpu() for k, v in block.state_dict().items()}
    _write(folder / f"block-{index}.pt", lambda p: torch.save(state, p))
    _write(folder / f"inputs-{index + 1}.pt", lambda p: torch.save(next_inputs.detach().cpu(), p))
    _write(folder / MARKER, lambda p: p.write_text(json.dumps({"key": key, "blocks": index + 1})))
    (folder / f"inputs-{index}.pt").unlink(missing_ok=True)


def resumable_quantizer(base: Any, folder: Path, key: str, blocks_done: int) -> type:
    """``base`` (AutoAWQ's quantizer class) saving each packed block to ``folder`` and starting
    after the ``blocks_done`` saved ones."""
    from awq.modules.linear import WQLinear_GEMM, WQLinear_GEMV
    from awq.utils.module import exclude_layers_to_not_quantize, get_named_linears, set_op_by_name

    packed_classes = {"gemm": WQLinear_GEMM, "gemv": WQLinear_GEMV}

    class ResumableAwqQuantizer(base):  # type: ignore[misc]
        modules: Any  # AutoAWQ's: the decoder blocks, the activations entering the current one
        inps: Any
        _all_blocks: list[nn.Module]

        def quantize(self) -> None:
            blocks = self.modules
            self._all_blocks = list(blocks)
            if blocks_done:
                for index in range(blocks_done):
                    self._restore(index)
                device = self.inps.device
                self.inps = torch.load(folder / f"inputs-{blocks_done}.pt").to(device)
                log.warning("resuming: blocks 1-%d of %d were saved by an interrupted run (%s); quantizing from "
                            "block %d", blocks_done, len(blocks), folder, blocks_done + 1)
                self.modules = blocks[blocks_done:]
            try:
                super().quantize()
            finally:
                self.modules = blocks

        def _restore(self, index: int) -> None:
            block = self._all_blocks[index]
            named = exclude_layers_to_not_quantize(get_named_linears(block), self.modules_to_not_convert)
            for name, linear in named.items():
                set_op_by_name(block, name, packed_classes[str(self.version).lower()].from_linear(
                    linear, self.w_bit, self.group_size, init_only=True))
            block.load_state_dict(torch.load(folder / f"block-{index}.pt"))

        def _apply_quant(self, module: nn.Module, named_linears: dict[str, nn.Linear]) -> None:
            super()._apply_quant(module, named_linears)
            index = next(i for i, b in enumerate(self._all_blocks) if b is module)
            save_block(folder, key, index, module, self.inps)

    return ResumableAwqQuantizer
