"""The recipe's tasks and data: which tasks a run trains, where their rows come from, encoding.

Reference tasks from the CS224N files in ``--data-dir`` (or their Hub presets), a
``--benchmark``'s tasks from its own layout (or the Hub), ``--custom_tasks`` from any file;
every source is read and validated before any model is built.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..data import load_task_data, train_validation_split
from ..encoding import encode_task
from ..modeling import MultitaskModel
from ..presets import PRESETS
from ..reading import read_text
from ..tasks import TaskSpec, quora_task, sst_task, sts_task, upos_task
from ..tweeteval import TWEETEVAL_TASKS
from .arguments import BENCHMARKS, DataArguments, RecipeError

__all__ = ["REFERENCE", "HUB_PRESET", "BENCHMARK_DATA", "build_tasks", "load_raw_data", "encode_data", "check_task_names"]

logger = logging.getLogger("hf_multitask.recipe")

REFERENCE = {
    "sst": (sst_task, "ids-sst-train.csv"),
    "quora": (quora_task, "quora-train.csv"),
    "sts": (sts_task, "sts-train.csv"),
    "upos": (upos_task, "en_ewt-ud-dev.conllu"),
}


def _data_path(data_dir: Path, name: str) -> str:
    """A data file named in a flag or config: as given if it exists or is absolute, else inside ``--data-dir``."""
    path = Path(name)
    return str(path if path.is_absolute() or path.exists() else data_dir / path)


HUB_PRESET = "<hub preset>"
BENCHMARK_DATA = "<benchmark files>"  # the --benchmark's own layout in --data-dir


def build_tasks(data_args: DataArguments) -> list[tuple[TaskSpec, str, str | None]]:
    """(spec, train file or `HUB_PRESET`, validation file or None) for every task of the run."""
    out = []
    data_dir = Path(data_args.data_dir or ".")
    validation_files = {task: _data_path(data_dir, f) for task, f in data_args.validation_files.items()}
    if data_args.benchmark is not None:
        out.extend(_benchmark_tasks(data_args, validation_files))
    for name in [] if data_args.benchmark is not None else _default_tasks(data_args):
        if name not in REFERENCE:
            raise RecipeError(f"--tasks: unknown task {name!r}; reference tasks are {sorted(REFERENCE)} (add others with --custom_tasks)")
        make, filename = REFERENCE[name]
        # without --data-dir the reference tasks come from their Hub presets (hf_multitask.presets)
        if not data_args.data_dir and name not in PRESETS:
            raise RecipeError(f"--tasks {name}: this task has no Hub preset; pass --data-dir with {filename}")
        train = str(data_dir / filename) if data_args.data_dir else HUB_PRESET
        out.append((make(), train, validation_files.get(name)))
    for item in data_args.custom_tasks or []:
        item = dict(item)
        train_file = item.pop("train_file", None)
        if not train_file:
            raise RecipeError(f"--custom_tasks: task {item.get('name')!r} needs a train_file")
        validation_file = item.pop("validation_file", None)
        try:
            spec = TaskSpec.from_dict(item)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"--custom_tasks: task {item.get('name')!r}: {err}") from None
        validation = _data_path(data_dir, validation_file) if validation_file else validation_files.get(spec.name)
        out.append((spec, _data_path(data_dir, train_file), validation))
    names = [s.name for s, _, _ in out]
    if len(set(names)) != len(names):
        raise RecipeError(f"Task names must be unique, got {names}")
    if not out:
        raise RecipeError("No tasks to train: pass --tasks and/or --custom_tasks")
    for flag, mapping in (("--train_limits", data_args.train_limits), ("--validation_files", data_args.validation_files)):
        unknown = [t for t in mapping if t not in names]
        if unknown:
            raise RecipeError(f"{flag} names unknown task(s) {unknown}; the run's tasks are {names}")
    return out


def _default_tasks(data_args: DataArguments) -> list[str]:
    if data_args.tasks is not None:
        return list(data_args.tasks)
    return list(BENCHMARKS[data_args.benchmark]) if data_args.benchmark else ["sst", "quora", "sts"]


def _benchmark_tasks(data_args: DataArguments, validation_files: dict[str, str]) -> list[tuple[TaskSpec, str, str | None]]:
    """The --benchmark's tasks: (spec, [`BENCHMARK_DATA`][hf_multitask.recipe.data.BENCHMARK_DATA] or `HUB_PRESET`, validation file or None)."""
    from ..reading import DataError
    from ..tweeteval import STANCE_TARGET_TASKS, expand_stance, tweeteval_task

    names = _default_tasks(data_args)
    unknown = [t for t in names if t not in TWEETEVAL_TASKS and t not in STANCE_TARGET_TASKS]
    if unknown:
        raise RecipeError(f"--tasks: {unknown} are not {data_args.benchmark} tasks; its tasks are {list(TWEETEVAL_TASKS)} "
                          f"(stance also as {list(STANCE_TARGET_TASKS)})")  # fmt: skip
    names = expand_stance(names, data_args.stance)
    source = BENCHMARK_DATA if data_args.data_dir else HUB_PRESET
    try:
        return [(tweeteval_task(t, data_args.data_dir), source, validation_files.get(t)) for t in names]
    except DataError as err:
        raise RecipeError(f"--data-dir {data_args.data_dir}: not the TweetEval layout: {err}") from None


