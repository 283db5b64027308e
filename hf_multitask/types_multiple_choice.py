"""Multiple choice: a context and up to N candidate endings, one score per (context, choice)."""

from __future__ import annotations

from typing import Any

try:  # only to encode datasets: a saved model loads and runs without it (remote code, see hf_multitask.hub)
    import datasets
except ImportError:  # pragma: no cover - a dependency of the package
    datasets = None  # type: ignore[assignment]
import numpy as np
from torch import nn

from .heads import MLPHead
from .metrics import accuracy
from .task_types import IGNORE_INDEX, TaskType, register_task_type, soft_cross_entropy, softmax

__all__ = ["CHOICE_SEPARATOR", "MultipleChoiceType"]

CHOICE_SEPARATOR = " ||| "  # between the choices of one row in a TSV/CSV file
_MASKED = -1e4  # the score of a padding choice (finite: no NaN in the softmax of an all-masked row)


def _choices(value: Any) -> list[str]:
    if isinstance(value, str):
        return [c.strip() for c in value.split(CHOICE_SEPARATOR.strip())]
    return [str(c).strip() for c in value]


@register_task_type
class MultipleChoiceType(TaskType):
    """Pick one of up to ``num_labels`` candidate endings for a context.

    - **Data**: ``text_columns = (context, choices)``; the choices column holds a list of
      strings (in a TSV/CSV file, one field with the choices separated by ``|||``), the label
      is the index of the right one. Rows may have fewer choices than ``num_labels``: the
      missing ones are padding, masked out of the softmax (``choice_mask``). More are refused:
      a data file's row as a bad row, with its reason; an input to encode (the pipeline's,
      ``predict``'s) as a ``ValueError`` naming the task.
    - **Encoding**: every (context, choice) pair is one cross-encoded sequence, so an example
      is an ``(N, length)`` block of token ids.
    - **Model**: the shared encoder scores each pair through a linear / MLP head with one
      output (pooled like the sentence tasks); softmax over the choices; cross-entropy.
    - **Metric**: accuracy.
    """

    name = "multiple_choice"
    card_type = "multiple-choice"
    metrics = ("accuracy",)
    label_dtype = "int64"

    def validate(self, spec):
        if len(spec.text_columns) != 2:
            raise ValueError(f"TaskSpec {spec.name!r}: multiple choice takes text_columns (context, choices), got {spec.text_columns!r}")
        if spec.num_labels < 2:
            raise ValueError(f"TaskSpec {spec.name!r}: multiple choice needs num_labels (the most choices) >= 2, got {spec.num_labels}")
        if spec.label_range is not None or spec.pair_encoding not in (None, "cross"):
            raise ValueError(f"TaskSpec {spec.name!r}: multiple choice cross-encodes (context, choice); no label_range or siamese encoding")

    def text_feature(self, spec, column=""):
        return datasets.Sequence(datasets.Value("string")) if column == spec.text_columns[1] else datasets.Value("string")

    def check_text(self, spec, value, column=""):
        if column == spec.text_columns[1]:
            if value is None:
                return None, "no choices"
            choices = _choices(value)
            if not 2 <= len(choices) <= spec.num_labels:
                return None, f"{len(choices)} choices; the task takes 2..{spec.num_labels}"
            if any(not c for c in choices):
                return None, "an empty choice"
            return choices, None
        return super().check_text(spec, value, column)

    def parse_label(self, spec, raw):
        try:
            value = int(str(raw).strip()) if not isinstance(raw, (int, np.integer)) else int(raw)
        except (TypeError, ValueError):
            return None, f"label {raw!r} is not a choice index"
        if not 0 <= value < spec.num_labels:
            return None, f"label {raw!r} is out of range 0..{spec.num_labels - 1}"
        return value, None

    def check_row(self, spec, texts, label):
        n = len(texts[spec.text_columns[1]])
        return None if label < n else f"label {label} points past the row's {n} choices"

    def encode_batch(self, spec, batch, tokenizer, pair_encoding, max_length):
        context, choices = spec.text_columns
        out: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "choice_mask": []}
        with_types = None
        for text, options in zip(batch[context], batch[choices]):
            options = _choices(options)
            if len(options) > spec.num_labels:  # the model scores num_labels columns: no answer for a choice past them
                raise ValueError(f"task {spec.name!r}: {len(options)} choices, but it takes at most {spec.num_labels} (its num_labels)")
            enc = tokenizer([text] * len(options), options, truncation=max_length is not None, max_length=max_length, padding=False)
            out["input_ids"].append(enc["input_ids"])
            out["attention_mask"].append(enc["attention_mask"])
            if "token_type_ids" in enc:
                with_types = out.setdefault("token_type_ids", [])
                with_types.append(enc["token_type_ids"])
            out["choice_mask"].append([1] * len(options))
        if "label" in batch:
            out["labels"] = batch["label"]
        return out

    def lengths(self, encoded):
        return [sum(len(c) for c in ids) for ids in encoded["input_ids"]]

    def build_head(self, spec, config, hidden):
        if config.head_type == "lstm":
            raise ValueError(f"Task {spec.name!r}: head_type 'lstm' is not available for multiple choice; use 'linear' or 'mlp'")
        sizes = config.head_hidden_sizes if config.head_type == "mlp" else []
        return MLPHead(hidden, 1, sizes, config.head_dropout)

    def logits(self, model, spec, inputs):
        ids = inputs["input_ids"]
        if ids.dim() != 3:
            raise ValueError(
                f"Task {spec.name!r}: multiple choice takes input_ids of shape (batch, choices, length), got {tuple(ids.shape)}"
            )
        batch, n, length = ids.shape
        flat = {k: (v.reshape(batch * n, length) if v is not None else None) for k, v in
                (("input_ids", ids), ("attention_mask", inputs.get("attention_mask")), ("token_type_ids", inputs.get("token_type_ids")))}  # fmt: skip
        scores = model.heads[spec.name](model.encode(flat["input_ids"], flat["attention_mask"], flat["token_type_ids"])).view(batch, n)
        mask = inputs.get("choice_mask")
        if mask is not None:
            scores = scores.masked_fill(mask == 0, _MASKED)
        if n < spec.num_labels:  # every batch has num_labels columns, the missing ones masked
            scores = nn.functional.pad(scores, (0, spec.num_labels - n), value=_MASKED)
        return scores

    def missing_label(self, spec):
        return IGNORE_INDEX

    def loss(self, spec, logits, labels):
        labels = labels.long().view(-1)
        present = int((labels != IGNORE_INDEX).sum())
        total = nn.functional.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / max(1, present)

    def distillation_loss(self, spec, logits, labels, teacher, gold_weight, temperature=1.0):
        """Cross-entropy over the choices to ``gold_weight * onehot(gold) + (1 - gold_weight) *
        softmax(teacher / T)``; the teacher's padding choices carry its masked score, so they get
        no probability."""
        if gold_weight >= 1.0:
            return self.loss(spec, logits, labels)
        return soft_cross_entropy(logits, labels, teacher, gold_weight, temperature)

    def predictions(self, spec, logits, batch=None):
        return np.asarray(logits).argmax(-1)

    def compute_metrics(self, spec, predictions, labels):
        present = np.asarray(labels).reshape(-1) != IGNORE_INDEX
        value = accuracy(np.asarray(predictions)[present], np.asarray(labels)[present])
        return {"accuracy": value, "score": value}

    def format_prediction(self, spec, prediction):
        return str(int(prediction))

    def accepts(self, spec, item):
        return False  # a context and its choices come as {task: {"context": ..., "choices": [...]}}

    def pipeline_output(self, spec, logits, batch, raw):
        choices = _choices(raw[spec.text_columns[1]])
        probs = softmax(np.asarray(logits)[0][: len(choices)])
        index = int(probs.argmax())
        return {"choice": index, "text": choices[index], "score": float(probs[index])}
