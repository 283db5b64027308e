"""Multitask distillation from single-task teachers, with teacher annealing (BAM!).

Clark et al. (ACL 2019), "BAM! Born-Again Multi-Task Networks for Natural Language
Understanding": single-task models teach one multitask student. For an example of task tau
the student's target is

    lambda * gold + (1 - lambda) * teacher_tau(x),      lambda = t / (T - 1) at optimizer step t of T,

so the student starts by imitating its teachers and ends on the gold labels (*teacher
annealing*; lambda is 0 at the first step and 1 at the last, 1 for a run of one step). Each task type owns what its
target is ([`distillation_loss()`][hf_multitask.task_types.TaskType.distillation_loss]): class distributions for
classification, the teacher's value for regression, per-token distributions for tagging,
choice distributions for multiple choice. A task without a teacher trains on its gold labels.

The teachers run **once**: [`attach_teachers()`][hf_multitask.distillation.attach_teachers] computes every teacher's outputs over its
task's encoded training data in one batched pass and adds them as the ``teacher`` column, which
rides through every schedule and the length-bucketed batching like the labels do; the
[`MultitaskTrainer`][hf_multitask.trainer.MultitaskTrainer] reads it (``distillation_gold_weight``,
``distillation_temperature``). With ``cache_dir`` the outputs are kept as ``{task}.npz`` (plus a
readable ``{task}.json``), keyed by fingerprints of the encoded training data and of the teacher's
files: a cache made from other data or another teacher, or written in another format, is refused
by name, never reused. The teachers run on ``device`` (the recipe's training device).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .encoding import MODEL_INPUT_KEYS, TEACHER_COLUMN, MultitaskCollator
from .predict import length_order, unsort

__all__ = ["DistillationError", "attach_teachers", "data_fingerprint", "teacher_fingerprint", "teacher_outputs", "load_teacher"]

logger = logging.getLogger("hf_multitask.distillation")

CACHE_FORMAT = 1
_WEIGHT_FILES = ("*.safetensors", "*.bin", "config.json")


class DistillationError(ValueError):
    """A teacher or a teacher cache that cannot be used (the message names it and why)."""


def data_fingerprint(dataset: datasets.Dataset) -> str:
    """SHA-256 of an encoded dataset's content (ids, model inputs, labels, in order): any change
    to the training file, its row limit, the tokeniser or the encoding changes it."""
    columns = [c for c in ("id", *MODEL_INPUT_KEYS, "labels") if c in dataset.column_names]
    digest = hashlib.sha256(json.dumps(columns).encode())
    for batch in dataset.select_columns(columns).iter(batch_size=2048):
        digest.update(json.dumps(batch, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def teacher_fingerprint(folder: str | os.PathLike[str]) -> str:
    """SHA-256 of a saved model folder's weights and config (file names and bytes)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DistillationError(f"teacher {folder}: no such folder")
    files = sorted({f for pattern in _WEIGHT_FILES for f in folder.glob(pattern) if f.is_file()})
    if not files:
        raise DistillationError(f"teacher {folder}: no model files (config.json, *.safetensors) in the folder")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _holds_model_files(folder: Path) -> bool:
    return folder.is_dir() and any(f.is_file() for pattern in _WEIGHT_FILES for f in folder.glob(pattern))


