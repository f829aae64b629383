"""Calibration text shipped with the library, and validation of user calibration input.

Presets (``awq_kernel_select/calibration/data``), both taken from CPython 3.11.7 under the
Python Software Foundation License (``data/LICENSE-PSF.txt``):

* ``prose``: every other topic of ``pydoc_data.topics`` (the language reference's prose); the
  other half is held out for accuracy measurements;
* ``code``: the source of twelve standard-library modules (textwrap, fractions, heapq, bisect,
  shlex, string, colorsys, calendar, difflib, statistics, graphlib, ipaddress), cut at top-level
  definitions.

Samples are separated by a form feed on a line of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence

Preset = Literal["prose", "code"]
PRESETS: tuple[Preset, ...] = ("prose", "code")
SEPARATOR = "\n\n\f\n\n"


class CalibrationError(ValueError):
    """Calibration input that cannot work; the message says what to change."""


def load_preset(name: str) -> list[str]:
    if name not in PRESETS:
        raise CalibrationError(f"unknown calibration preset {name!r}; use one of {', '.join(PRESETS)}")
    text = resources.files(__package__).joinpath("data").joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return [s for s in text.split(SEPARATOR) if s.strip()]


@dataclass(frozen=True)
class CalibrationSet:
    """Token blocks ready for AutoAWQ, and an account of what was used and dropped."""

    blocks: list[list[int]]  # each exactly ``block_len`` tokens
    source: str
    samples_given: int
    samples_used: int
    samples_empty: int
    tokens_used: int
    tokens_unused: int  # tokens of the input left out (beyond max_samples blocks, or a last partial block)
    block_len: int


def prepare_calibration(
    calibration: Sequence[str] | Sequence[Sequence[int]] | str | Path | None,
    tokenizer: Any,
    *,
    max_samples: int = 128,
    seq_len: int = 512,
    preset: str = "prose",
) -> CalibrationSet:
    """Tokenize and cut calibration input into ``max_samples`` blocks of ``seq_len`` tokens.

    ``calibration`` is a list of texts, a list of token-id lists, a path to a text file (one
    sample per paragraph, blank-line separated), or None for the shipped ``preset``. Unlike
    AutoAWQ, long samples are split, not dropped; anything that cannot yield one full block
    fails here, before any model work, with a message that says what to change.
    """
    if seq_len < 1 or max_samples < 1:
        raise CalibrationError(f"seq_len and max_samples must be >= 1 (got {seq_len}, {max_samples})")
    source: str
    if calibration is None:
        texts: list[str] | None = load_preset(preset)
        source = f"preset:{preset}"
        ids_list: list[list[int]] = []
    elif isinstance(calibration, (str, Path)):
        path = Path(calibration)
        if not path.is_file():
            raise CalibrationError(
                f"calibration file {path} does not exist (to pass one text, wrap it in a list: [text])"
            )
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CalibrationError(f"calibration file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}): "
                                   "save it as UTF-8, or pass the texts as a list of str") from exc
        texts = [p for p in raw.replace("\r\n", "\n").split("\n\n") if p.strip()]
        source = f"file:{path}"
        ids_list = []
    else:
        items = list(calibration)
        if not items:
            raise CalibrationError("the calibration list is empty: give texts, token-id lists, or None for the shipped preset")
        if all(isinstance(i, str) for i in items):
            texts, source, ids_list = [str(i) for i in items], "texts", []
        elif all(isinstance(i, (list, tuple)) and all(isinstance(t, int) for t in i) for i in items):
            texts, source = None, "token ids"
            ids_list = [list(i) for i in items]  # type: ignore[arg-type]
        else:
            raise CalibrationError("calibration must be all texts or all lists of token ids, not a mix")
    if texts is not None:
        if tokenizer is None:
            raise CalibrationError("text calibration needs a tokenizer: pass tokenizer=...")
        ids_list = [list(tokenizer.encode(t.strip(), add_special_tokens=False)) for t in texts]
    given = len(ids_list)
    empty = sum(1 for ids in ids_list if not ids)
    if empty == given:
        raise CalibrationError(
            f"the tokenizer produced no tokens from any of the {given} calibration samples: check the tokenizer and the text"
        )
    stream = [t for ids in ids_list for t in ids]
    if len(stream) < seq_len:
        raise CalibrationError(
            f"calibration has {len(stream)} tokens, fewer than one block of seq_len={seq_len}: "
            f"add text or lower max_calib_seq_len to at most {len(stream)}"
        )
    n_blocks = min(max_samples, len(stream) // seq_len)
    stride = len(stream) // n_blocks  # spread the blocks over the whole input, for variety
    starts = [i * stride for i in range(n_blocks)]
    blocks = [stream[s:s + seq_len] for s in starts]
    used = n_blocks * seq_len
    # samples that contributed at least one token to the blocks
    bounds, total = [], 0
    for ids in ids_list:
        bounds.append((total, total + len(ids)))
        total += len(ids)
    used_samples = sum(1 for lo, hi in bounds if hi > lo and any(s < hi and s + seq_len > lo for s in starts))
    return CalibrationSet(blocks, source, given, used_samples, empty, used, len(stream) - used, seq_len)
