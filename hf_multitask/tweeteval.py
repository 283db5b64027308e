"""TweetEval (Barbieri et al., Findings of EMNLP 2020) as first-class data.

Six tweet-classification tasks in the benchmark's own layout (``{task}/{train,val}_{text,labels}.txt``,
``test_text.txt``, ``mapping.txt``; stance has one folder per target and one ``mapping.txt``
beside them), read with [`load_text_label_files()`][hf_multitask.data.load_text_label_files], and scored with the
benchmark's official metrics:

| task | classes | metric (``TaskSpec.metric``) |
|---|---|---|
| ``emoji`` | 20 | macro-F1 (``macro_f1``) |
| ``emotion`` | 4 | macro-F1 |
| ``hate`` | 2 | macro-F1 |
| ``irony`` | 2 | F1 of class 1, irony (``positive_f1``) |
| ``offensive`` | 2 | macro-F1 |
| ``stance`` | 3 | mean F1 of against (1) and favor (2), five targets pooled (``stance_f1``) |

Stance is one task whose examples are ``(target, tweet)`` pairs, so one head serves the five
targets and the metric pools them as the official script does. Or, with ``stance="targets"``,
five tasks ``stance_<target>`` (the tweet alone, one head each) in the metric group ``stance``:
their predictions are pooled for the one official ``stance_stance_f1`` and ``overall`` counts
stance once (`metric_group`). The benchmark score is the mean
of the six metrics (x 100 on the leaderboard): the model's ``overall`` (each F1 is its own
``[0, 1]`` score), so the best checkpoint and the model card follow it.

Test labels are not part of the benchmark's release: [`write_test_predictions()`][hf_multitask.tweeteval.write_test_predictions] writes the
official prediction files (``{task}.txt``, ``stance/{target}.txt``, one label index per line in
``test_text.txt`` order) for the held-out scorer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from .data import load_text_label_files
from .reading import DataError, read_lines
from .tasks import TaskSpec

__all__ = [
    "TWEETEVAL_TASKS",
    "STANCE_TARGETS",
    "STANCE_TARGET_TASKS",
    "expand_stance",
    "TWEETEVAL_HUB_ID",
    "tweeteval_task",
    "tweeteval_tasks",
    "load_tweeteval",
    "load_tweeteval_hub",
    "read_mapping",
    "test_inputs",
    "write_test_predictions",
    "benchmark_score",
]

TWEETEVAL_TASKS: tuple[str, ...] = ("emoji", "emotion", "hate", "irony", "offensive", "stance")
# the five stance targets: folder name -> the target as the pair's first text (SemEval-2016 Task 6's wording)
STANCE_TARGETS: dict[str, str] = {
    "abortion": "Legalization of Abortion",
    "atheism": "Atheism",
    "climate": "Climate Change is a Real Concern",
    "feminist": "Feminist Movement",
    "hillary": "Hillary Clinton",
}
# stance as five tasks, one per target (the Hub's config names), scored pooled as the group "stance"
STANCE_TARGET_TASKS: tuple[str, ...] = tuple(f"stance_{t}" for t in STANCE_TARGETS)
_METRIC = {"emoji": "macro_f1", "emotion": "macro_f1", "hate": "macro_f1", "irony": "positive_f1", "offensive": "macro_f1",
           "stance": "stance_f1"}  # fmt: skip
_NUM_LABELS = {"emoji": 20, "emotion": 4, "hate": 2, "irony": 2, "offensive": 2, "stance": 3}
_SPLIT_FILES = {"train": "train", "validation": "val", "val": "val"}
TWEETEVAL_HUB_ID = "cardiffnlp/tweet_eval"  # configs: the task names, and stance_<target>; splits train / validation / test


def read_mapping(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Label names of a ``mapping.txt`` (``index<TAB>name[<TAB>more]`` per line), in index order.

    The indices must be ``0 .. K-1`` (in any order); anything else is a [`DataError`][hf_multitask.reading.DataError]
    naming the line."""
    names: dict[int, str] = {}
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip().isdigit() or not fields[1].strip():
            raise DataError(f"{path}: line {number}: expected 'index<TAB>name', got {line!r}")
        index = int(fields[0])
        if index in names:
            raise DataError(f"{path}: line {number}: index {index} is given twice")
        names[index] = fields[1].strip()
    if sorted(names) != list(range(len(names))) or not names:
        raise DataError(f"{path}: the indices must be 0..K-1, got {sorted(names)}")
    return tuple(names[i] for i in range(len(names)))