def load_raw_data(data_args: DataArguments, tasks) -> dict[str, tuple[Any, Any]]:
    """``{task: (training rows, validation rows)}``, read and validated before any model is built.

    Hub presets that cannot be loaded (offline, no cache) stop the run with one message naming
    the datasets tried and the other ways to get data.
    """
    from ..presets import PresetUnavailable, load_preset, offline_message
    from ..tweeteval import load_tweeteval, load_tweeteval_hub

    raw: dict[str, tuple[Any, Any]] = {}
    unavailable: list[tuple[str, str]] = []
    for spec, train_file, validation_file in tasks:
        own_val = validation_file is None and not (data_args.benchmark and data_args.benchmark_validation == "split")
        try:
            if train_file == BENCHMARK_DATA:
                train = load_tweeteval(spec, data_args.data_dir, "train", strict=data_args.strict_data)
                val = load_tweeteval(spec, data_args.data_dir, "val", strict=data_args.strict_data) if own_val else None
            elif train_file == HUB_PRESET and data_args.benchmark:
                train = load_tweeteval_hub(spec, "train", strict=data_args.strict_data)
                val = load_tweeteval_hub(spec, "validation", strict=data_args.strict_data) if own_val else None
            elif train_file == HUB_PRESET:
                train = load_preset(spec, "train", strict=data_args.strict_data)
                val = None if validation_file else load_preset(spec, "validation", strict=data_args.strict_data)
            else:
                train, val = load_task_data(spec, train_file, strict=data_args.strict_data), None
        except PresetUnavailable as err:
            unavailable.append((spec.name, str(err)))
            continue
        if validation_file:
            val = load_task_data(spec, validation_file, strict=data_args.strict_data)
        elif val is None:
            train, val = train_validation_split(train, data_args.validation_fraction, seed=data_args.validation_seed)
        limit = data_args.train_limits.get(spec.name)
        if limit is not None and limit < len(train):
            train = train.select(range(int(limit)))
        if spec.name in data_args.eda_tasks:
            before = len(train)
            train = _eda(data_args).rebalance(train, spec)
            logger.info("task %s: EDA rebalancing added %d training examples", spec.name, len(train) - before)
        raw[spec.name] = (train, val)
    if unavailable and data_args.benchmark:
        raise RecipeError(
            f"No --data-dir was given, so the {data_args.benchmark} tasks come from the Hub, but they could not be loaded "
            f"({'; '.join(r for _, r in unavailable)}). Pass --data-dir with the benchmark's files in its own layout, or go "
            "online once to cache the dataset."
        )
    if unavailable:
        raise RecipeError(offline_message([t for t, _ in unavailable], [r for _, r in unavailable]))
    return raw


def encode_data(data_args: DataArguments, tasks, raw: dict, model: MultitaskModel, tokenizer) -> tuple[dict, dict, dict]:
    """Encoded training and validation sets per task, and the raw training texts (for SimCSE)."""
    train, validation, texts = {}, {}, {}
    own = {s.name: s for s in model.config.task_specs}  # with --task_pair_encodings applied
    for spec, _, _ in tasks:
        rows, val_rows = raw[spec.name]
        texts[spec.name] = {c: rows[c] for c in spec.text_columns}
        encoding = model.config.task_pair_encoding(own.get(spec.name, spec))
        train[spec.name] = encode_task(
            rows, spec, tokenizer, pair_encoding=encoding, max_length=data_args.max_length, drop_longest=data_args.drop_longest
        )
        validation[spec.name] = encode_task(val_rows, spec, tokenizer, pair_encoding=encoding, max_length=data_args.max_length)
        logger.info("task %s: %d training and %d validation examples", spec.name, len(train[spec.name]), len(validation[spec.name]))
    return train, validation, texts


def _eda(data_args: DataArguments):
    from ..schemes import EDA

    synonyms = None
    if data_args.eda_synonyms:
        path = Path(data_args.eda_synonyms)
        if not path.is_file():
            raise RecipeError(f"--eda_synonyms: no such file {path}")
        try:
            synonyms = json.loads(read_text(path))
        except json.JSONDecodeError as err:
            raise RecipeError(f"--eda_synonyms {path}: line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})") from None
    a = data_args.eda_alpha
    return EDA(synonyms, alpha_sr=a, alpha_ri=a, alpha_rs=a, p_rd=a, seed=data_args.validation_seed)


def check_task_names(arguments: Any, names: list[str]) -> None:
    """Flags that name tasks must name tasks of the run."""
    for flag, values in (("--eda_tasks", arguments.data.eda_tasks), ("--specialise_tasks", arguments.specialise.specialise_tasks),
                         ("--adjustment_tasks", arguments.model.adjustment_tasks),
                         ("--task_pair_encodings", list(arguments.model.task_pair_encodings or {})),
                         ("--teachers", list(arguments.distillation.teachers or {}))):  # fmt: skip
        unknown = [t for t in values if t not in names]
        if unknown:
            raise RecipeError(f"{flag} names unknown task(s) {unknown}; the run's tasks are {names}")
    special, model = arguments.specialise, arguments.model
    keep = special.keep_mode()
    if isinstance(keep, list):
        specialised = special.specialise_tasks or names
        unknown = [t for t in keep if t not in specialised]
        if unknown or not keep:
            raise RecipeError(f"--specialise_keep {special.specialise_keep!r}: 'all', 'better', or comma-separated tasks that are "
                              f"specialised ({', '.join(specialised)}); unknown: {unknown}")  # fmt: skip
    if special.specialise_steps > 0 and special.specialise_form == "pal" and model.pal_tasks:
        raise RecipeError("--specialise_form pal adds each task's own PALs after multitask training: the model has PALs already "
                          "(--pal_tasks); use --specialise_form encoder or lora")  # fmt: skip
    if special.specialise_steps > 0 and special.specialise_form == "lora" and model.lora_r > 0:
        raise RecipeError("--specialise_form lora adds each task's own LoRA adapter after multitask training: the model has LoRA "
                          "already (--lora_r); use --specialise_form encoder or pal")  # fmt: skip
