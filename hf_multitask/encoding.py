"""Tokenisation that follows a task's pair encoding, length filtering, and dynamic-padding collation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

try:  # only to encode datasets: a saved model loads and runs without it (remote code, see hf_multitask.hub)
    import datasets
except ImportError:  # pragma: no cover - a dependency of the package
    datasets = None  # type: ignore[assignment]
import numpy as np
import torch

from .task_types import IGNORE_INDEX
from .tasks import PAIR_ENCODINGS, TaskSpec

__all__ = ["encode_task", "MultitaskCollator", "MODEL_INPUT_KEYS", "TEACHER_COLUMN", "pad_float_arrays"]

MODEL_INPUT_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "input_ids_b",
    "attention_mask_b",
    "token_type_ids_b",
    "word_mask",
    "choice_mask",
)


def encode_task(
    dataset: datasets.Dataset,
    spec: TaskSpec,
    tokenizer: Any,
    *,
    pair_encoding: str | None = "cross",
    max_length: int | None = None,
    drop_longest: float = 0.0,
) -> datasets.Dataset:
    """Tokenise a dataset made by [`load_task_data()`][hf_multitask.data.load_task_data] for one task.

    Args:
        dataset: Columns ``id``, the task's text columns and (optionally) ``label``.
        spec: The task.
        tokenizer: A Hugging Face tokenizer.
        pair_encoding: For pair tasks: ``"cross"`` puts both sentences in one sequence
            (``[CLS] a [SEP] b [SEP]``); ``"bi"`` and ``"cosine"`` encode them separately
            into ``input_ids`` / ``input_ids_b``. Pass ``model.config.task_pair_encoding(spec)``
            to follow a model. Ignored for single-sentence tasks; None means ``"cross"``.
        max_length: Truncate every sequence to this many tokens (no truncation if None).
        drop_longest: Drop this fraction of the examples with the most tokens
            (``round(p * n)`` examples, ties broken by position). For training data.

    Returns:
        A dataset with ``id``, the model inputs and ``labels`` (if the input had ``label``).
    """
    if pair_encoding is not None and pair_encoding not in PAIR_ENCODINGS:
        raise ValueError(f"pair_encoding must be one of {PAIR_ENCODINGS}, got {pair_encoding!r}")
    if not 0.0 <= drop_longest < 1.0:
        raise ValueError(f"drop_longest must be in [0, 1), got {drop_longest}")
    missing = [c for c in spec.text_columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"Task {spec.name!r}: dataset lacks text column(s) {missing}; it has {dataset.column_names}")
    task_type = spec.task_type
    encoding = pair_encoding if spec.is_pair else None

    def fn(batch: dict[str, list[Any]]) -> dict[str, Any]:
        return task_type.encode_batch(spec, batch, tokenizer, encoding, max_length)

    keep = {"id"}
    remove = [c for c in dataset.column_names if c not in keep]
    encoded = dataset.map(fn, batched=True, remove_columns=remove, desc=f"Tokenising {spec.name}")
    if drop_longest > 0.0 and len(encoded):
        lengths = task_type.lengths(encoded)
        n_drop = int(round(drop_longest * len(lengths)))
        if n_drop:
            order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
            kept = sorted(order[: len(lengths) - n_drop])
            encoded = encoded.select(kept)
    return encoded


TEACHER_COLUMN = "teacher"  # an encoded training example's cached teacher outputs (hf_multitask.distillation)


def pad_float_arrays(values: Sequence[Any]) -> torch.Tensor:
    """One float32 tensor ``(batch, *shape)`` from per-example arrays (numbers, lists or nested
    lists), each axis padded with NaN to the batch's largest size along it (NaN: no value, e.g.
    a teacher's logits past an example's last token)."""
    arrays = [np.asarray(v, dtype=np.float32) for v in values]
    ndims = {a.ndim for a in arrays}
    if len(ndims) != 1:
        raise ValueError(f"teacher outputs of one batch differ in rank: {sorted(ndims)}")
    shape = tuple(max(a.shape[d] for a in arrays) for d in range(arrays[0].ndim))
    out = np.full((len(arrays), *shape), np.nan, dtype=np.float32)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, n) for n in a.shape))] = a
    return torch.from_numpy(out)


def _pad_right(x: torch.Tensor, length: int, value: int) -> torch.Tensor:
    if x.shape[1] == length:
        return x
    pad = x.new_full((x.shape[0], length - x.shape[1]), value)
    return torch.cat([x, pad], dim=1)


def stack_pair_sides(a: dict[str, Any], b: dict[str, Any], pad_token_id: int) -> dict[str, torch.Tensor | None]:
    """Both sides of a siamese pair (dicts of ``input_ids`` / ``attention_mask`` / ``token_type_ids``)
    as one batch, ``a``'s rows first, padded on the right to the longer side: one encoder call
    encodes both. A missing attention mask is all ones; a missing ``token_type_ids`` stays None."""
    length = max(a["input_ids"].shape[1], b["input_ids"].shape[1])
    merged: dict[str, torch.Tensor | None] = {}
    for key, fill in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
        xa, xb = a.get(key), b.get(key)
        if xa is None and key == "attention_mask":
            xa = torch.ones_like(a["input_ids"])
        if xb is None and key == "attention_mask":
            xb = torch.ones_like(b["input_ids"])
        merged[key] = None if xa is None or xb is None else torch.cat([_pad_right(xa, length, fill), _pad_right(xb, length, fill)])
    return merged


class MultitaskCollator:
    """Pads a list of encoded examples to the longest in the batch (dynamic padding).

    Args:
        pad_token_id: Id used to pad ``input_ids`` / ``input_ids_b``.
        task: If given, the batch carries ``"task": task`` so it can be passed straight
            to the model as ``model(**batch)``.
        pad_to_multiple_of: Round padded lengths up (e.g. 8 for tensor cores).
        keep_ids: Keep the example ``id`` strings under ``"ids"`` (for prediction files).

    Labels become ``int64`` when every label is an int, else ``float32``; per-token labels
    (lists) are padded with the ignore index -100, ``word_mask`` with 0.
    """

    def __init__(self, pad_token_id: int, task: str | None = None, pad_to_multiple_of: int | None = None, keep_ids: bool = False) -> None:
        self.pad_token_id = int(pad_token_id)
        self.task = task
        self.pad_to_multiple_of = pad_to_multiple_of
        self.keep_ids = keep_ids

    def _pad(self, seqs: Sequence[Sequence[Any]], value: int) -> torch.Tensor:
        """Pad ``(batch, length)`` lists, or ``(batch, choices, length)`` nested lists (multiple
        choice: every example padded to the batch's most choices and longest sequence)."""
        nested = bool(seqs and len(seqs[0]) and isinstance(seqs[0][0], (list, tuple)))
        rows = [x for s in seqs for x in s] if nested else list(seqs)  # every sequence to pad
        length = max(len(x) for x in rows)
        if self.pad_to_multiple_of:
            length = int(math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of)
        if not nested:
            out = torch.full((len(seqs), length), value, dtype=torch.long)
            for i, s in enumerate(seqs):
                out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            return out
        out = torch.full((len(seqs), max(len(s) for s in seqs), length), value, dtype=torch.long)
        for i, s in enumerate(seqs):
            for j, x in enumerate(s):
                out[i, j, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        return out

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("MultitaskCollator got an empty batch")
        batch: dict[str, Any] = {}
        for key in MODEL_INPUT_KEYS:
            if key in features[0]:
                value = self.pad_token_id if key.startswith("input_ids") else 0
                batch[key] = self._pad([f[key] for f in features], value)
        if "labels" in features[0]:
            labels = [f["labels"] for f in features]
            if isinstance(labels[0], (list, tuple)):  # one label per token: padded with the ignore index
                batch["labels"] = self._pad(labels, IGNORE_INDEX)
            elif all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
                batch["labels"] = torch.tensor(labels, dtype=torch.long)
            else:
                batch["labels"] = torch.tensor(labels, dtype=torch.float32)
        if TEACHER_COLUMN in features[0]:  # distillation: the cached teacher outputs (hf_multitask.distillation)
            batch[TEACHER_COLUMN] = pad_float_arrays([f[TEACHER_COLUMN] for f in features])
        if self.keep_ids and "id" in features[0]:
            batch["ids"] = [f["id"] for f in features]
        if self.task is not None:
            batch["task"] = self.task
        return batch