def _base(task: str) -> str:
    """The benchmark task a task name belongs to (``stance`` for ``stance_<target>``)."""
    if task in TWEETEVAL_TASKS:
        return task
    if task in STANCE_TARGET_TASKS:
        return "stance"
    raise ValueError(f"Unknown TweetEval task {task!r}; the tasks are {list(TWEETEVAL_TASKS)} (stance also as {list(STANCE_TARGET_TASKS)})")


def _task_dir(data_dir: str | os.PathLike[str], task: str) -> Path:
    task = _base(task)
    folder = Path(data_dir) / task
    if not folder.is_dir():
        raise DataError(f"{data_dir}: no folder {task}/ (the TweetEval layout has one folder per task: {', '.join(TWEETEVAL_TASKS)})")
    return folder


def tweeteval_task(task: str, data_dir: str | os.PathLike[str] | None = None) -> TaskSpec:
    """The [`TaskSpec`][hf_multitask.tasks.TaskSpec] of one TweetEval task, with its official metric; label names come
    from the task's ``mapping.txt`` when ``data_dir`` is given. Stance is a pair task
    (``target``, ``text``); ``stance_<target>`` is one target's tweets alone, in the metric
    group ``stance``."""
    base = _base(task)
    names = read_mapping(_task_dir(data_dir, base) / "mapping.txt") if data_dir is not None else None
    if names is not None and len(names) != _NUM_LABELS[base]:
        raise DataError(f"{Path(data_dir) / base / 'mapping.txt'}: {len(names)} labels, TweetEval's {base} has {_NUM_LABELS[base]}")
    columns = ("target", "text") if task == "stance" else ("text",)
    group = "stance" if task in STANCE_TARGET_TASKS else None
    return TaskSpec(name=task, kind="classification", num_labels=_NUM_LABELS[base], text_columns=columns, label_column="label",
                    metric=_METRIC[base], label_names=names, metric_group=group)  # fmt: skip


def expand_stance(tasks: list[str], stance: str = "pair") -> list[str]:
    """``tasks`` with ``stance`` kept as one pair task (``stance="pair"``) or replaced by the five
    target tasks ``stance_<target>`` (``stance="targets"``)."""
    if stance not in ("pair", "targets"):
        raise ValueError(f"stance must be 'pair' (one task, the target as the pair's first text) or 'targets' (one task per "
                         f"target), got {stance!r}")  # fmt: skip
    if stance == "pair":
        return list(tasks)
    return [t for task in tasks for t in (STANCE_TARGET_TASKS if task == "stance" else (task,))]


def tweeteval_tasks(data_dir: str | os.PathLike[str] | None = None, tasks: list[str] | None = None, stance: str = "pair") -> list[TaskSpec]:
    """The TweetEval tasks (all six, or ``tasks``) as [`TaskSpec`][hf_multitask.tasks.TaskSpec] objects; ``stance="targets"``
    gives stance as five tasks, one head per target, scored pooled ([`expand_stance()`][hf_multitask.tweeteval.expand_stance])."""
    return [tweeteval_task(t, data_dir) for t in expand_stance(list(tasks or TWEETEVAL_TASKS), stance)]


def _groups(data_dir: str | os.PathLike[str], task: str) -> list[tuple[str, Path, dict[str, str]]]:
    """(id prefix, folder, constant columns) of each file group of a task: one, or one per stance target."""
    folder = _task_dir(data_dir, task)
    if task in STANCE_TARGET_TASKS:
        target = task.removeprefix("stance_")
        if not (folder / target).is_dir():
            raise DataError(f"{folder}: no folder {target}/ (stance has one folder per target: {', '.join(STANCE_TARGETS)})")
        return [(f"{target}-", folder / target, {})]
    if task != "stance":
        return [("", folder, {})]
    out = []
    for target, phrase in STANCE_TARGETS.items():
        sub = folder / target
        if not sub.is_dir():
            raise DataError(f"{folder}: no folder {target}/ (stance has one folder per target: {', '.join(STANCE_TARGETS)})")
        out.append((f"{target}-", sub, {"target": phrase}))
    return out