def load_teacher(folder: str | os.PathLike[str], task: str, student: Any) -> Any:
    """A saved [`MultitaskModel`][hf_multitask.modeling.MultitaskModel] or [`RoutedMultitaskModel`][hf_multitask.routed.RoutedMultitaskModel]
    that holds ``task`` as the ``student`` defines it (same kind, number of labels, pair encoding
    and vocabulary), in fp32 and eval mode; a [`DistillationError`][hf_multitask.distillation.DistillationError] says what does not fit."""
    from transformers import AutoModel

    from .model_folders import ModelFolderError, check_model_folder

    try:
        folder = check_model_folder(folder)
    except ModelFolderError as err:
        raise DistillationError(f"teacher of task {task!r}: {err}") from None
    teacher = AutoModel.from_pretrained(folder, dtype=torch.float32)
    if not hasattr(teacher, "get_task") or task not in teacher.config.task_names:
        have = teacher.config.task_names if hasattr(teacher, "get_task") else type(teacher).__name__
        raise DistillationError(f"teacher of task {task!r}: {folder} has no task {task!r} (it has {have})")
    mine, theirs = student.get_task(task), teacher.get_task(task)
    for what, a, b in (("kind", mine.kind, theirs.kind), ("num_labels", mine.num_labels, theirs.num_labels),
                       ("pair encoding", student.config.task_pair_encoding(mine), teacher.config.task_pair_encoding(theirs)),
                       ("vocabulary size", student.config.encoder_config.vocab_size,
                        teacher.config.encoder_config.vocab_size)):  # fmt: skip
        if a != b:
            raise DistillationError(f"teacher of task {task!r}: {folder} has {what} {b!r} where the student has {a!r}")
    return teacher.eval()


@torch.inference_mode()
def teacher_outputs(teacher: Any, dataset: datasets.Dataset, task: str, *, pad_token_id: int = 0, batch_size: int = 64,
                    progress: bool = True) -> list[np.ndarray]:  # fmt: skip
    """The teacher's outputs for every example of an encoded dataset, in the dataset's order, as
    its task type keeps them ([`teacher_outputs()`][hf_multitask.task_types.TaskType.teacher_outputs]): one batched pass,
    examples batched by length."""
    spec = teacher.get_task(task)
    order = length_order(spec, dataset)
    columns = [c for c in MODEL_INPUT_KEYS if c in dataset.column_names]
    collate = MultitaskCollator(pad_token_id, task=task)
    loader = DataLoader(dataset.select_columns(columns).select(order), batch_size=batch_size, shuffle=False, collate_fn=collate)
    device = next(teacher.parameters()).device
    out: list[np.ndarray] = []
    for batch in tqdm(loader, desc=f"Teacher outputs for {task}", disable=not progress):
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        logits = teacher(**inputs).logits.float().cpu().numpy()
        out.extend(spec.task_type.teacher_outputs(spec, logits, {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}))
    return [out[position] for position in unsort(order)]


def _save_cache(path: Path, outputs: list[np.ndarray], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ndim = max((a.ndim for a in outputs), default=0)
    shapes = np.array([list(a.shape) + [0] * (ndim - a.ndim) for a in outputs], dtype=np.int64).reshape(len(outputs), ndim)
    values = np.concatenate([a.reshape(-1) for a in outputs]) if outputs else np.zeros(0, np.float32)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, values=values.astype(np.float32), shapes=shapes, ndims=np.array([a.ndim for a in outputs], dtype=np.int64),
             meta=np.array(json.dumps(meta, sort_keys=True)))  # fmt: skip
    os.replace(tmp, path)  # a cut-short write never leaves a cache that looks complete
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _load_cache(path: Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            values, shapes, ndims, meta = data["values"], data["shapes"], data["ndims"], json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, EOFError) as err:
        raise DistillationError(
            f"teacher cache {path} cannot be read ({type(err).__name__}: {err}); delete it to compute it again"
        ) from None
    outputs, start = [], 0
    for shape, n in zip(shapes, ndims):
        shape = tuple(int(x) for x in shape[: int(n)])
        size = int(np.prod(shape)) if shape else 1
        outputs.append(values[start : start + size].reshape(shape))
        start += size
    if meta.get("format") != CACHE_FORMAT:
        raise DistillationError(
            f"teacher cache {path} has format {meta.get('format')!r}; this version of hf-multitask reads format {CACHE_FORMAT}: "
            "delete it, or pass another cache folder, to compute it again"
        )
    if start != values.size or len(outputs) != meta.get("examples"):
        raise DistillationError(f"teacher cache {path} is inconsistent (its arrays do not add up); delete it to compute it again")
    return outputs, meta


