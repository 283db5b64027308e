"""Hub presets: the reference tasks from well-known Hub datasets, for users without the CS224N files.

| task | Hub dataset | training split | validation split | columns (theirs -> ours) |
|---|---|---|---|---|
| ``sst`` | ``SetFit/sst5`` | ``train`` (8,544) | ``validation`` (1,101) | ``text`` -> ``sentence``, ``label`` (int 0-4) -> ``sentiment`` |
| ``quora`` | ``nyu-mll/glue``, ``qqp`` | ``train`` (363,846) | ``validation`` (40,430) | ``question1``/``question2`` -> ``sentence1``/``sentence2``, ``label`` (ClassLabel not_duplicate/duplicate) -> ``is_duplicate``, ``idx`` -> ``id`` |
| ``sts`` | ``nyu-mll/glue``, ``stsb`` | ``train`` (5,749) | ``validation`` (1,500) | ``sentence1``/``sentence2`` kept, ``label`` (float 0-5) -> ``similarity``, ``idx`` -> ``id`` |

The test splits of these datasets carry no labels (``-1``) and are never used. The mapped rows
go through the same validation as any other source ([`load_task_data()`][hf_multitask.data.load_task_data]).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import datasets

from .data import DataError, load_task_data
from .tasks import TaskSpec

__all__ = ["HubPreset", "PRESETS", "CS224N_DATA_POINTER", "load_preset", "map_preset", "PresetUnavailable"]

CS224N_DATA_POINTER = (
    "the data/ folder of the CS224N default final project (minBERT) starter code, linked from the course page "
    "https://web.stanford.edu/class/cs224n/"
)


class PresetUnavailable(DataError):
    """A Hub preset cannot be loaded here (offline, or the dataset cannot be reached)."""


@dataclass(frozen=True)
class HubPreset:
    """Where a reference task lives on the Hub and how its columns map onto the task's."""

    task: str
    dataset: str
    subset: str | None
    train_split: str
    validation_split: str
    columns: dict[str, str]

    @property
    def name(self) -> str:
        return self.dataset + (f" ({self.subset})" if self.subset else "")


PRESETS: dict[str, HubPreset] = {
    "sst": HubPreset("sst", "SetFit/sst5", None, "train", "validation", {"text": "sentence", "label": "sentiment"}),
    "quora": HubPreset(
        "quora",
        "nyu-mll/glue",
        "qqp",
        "train",
        "validation",
        {"idx": "id", "question1": "sentence1", "question2": "sentence2", "label": "is_duplicate"},
    ),
    "sts": HubPreset(
        "sts",
        "nyu-mll/glue",
        "stsb",
        "train",
        "validation",
        {"idx": "id", "sentence1": "sentence1", "sentence2": "sentence2", "label": "similarity"},
    ),
}


def map_preset(dataset: datasets.Dataset, preset: HubPreset) -> datasets.Dataset:
    """The Hub rows with the preset's columns renamed to the task's (other columns dropped)."""
    missing = [c for c in preset.columns if c not in dataset.column_names]
    if missing:
        raise DataError(f"{preset.name}: expected column(s) {missing}; the dataset has {dataset.column_names}")
    kept = dataset.select_columns(list(preset.columns))
    renames = {theirs: ours for theirs, ours in preset.columns.items() if theirs != ours}
    return kept.rename_columns(renames) if renames else kept


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_preset(spec: TaskSpec, split: str, *, strict: bool = False) -> datasets.Dataset:
    """One split (``"train"`` or ``"validation"``) of a reference task from its Hub preset,
    validated like a file. Raises `PresetUnavailable` when the dataset cannot be had."""
    preset = PRESETS[spec.name]
    hub_split = preset.train_split if split == "train" else preset.validation_split
    try:
        raw = datasets.load_dataset(preset.dataset, preset.subset, split=hub_split)
    except Exception as err:  # offline with a cold cache, no network, renamed dataset
        raise PresetUnavailable(f"{preset.name} [{hub_split}]: {type(err).__name__}: {err}") from err
    return load_task_data(spec, map_preset(raw, preset), strict=strict)


def offline_message(tasks: list[str], reasons: list[str]) -> str:
    """What to do when the presets cannot be loaded: name the datasets tried, and the other ways."""
    tried = ", ".join(f"{PRESETS[t].name} for {t}" for t in tasks)
    why = "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set and the datasets are not cached" if _offline() else "; ".join(reasons)
    return (
        f"No --data-dir was given, so the reference tasks come from Hub presets ({tried}), but they could not be loaded "
        f"({why}). Pass --data-dir with the CS224N files (ids-sst-train.csv, quora-train.csv, sts-train.csv: "
        f"{CS224N_DATA_POINTER}), run --demo (built-in examples, no network), or go online once to cache the datasets."
    )