def load_tweeteval(
    spec: TaskSpec | str,
    data_dir: str | os.PathLike[str],
    split: str = "train",
    *,
    strict: bool = False,
    max_bad_fraction: float = 0.01,
) -> datasets.Dataset:
    """One task's ``train`` or ``val`` (``validation``) examples from the TweetEval layout: ``id``
    (the 0-based line index; ``{target}-{index}`` for stance and its target tasks), ``text`` (and
    ``target`` for the stance pair task) and ``label``. Bad lines (an empty tweet: hate has a few) are reported by file and
    line and skipped, as [`load_task_data()`][hf_multitask.data.load_task_data] does."""
    spec = tweeteval_task(spec, data_dir) if isinstance(spec, str) else spec
    if split not in _SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'val' (the test labels are held out), got {split!r}")
    stem = _SPLIT_FILES[split]
    parts = [
        load_text_label_files(spec, folder / f"{stem}_text.txt", folder / f"{stem}_labels.txt", extra_columns=extra or None,
                              id_prefix=prefix, strict=strict, max_bad_fraction=max_bad_fraction)
        for prefix, folder, extra in _groups(data_dir, spec.name)
    ]  # fmt: skip
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def test_inputs(spec: TaskSpec | str, data_dir: str | os.PathLike[str]) -> tuple[datasets.Dataset, list[tuple[str, int]]]:
    """Every line of the task's ``test_text.txt`` (of each stance target, in target order) as
    unlabeled examples, and the ``(file stem, line count)`` of each prediction file they fill
    (``("irony", 784)``, ``("stance/abortion", 280)``, ...). Nothing is skipped: an empty tweet
    is still an example, so predictions line up with the file."""
    spec = tweeteval_task(spec, data_dir) if isinstance(spec, str) else spec
    rows: dict[str, list[Any]] = {"id": [], **{c: [] for c in spec.text_columns}}
    files = []
    for prefix, folder, extra in _groups(data_dir, spec.name):
        lines = read_lines(folder / "test_text.txt")
        for i, line in enumerate(lines):
            rows["id"].append(f"{prefix}{i}")
            rows["text"].append(line.strip())
            for column, value in extra.items():
                rows[column].append(value)
        files.append((f"stance/{prefix[:-1]}" if prefix else spec.name, len(lines)))
    return datasets.Dataset.from_dict(rows), files


def write_test_predictions(
    model: Any,
    tokenizer: Any,
    data_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    tasks: list[str] | None = None,
    max_length: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
    dtype: Any = None,
) -> dict[str, Path]:
    """Predict the test text of every TweetEval task the model has (or ``tasks``) and write the
    official files into ``output_dir``: ``{task}.txt`` and ``stance/{target}.txt``, one label
    index per line in ``test_text.txt`` order. Returns ``{file stem: path}``. ``max_length``:
    the tokens each tweet is cut to (default: the length the model was trained with,
    [`serving_max_length`][hf_multitask.configuration.serving_max_length], or 64 for a checkpoint
    that does not record it, fewer if its encoder takes fewer). ``dtype``: ``torch.bfloat16`` predicts under bf16 autocast
    ([`predict()`][hf_multitask.predict.predict]).

    Each file is written whole to a temporary name, then renamed, so no half-written file is
    ever left behind."""
    from .configuration import serving_max_length
    from .encoding import encode_task
    from .predict import predict

    max_length = serving_max_length(model.config, max_length, fallback=64, tokenizer=tokenizer)
    known = model.config.task_names
    official = (*TWEETEVAL_TASKS, *STANCE_TARGET_TASKS)
    names = tasks or [t for t in known if t in official]
    # stance asked of a model that has it as five target tasks: their five files
    names = [m for t in names for m in (STANCE_TARGET_TASKS if t == "stance" and "stance" not in known else (t,))]
    unknown = [t for t in names if t not in known or t not in official]
    if unknown or not names:
        raise ValueError(f"the model has no TweetEval task {unknown or list(TWEETEVAL_TASKS)} (its tasks: {known})")
    written: dict[str, Path] = {}
    out = Path(output_dir)
    for name in names:
        spec = model.get_task(name)
        inputs, files = test_inputs(spec, data_dir)
        # every kind of model answers it per task: a routed one (PyTorch or ONNX) as the task's expert encodes pairs
        encoded = encode_task(inputs, spec, tokenizer, pair_encoding=model.config.task_pair_encoding(spec), max_length=max_length)
        labels = predict(model, encoded, name, pad_token_id=tokenizer.pad_token_id, batch_size=batch_size, progress=progress,
                         dtype=dtype).predictions  # fmt: skip
        start = 0
        for stem, count in files:
            path = out / f"{stem}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_suffix(".txt.partial")
            part.write_text("".join(f"{int(v)}\n" for v in np.asarray(labels[start : start + count])), encoding="utf-8")
            part.replace(path)
            written[stem] = path
            start += count
    return written