def attach_teachers(
    train: Mapping[str, datasets.Dataset],
    teachers: Mapping[str, str | os.PathLike[str]],
    student: Any,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    pad_token_id: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> tuple[dict[str, datasets.Dataset], dict[str, float]]:
    """The training data with each taught task's teacher outputs as its ``teacher`` column.

    Args:
        train: ``{task: encoded training dataset}`` (tasks without a teacher are returned as they are).
        teachers: ``{task: saved model folder}``; each folder holds that task ([`load_teacher()`][hf_multitask.distillation.load_teacher]).
        student: The model to be trained (its task specs are what the teachers must match).
        cache_dir: Keep and reuse the outputs as ``cache_dir/{task}.npz``. A cache made from
            other training data, or by a teacher whose files differ, is refused with a
            [`DistillationError`][hf_multitask.distillation.DistillationError] naming it, as is one in another format; a cache whose
            teacher is gone (no folder, or no model files in it) is used (its outputs stand in
            for the teacher), and the log says so.
        pad_token_id: The tokenizer's padding id (the teachers' pass).
        batch_size: Batch size of the teachers' pass.
        progress: Show a progress bar per teacher.
        device: Where the teachers run (the recipe passes the training device); default the
            machine's accelerator if it has one, else the CPU.

    Returns ``(train, stats)``: ``stats`` has ``teacher_seconds`` (the whole pass) and
    ``teacher_seconds_{task}``, 0 for a task read from the cache.
    """
    unknown = [t for t in teachers if t not in train]
    if unknown:
        raise DistillationError(f"teachers named for task(s) {unknown} with no training data; the training tasks are {list(train)}")
    if device is None:
        accelerator = getattr(torch, "accelerator", None)
        device = accelerator.current_accelerator() if accelerator is not None and accelerator.is_available() else "cpu"
    out, stats, start = dict(train), {}, time.perf_counter()
    for task, folder in teachers.items():
        folder, began = Path(folder), time.perf_counter()
        dataset = train[task].remove_columns([TEACHER_COLUMN]) if TEACHER_COLUMN in train[task].column_names else train[task]
        data_key = data_fingerprint(dataset)
        cache = Path(cache_dir) / f"{task}.npz" if cache_dir is not None else None
        # None: the teacher is gone (no folder, or no model files left in it): a cache stands in, or loading says so
        teacher_key = teacher_fingerprint(folder) if _holds_model_files(folder) else None
        outputs = None
        if cache is not None and cache.is_file():
            outputs, meta = _load_cache(cache)
            if meta.get("data_fingerprint") != data_key:
                raise DistillationError(
                    f"teacher cache {cache} was computed on other training data for task {task!r} (the training file, its row limit, "
                    "the tokeniser or the encoding changed): delete it, or pass another cache folder, to compute it again"
                )
            if teacher_key is not None and meta.get("teacher_fingerprint") != teacher_key:
                raise DistillationError(
                    f"teacher cache {cache} was computed by another teacher than {folder} for task {task!r} (its files differ): "
                    "delete it, or pass another cache folder, to compute it again"
                )
            if teacher_key is None:
                gone = "holds no model files" if folder.is_dir() else "is not there"
                logger.warning("task %s: teacher folder %s %s; using its cached outputs %s", task, folder, gone, cache)
            else:
                logger.info("task %s: teacher outputs read from %s", task, cache)
        if outputs is None:
            teacher = load_teacher(folder, task, student).to(device)
            outputs = teacher_outputs(teacher, dataset, task, pad_token_id=pad_token_id, batch_size=batch_size, progress=progress)
            del teacher
            if cache is not None:
                meta = {"format": CACHE_FORMAT, "task": task, "teacher": str(folder), "teacher_fingerprint": teacher_key,
                        "data_fingerprint": data_key, "examples": len(outputs), "seconds": time.perf_counter() - began}  # fmt: skip
                _save_cache(cache, outputs, meta)
            stats[f"teacher_seconds_{task}"] = time.perf_counter() - began
        else:
            stats[f"teacher_seconds_{task}"] = 0.0
        out[task] = dataset.add_column(TEACHER_COLUMN, [a.tolist() for a in outputs])
    stats["teacher_seconds"] = time.perf_counter() - start
    return out, stats
