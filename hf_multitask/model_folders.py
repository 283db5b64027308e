"""A saved model folder that is damaged gets one clear error, before anything loads it.

Folders on disk get damaged in a few ways: a copy or download cut short (a weights file shorter
than its header says), a file emptied or overwritten, a ``config.json`` that is not JSON or not
a model's config, a shard an index names that is missing, or the path is not a folder at all.
``transformers`` then fails deep inside ``safetensors`` or ``json`` with a long traceback that
does not say which folder. [`check_model_folder()`][hf_multitask.model_folders.check_model_folder] reads only the config and the weights'
headers (no tensor data) and raises [`ModelFolderError`][hf_multitask.model_folders.ModelFolderError], one line naming the folder and
what is wrong. The ``hf-multitask`` commands, the recipe's ``--backbone`` and
``MultitaskModel.from_pretrained`` / ``RoutedMultitaskModel.from_pretrained`` on a local folder
call it first.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["CheckedFolderLoading", "ModelFolderError", "check_model_folder", "is_local_folder"]

_SINGLE = ("model.safetensors", "pytorch_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class ModelFolderError(ValueError):
    """A saved model folder that cannot be loaded; the message names the folder and what is wrong."""


def is_local_folder(path: Any) -> bool:
    """Whether ``path`` names something on disk (so it is checked, not looked up on the Hub)."""
    return isinstance(path, (str, os.PathLike)) and os.path.exists(path)


def _check_weights(path: Path, folder: Path) -> None:
    if path.stat().st_size == 0:
        raise ModelFolderError(f"model folder {folder}: {path.name} is empty (0 bytes): the copy was cut short or the file was replaced")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt"):
                pass
        except Exception as err:  # safetensors raises its own error type for every damaged header
            raise ModelFolderError(
                f"model folder {folder}: {path.name} is damaged ({str(err).strip()}): the file was cut short or overwritten; "
                "save or download the model again"
            ) from None
    elif not zipfile.is_zipfile(path):
        raise ModelFolderError(f"model folder {folder}: {path.name} is damaged (not a complete torch archive): save or download it again")


def check_model_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` as a `Path` if it is a loadable saved model folder; otherwise a
    [`ModelFolderError`][hf_multitask.model_folders.ModelFolderError] naming it and what is wrong (reads the config and the weights'
    headers only)."""
    folder = Path(path)
    if not folder.exists():
        raise ModelFolderError(f"model folder {folder}: no such folder")
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder}: a file, not a folder (pass the folder that holds config.json)")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelFolderError(f"model folder {folder}: no config.json, so not a saved model folder")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelFolderError(f"model folder {folder}: config.json is not text (the file is damaged)") from None
    except json.JSONDecodeError as err:
        raise ModelFolderError(
            f"model folder {folder}: config.json, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); the file is damaged"
        ) from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelFolderError(f"model folder {folder}: config.json has no model_type, so it is not a model's config")
    for name in _INDEXES:
        index = folder / name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError):
                raise ModelFolderError(f"model folder {folder}: {name} is damaged (no readable weight_map)") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise ModelFolderError(f"model folder {folder}: {name} names shard(s) {missing} that are not in the folder")
            for shard in shards:
                _check_weights(folder / shard, folder)
            return folder
    single = [folder / n for n in _SINGLE if (folder / n).is_file()]
    if not single:
        raise ModelFolderError(f"model folder {folder}: no weights file ({' or '.join(_SINGLE)}, or a sharded index)")
    _check_weights(single[0], folder)
    return folder


class CheckedFolderLoading:
    """Mixin of the package's models (before ``PreTrainedModel`` in the bases): ``from_pretrained``
    on a local folder checks it first ([`check_model_folder()`][hf_multitask.model_folders.check_model_folder]), so a damaged folder is one
    [`ModelFolderError`][hf_multitask.model_folders.ModelFolderError] naming it."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``; a local folder is checked first (with
        ``subfolder=``, that folder inside it), so a damaged one (weights cut short, a config that
        is not JSON, a missing shard) is one
        [`ModelFolderError`][hf_multitask.model_folders.ModelFolderError] naming it."""
        if is_local_folder(pretrained_model_name_or_path):
            # with subfolder= the model (config and weights) lives in that folder inside the given one
            subfolder = kwargs.get("subfolder") or ""
            check_model_folder(Path(pretrained_model_name_or_path) / subfolder)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
