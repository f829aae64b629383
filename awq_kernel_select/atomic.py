"""Writing a checkpoint folder atomically: checked before any work, filled in a temporary folder
beside it, renamed into place; temporary folders a killed writer left are cleaned on the next run."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable

log = logging.getLogger("awq_kernel_select")


class OutputError(ValueError):
    """The output folder cannot be written; the message names it and says what to do."""


def _refuse_non_empty(output_dir: Path, overwrite: bool, error: type[Exception]) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise error(f"output_dir {output_dir} is a file: give a folder (it is created if it does not exist)")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise error(f"{output_dir} exists and is not empty: choose another folder or pass overwrite=True")


def check_output(output_dir: Path, overwrite: bool, error: type[Exception] = OutputError) -> None:
    """Before any model work: the output is a folder we may fill, and we can write beside it
    (a probe folder is made and removed in its nearest existing parent)."""
    _refuse_non_empty(output_dir, overwrite, error)
    parent = output_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        Path(tempfile.mkdtemp(prefix=".aks-write-probe-", dir=parent)).rmdir()
    except OSError as exc:
        raise error(f"cannot write the checkpoint next to {output_dir}: {parent}: {exc.strerror or exc}; "
                            "choose an output_dir in a folder you can write to") from exc


OWNER_FILE = ".aks-partial-owner"  # in each temporary folder of ours: "PID HOST" of the writer


def _clean_stale_partials(output_dir: Path) -> None:
    """Remove temporary folders a killed earlier write of ``output_dir`` left (ours only: they
    hold an owner file naming a process of this host that no longer runs)."""
    host = socket.gethostname()
    for folder in output_dir.parent.glob(f".{output_dir.name}.partial-*"):
        try:
            pid, owner_host = (folder / OWNER_FILE).read_text().split()
            if owner_host != host or _alive(int(pid)):
                continue
        except (OSError, ValueError):
            continue  # not ours, or not readable: left alone
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("removed %s, left by an interrupted write (process %s)", folder, pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(output_dir: Path, overwrite: bool, write: Callable[[Path], None],
                     error: type[Exception] = OutputError) -> None:
    """``write(folder)`` fills a temporary folder beside ``output_dir``, which is then renamed onto it:
    a reader sees the old folder or the whole new one, never a part."""
    _refuse_non_empty(output_dir, overwrite, error)  # again: it may have appeared in the meantime
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_partials(output_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        (tmp / OWNER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
        write(tmp)
        (tmp / OWNER_FILE).unlink()
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a checkpoint folder gets what the umask says
        if output_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old / "x")
            os.replace(tmp, output_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


