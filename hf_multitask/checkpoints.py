"""Checkpoints that are complete or recognisably not: a marker written last, verified on resume.

A ``checkpoint-N`` folder is written in this order by [`MultitaskTrainer`][hf_multitask.trainer.MultitaskTrainer]:
the surgery state (``multitask_state.pt``), then everything ``transformers`` saves (weights,
optimizer, scheduler, RNG, ``trainer_state.json``), then the marker
``multitask_complete.json`` holding the size of every file, and only then are older
checkpoints rotated away. A run killed at any moment therefore leaves the previous complete
checkpoint on disk, and a folder without a marker is known to be partial.

On resume, [`verify_checkpoint()`][hf_multitask.checkpoints.verify_checkpoint] checks that every file the marker lists is there with its
recorded size (a truncated ``model.safetensors`` or state file is an error naming the file),
and [`latest_complete_checkpoint()`][hf_multitask.checkpoints.latest_complete_checkpoint] picks the newest complete folder.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "COMPLETE_MARKER",
    "SURGERY_STATE_NAME",
    "atomic_torch_save",
    "checkpoint_folders",
    "is_complete",
    "latest_complete_checkpoint",
    "load_surgery_state",
    "verify_checkpoint",
    "write_marker",
]

SURGERY_STATE_NAME = "multitask_state.pt"
COMPLETE_MARKER = "multitask_complete.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: partial, truncated or missing the surgery state."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` that leaves either the old file or the whole new one, never a partial one."""
    _atomic_write(Path(path), lambda handle: torch.save(obj, handle))


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file() and p.name != COMPLETE_MARKER}


def write_marker(folder: str | os.PathLike[str], step: int) -> None:
    """Declare ``folder`` complete: record every file's size in the marker, written last."""
    folder = Path(folder)
    body = json.dumps({"global_step": int(step), "files": _file_sizes(folder)}, indent=1, sort_keys=True).encode()
    _atomic_write(folder / COMPLETE_MARKER, lambda handle: handle.write(body))


def is_complete(folder: str | os.PathLike[str]) -> bool:
    """Whether the marker exists (the checkpoint finished writing)."""
    return (Path(folder) / COMPLETE_MARKER).is_file()


def verify_checkpoint(folder: str | os.PathLike[str], require_surgery_state: bool = True) -> None:
    """Raise [`CheckpointError`][hf_multitask.checkpoints.CheckpointError] unless ``folder`` is a complete, intact checkpoint.

    Args:
        folder: A ``checkpoint-N`` folder.
        require_surgery_state: A checkpoint without ``multitask_state.pt`` is an error (its
            resume would silently restart the aggregator state and the per-task counters);
            pass False to accept that knowingly.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such checkpoint folder")
    marker = folder / COMPLETE_MARKER
    if not marker.is_file():
        raise CheckpointError(
            f"{folder} is incomplete: it has no {COMPLETE_MARKER}, so it was still being written when its run stopped "
            "(or it was written by another program). Resume from an earlier checkpoint, or pass "
            "--resume_from_checkpoint true to take the newest complete one."
        )
    try:
        listed = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{marker}: unreadable completion marker ({err})") from err
    for name, size in listed.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from the checkpoint (its marker lists it, {size} bytes)")
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(f"{path}: {actual} bytes, but {size} were written: the file is truncated or was replaced")
    if require_surgery_state and SURGERY_STATE_NAME not in listed:
        raise CheckpointError(
            f"{folder} has no {SURGERY_STATE_NAME}: resuming would restart the surgery state (aggregator RNG and "
            "GradVac targets) and the per-task counters. Pass --resume_without_surgery_state true to accept that."
        )


def load_surgery_state(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The trainer's surgery state saved in ``folder`` (None if there is none)."""
    path = Path(folder) / SURGERY_STATE_NAME
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # truncated or corrupt: name the file
        raise CheckpointError(f"{path}: cannot be read ({type(err).__name__}: {err}); the file is damaged") from err


def checkpoint_folders(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_complete_checkpoint(output_dir: str | os.PathLike[str]) -> tuple[Path | None, list[Path]]:
    """(the newest complete checkpoint or None, the incomplete folders newer than it)."""
    skipped: list[Path] = []
    for folder in reversed(checkpoint_folders(output_dir)):
        if is_complete(folder):
            return folder, skipped
        skipped.append(folder)
    return None, skipped
