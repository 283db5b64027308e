"""Sentence and sentence-pair tasks: classification and regression over one pooled vector
(or a siamese pair of them, with the ``bi`` / ``cosine`` pair encodings)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .heads import CosineHead, LSTMHead, MLPHead, pair_features
from .metrics import accuracy, macro_f1, pearson, positive_f1, spearman, stance_f1
from .task_types import IGNORE_INDEX, TaskType, register_task_type, soft_cross_entropy, softmax

if TYPE_CHECKING:  # pragma: no cover
    from .tasks import TaskSpec

__all__ = ["ClassificationType", "RegressionType", "SequenceTaskType"]

_METRIC_FNS = {"accuracy": accuracy, "macro_f1": macro_f1, "positive_f1": positive_f1, "stance_f1": stance_f1, "pearson": pearson,
               "spearman": spearman}  # fmt: skip


def _tokenize(tokenizer: Any, first: list[str], second: list[str] | None, max_length: int | None) -> dict[str, list[list[int]]]:
    enc = tokenizer(first, second, truncation=max_length is not None, max_length=max_length, padding=False)
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


def _number(raw: Any) -> tuple[float | None, str | None]:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None, "empty label"
    if isinstance(raw, bool):
        raw = int(raw)
    try:
        value = float(raw.strip()) if isinstance(raw, str) else float(raw)
    except (TypeError, ValueError):
        return None, f"label {raw!r} is not a number"
    if not math.isfinite(value):
        return None, f"label {raw!r} is not finite"
    return value, None


class SequenceTaskType(TaskType):
    """One or two text columns, one label per example; the pair encodings apply."""

    def validate(self, spec: TaskSpec) -> None:
        if len(spec.text_columns) not in (1, 2):
            raise ValueError(f"TaskSpec {spec.name!r}: text_columns must be one or two column names, got {spec.text_columns!r}")

    def encode_batch(self, spec, batch, tokenizer, pair_encoding, max_length):
        cols = spec.text_columns
        if not spec.is_pair:
            out = _tokenize(tokenizer, batch[cols[0]], None, max_length)
        elif pair_encoding not in ("bi", "cosine"):
            out = _tokenize(tokenizer, batch[cols[0]], batch[cols[1]], max_length)
        else:
            out = _tokenize(tokenizer, batch[cols[0]], None, max_length)
            out.update({f"{k}_b": v for k, v in _tokenize(tokenizer, batch[cols[1]], None, max_length).items()})
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    def build_head(self, spec, config, hidden):
        encoding = config.task_pair_encoding(spec)
        if encoding == "cosine":
            return CosineHead(spec.label_range, classifier=self.logits_kind == "scores")
        if config.head_type == "lstm" and encoding != "bi":
            return LSTMHead(hidden, spec.num_labels, config.head_hidden_sizes, config.head_dropout)
        in_features = 4 * hidden if encoding == "bi" else hidden
        sizes = config.head_hidden_sizes if config.head_type == "mlp" else []
        return MLPHead(in_features, spec.num_labels, sizes, config.head_dropout)

    def logits(self, model, spec, inputs):
        encoding = model.config.task_pair_encoding(spec)
        head = model.heads[spec.name]
        input_ids, attention_mask, token_type_ids = inputs["input_ids"], inputs.get("attention_mask"), inputs.get("token_type_ids")
        if encoding in ("bi", "cosine"):
            if inputs.get("input_ids_b") is None:
                raise ValueError(f"Task {spec.name!r} uses the {encoding!r} pair encoding: pass the second sentence as input_ids_b")
            u, v = model.encode_pair(
                {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids},
                {"input_ids": inputs["input_ids_b"], "attention_mask": inputs.get("attention_mask_b"),
                 "token_type_ids": inputs.get("token_type_ids_b")},
            )  # fmt: skip
            logits = head(u, v) if encoding == "cosine" else head(pair_features(u, v))
        elif isinstance(head, LSTMHead):
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            logits = head(model.encode_tokens(input_ids, mask, token_type_ids), mask)
        else:
            logits = head(model.encode(input_ids, attention_mask, token_type_ids))
        return self._adjusted(model, spec, logits)

    def shares_states(self, model, spec, batch):
        return model.config.task_pair_encoding(spec) not in ("bi", "cosine")  # siamese pairs encode two inputs

    def logits_from_states(self, model, spec, states, attention_mask):
        head = model.heads[spec.name]
        logits = head(states, attention_mask) if isinstance(head, LSTMHead) else head(model.pool(states, attention_mask))
        return self._adjusted(model, spec, logits)

    @staticmethod
    def _adjusted(model, spec, logits):
        """The task's SST adjustment matrix (``adjustment_tasks``) on its logits, if it has one:
        the one place both logits paths (own encoding, shared states) apply it."""
        return model.adjustments[spec.name](logits) if spec.name in model.adjustments else logits

    def _present(self, labels: np.ndarray) -> np.ndarray:
        return np.ones(np.shape(labels)[0], dtype=bool)

    def compute_metrics(self, spec, predictions, labels):
        metric = spec.metric or self.metrics[0]
        present = self._present(np.asarray(labels))  # partial labels: missing ones are not scored
        value = _METRIC_FNS[metric](np.asarray(predictions)[present], np.asarray(labels)[present])
        return {metric: value, "score": self.score(spec, metric, value)}


@register_task_type
class ClassificationType(SequenceTaskType):
    """Single-sentence or sentence-pair classification: cross-entropy; accuracy, macro-F1, the F1
    of class 1 (``positive_f1``) or the mean F1 of classes 1 and 2 (``stance_f1``)."""

    name = "classification"
    card_type = "text-classification"
    metrics = ("accuracy", "macro_f1", "positive_f1", "stance_f1")
    label_dtype = "int64"
    label_classes = True

    def validate(self, spec):
        super().validate(spec)
        if spec.num_labels < 2:
            raise ValueError(f"TaskSpec {spec.name!r}: classification needs num_labels >= 2, got {spec.num_labels}")
        if spec.label_range is not None:
            raise ValueError(f"TaskSpec {spec.name!r}: label_range is for regression tasks only")
        if spec.metric == "stance_f1" and spec.num_labels < 3:
            raise ValueError(f"TaskSpec {spec.name!r}: stance_f1 averages the F1 of classes 1 and 2; it needs num_labels >= 3")
        self._check_cosine(spec, spec.pair_encoding, "TaskSpec")

    def validate_model(self, spec, config):
        if spec.is_pair:  # the model-wide pair encoding applies too
            self._check_cosine(spec, config.task_pair_encoding(spec), "Task")

    @staticmethod
    def _check_cosine(spec, encoding, who):
        if encoding == "cosine" and spec.num_labels != 2:
            raise ValueError(f"{who} {spec.name!r}: the cosine pair head supports regression or binary classification only")

    def parse_label(self, spec, raw):
        if isinstance(raw, str) and spec.label_names and raw.strip() in spec.label_names:
            return spec.label_names.index(raw.strip()), None
        value, reason = _number(raw)
        if reason is not None:
            return None, reason
        if value != int(value):
            return None, f"label {raw!r} is not a whole class index"
        if not 0 <= value < spec.num_labels:
            return None, f"label {raw!r} is out of range 0..{spec.num_labels - 1}"
        return int(value), None

    def missing_label(self, spec):
        return IGNORE_INDEX

    def _present(self, labels):
        return labels.reshape(-1) != IGNORE_INDEX

    def loss(self, spec, logits, labels):
        if labels.is_floating_point():
            if not torch.equal(labels, labels.round()):
                raise ValueError(f"Task {spec.name!r}: classification labels must be whole numbers")
            labels = labels.long()
        labels = labels.view(-1)
        present = labels[labels != IGNORE_INDEX]  # partial labels: -100 marks a missing one
        if present.numel() and (int(present.min()) < 0 or int(present.max()) >= spec.num_labels):
            raise ValueError(
                f"Task {spec.name!r}: labels must be in 0..{spec.num_labels - 1}, got values in {int(present.min())}..{int(present.max())}"
            )
        if present.numel() == labels.numel():
            return nn.functional.cross_entropy(logits.float(), labels)
        total = nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / max(1, present.numel())

    def distillation_loss(self, spec, logits, labels, teacher, gold_weight, temperature=1.0):
        """Cross-entropy to ``gold_weight * onehot(gold) + (1 - gold_weight) * softmax(teacher / T)``
        ([`soft_cross_entropy()`][hf_multitask.task_types.soft_cross_entropy]); unlabelled rows are left out."""
        if gold_weight >= 1.0:
            return self.loss(spec, logits, labels)
        return soft_cross_entropy(logits, labels, teacher, gold_weight, temperature)

    def predictions(self, spec, logits, batch=None):
        logits = np.asarray(logits)
        return logits.reshape(len(logits), -1).argmax(-1)

    def format_prediction(self, spec, prediction):
        """The class name when the task has ``label_names`` (as the pipeline answers and a tagger's
        files hold), else the class index. (TweetEval's official test files keep indices: their
        writer is the benchmark's own.)"""
        return spec.label_names[int(prediction)] if spec.label_names else str(int(prediction))

    def pipeline_output(self, spec, logits, batch, raw):
        probs = softmax(np.asarray(logits).reshape(1, -1))[0]
        index = int(probs.argmax())
        return {"label": spec.label_names[index] if spec.label_names else index, "score": float(probs[index])}


@register_task_type
class RegressionType(SequenceTaskType):
    """Single-sentence or sentence-pair regression: mean squared error, Pearson r (or Spearman)."""

    name = "regression"
    card_type = "text-regression"
    metrics = ("pearson", "spearman")
    label_dtype = "float32"
    logits_kind = "values"

    def validate(self, spec):
        super().validate(spec)
        if spec.num_labels != 1:
            raise ValueError(f"TaskSpec {spec.name!r}: regression needs num_labels == 1, got {spec.num_labels}")

    def parse_label(self, spec, raw):
        value, reason = _number(raw)
        if reason is not None:
            return None, reason
        if spec.label_range is not None:
            lo, hi = spec.label_range
            if not lo <= value <= hi:
                return None, f"label {raw!r} is out of range [{lo:g}, {hi:g}]"
        return value, None

    def missing_label(self, spec):
        return float("nan")

    def _present(self, labels):
        return ~np.isnan(labels.astype(np.float64).reshape(-1))

    def loss(self, spec, logits, labels):
        pred, gold = logits.float().view(-1), labels.float().view(-1)
        present = ~torch.isnan(gold)  # partial labels: NaN marks a missing one
        if bool(present.all()):
            return nn.functional.mse_loss(pred, gold)
        return ((pred - gold.nan_to_num()) ** 2 * present).sum() / present.sum().clamp_min(1)

    def distillation_loss(self, spec, logits, labels, teacher, gold_weight, temperature=1.0):
        """Squared error to the mixed value ``gold_weight * gold + (1 - gold_weight) * teacher``
        (the temperature does not apply to a value); unlabelled (NaN) rows are left out."""
        if gold_weight >= 1.0:
            return self.loss(spec, logits, labels)
        gold = labels.float().reshape(-1)
        return self.loss(spec, logits, gold_weight * gold + (1.0 - gold_weight) * teacher.float().reshape(-1))

    def score(self, spec, metric, value):
        return (float(value) + 1.0) / 2.0  # a correlation in [-1, 1]

    def predictions(self, spec, logits, batch=None):
        return np.asarray(logits).reshape(-1).astype(np.float64)

    def format_prediction(self, spec, prediction):
        return str(float(prediction))

    def pipeline_output(self, spec, logits, batch, raw):
        return {"value": float(np.asarray(logits).reshape(-1)[0])}