def benchmark_score(metrics: dict[str, float], tasks: list[str] | None = None) -> float:
    """The TweetEval score, x 100: the mean of the tasks' official metrics read from evaluation
    metrics (``{task}_{metric}`` keys, with or without the ``eval_`` prefix)."""
    plain = {k.removeprefix("eval_"): v for k, v in metrics.items()}
    names = tasks or [t for t in TWEETEVAL_TASKS if f"{t}_{_METRIC[t]}" in plain]
    missing = [t for t in names if f"{t}_{_METRIC[t]}" not in plain]
    if missing or not names:
        raise KeyError(f"no official metric for TweetEval task(s) {missing or list(TWEETEVAL_TASKS)} in {sorted(plain)}")
    return 100.0 * float(np.mean([plain[f"{t}_{_METRIC[t]}"] for t in names]))


def load_tweeteval_hub(spec: TaskSpec | str, split: str = "train", *, strict: bool = False) -> datasets.Dataset:
    """One task's ``train`` or ``validation`` split from the Hub's ``cardiffnlp/tweet_eval``
    (configs named after the tasks, ``stance_<target>`` for stance; columns ``text`` and
    ``label``), in the same columns as [`load_tweeteval()`][hf_multitask.tweeteval.load_tweeteval]. Needs the network or a warm cache;
    otherwise a `PresetUnavailable` names the dataset."""
    from .data import load_task_data
    from .presets import PresetUnavailable

    spec = tweeteval_task(spec) if isinstance(spec, str) else spec
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation' (test labels are never used), got {split!r}")
    if spec.name == "stance":
        configs = [(f"stance_{t}", f"{t}-", {"target": p}) for t, p in STANCE_TARGETS.items()]
    elif spec.name in STANCE_TARGET_TASKS:
        configs = [(spec.name, f"{spec.name.removeprefix('stance_')}-", {})]
    else:
        configs = [(spec.name, "", {})]
    parts = []
    for config, prefix, extra in configs:
        try:
            raw = datasets.load_dataset(TWEETEVAL_HUB_ID, config, split=split)
        except Exception as err:  # offline with a cold cache, no network, renamed dataset
            raise PresetUnavailable(f"{TWEETEVAL_HUB_ID} ({config}) [{split}]: {type(err).__name__}: {err}") from err
        missing = [c for c in ("text", "label") if c not in raw.column_names]
        if missing:
            raise DataError(f"{TWEETEVAL_HUB_ID} ({config}): expected column(s) {missing}; the dataset has {raw.column_names}")
        rows = {"id": [f"{prefix}{i}" for i in range(len(raw))], "text": raw["text"], "label": raw["label"]}
        rows.update({c: [v] * len(raw) for c, v in extra.items()})
        parts.append(load_task_data(spec, datasets.Dataset.from_dict(rows), strict=strict))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
