"""Task types: the contract, the registry and the built-in types.

A task type owns everything about one kind of task: how a [`TaskSpec`][hf_multitask.tasks.TaskSpec] of
that kind is validated, how labels are parsed and stored, how examples are tokenised, the head
it builds, how the model turns encoder states into logits, the loss, predictions, metrics and
the ``[0, 1]`` score that feeds ``overall``, and the model card's task type. The rest of the
library asks the type (``get_task_type(spec.kind)``) and never switches on the kind, so a new
type is one module and one [`register_task_type()`][hf_multitask.task_types.register_task_type] call.

| type | what | head | loss | metrics |
|---|---|---|---|---|
| ``classification`` | one or two sentences, one class | linear / MLP / LSTM / cosine (pairs) | cross-entropy | accuracy |
| ``regression`` | one or two sentences, one number | linear / MLP / LSTM / cosine (pairs) | MSE | Pearson, Spearman |
| ``token_classification`` | one tag per word | linear / MLP per token | cross-entropy over first sub-tokens | word accuracy, entity F1 |
| ``multiple_choice`` | a context and up to N choices | linear / MLP score per (context, choice) | cross-entropy over choices | accuracy |

The built-in types live in flat modules next to this one (``types_sequence.py``,
``types_token_classification.py``, ``types_multiple_choice.py``): saved checkpoints carry the package's modules for
``trust_remote_code``, which copies flat files only. Each registers itself with the
``@register_task_type`` decorator; [`hf_multitask.tasks`][hf_multitask.tasks] imports them, so a ``TaskSpec``
always finds its kind, and this module imports none of them (imports flow one way: registry,
task types, tasks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:  # only to encode datasets: a saved model loads and runs without it (remote code, see hf_multitask.hub)
    import datasets
except ImportError:  # pragma: no cover - a dependency of the package
    datasets = None  # type: ignore[assignment]
import numpy as np
import torch
from torch import nn

from .registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from .tasks import TaskSpec

__all__ = ["IGNORE_INDEX", "TASK_TYPES", "TaskType", "get_task_type", "register_task_type", "soft_cross_entropy"]

IGNORE_INDEX = -100


class TaskType:
    """Base class of task types (see the module docstring); subclasses set ``name`` and override."""

    name = "base"
    card_type = "other"  # the model card's / pipeline's task type
    metrics: tuple[str, ...] = ()  # metric names; the first is the default
    label_dtype = "int64"  # how labels are stored ("int64", "float32"; lists of them for sequence labels)
    sequence_labels = False  # True: one label per word (text_columns hold token lists)
    # how logits compare and combine: "scores" (class scores over the last axis: SMART's symmetric
    # KL, an ensemble's mean probability or vote) or "values" (squared error, the mean)
    logits_kind = "scores"
    # each example has one label from a fixed class set: class rebalancing (EDA) and the SST
    # adjustment matrix apply
    label_classes = False

    # --- the spec --------------------------------------------------------------------------
    def validate(self, spec: TaskSpec) -> None:
        """Raise ``ValueError`` naming the task when the spec's fields do not fit the type."""

    def validate_model(self, spec: TaskSpec, config: Any) -> None:
        """Raise ``ValueError`` naming the task when the model's settings (``config``: the
        [`MultitaskConfig`][hf_multitask.configuration.MultitaskConfig], e.g. its pair encoding) do not fit the task."""

    # --- data --------------------------------------------------------------------------------
    def parse_label(self, spec: TaskSpec, raw: Any) -> tuple[Any, str | None]:
        """``(label, None)`` or ``(None, reason)`` for one raw label value from a file or dataset."""
        raise NotImplementedError

    def missing_label(self, spec: TaskSpec) -> Any:
        """The value that marks a missing label (partial labels): masked by the loss and the
        metrics, never trained on. None: this type has no missing-label marker."""
        return None

    def has_labels(self, spec: TaskSpec, labels: torch.Tensor) -> bool:
        """Whether a batch's labels hold at least one label that is not missing: the trainer
        skips a task whose batch has none (partial labels). Derived from [`loss_terms()`][hf_multitask.task_types.TaskType.loss_terms],
        so a type with a marker or its own count need not override it."""
        return self.loss_terms(spec, labels) > 0

    def label_feature(self, spec: TaskSpec) -> Any:
        """The ``datasets`` feature labels are stored as."""
        return datasets.Value(self.label_dtype)

    def text_feature(self, spec: TaskSpec, column: str = "") -> Any:
        """The ``datasets`` feature of a text column."""
        return datasets.Value("string")

    def check_text(self, spec: TaskSpec, value: Any, column: str = "") -> tuple[Any, str | None]:
        """``(text, None)`` or ``(None, reason)`` for one text field (``column`` names it)."""
        if value is None or not str(value).strip():
            return None, "empty text"
        return str(value).strip(), None

    def check_row(self, spec: TaskSpec, texts: dict[str, Any], label: Any) -> str | None:
        """Why a row whose texts and label each parsed cannot be used together (e.g. a tag
        count that differs from the word count), or None."""
        return None

    def encode_batch(self, spec: TaskSpec, batch: dict[str, list[Any]], tokenizer: Any, pair_encoding: str | None,
                     max_length: int | None) -> dict[str, list[Any]]:  # fmt: skip
        """Tokenise a batch of rows (``batch`` holds the text columns and maybe ``label``).

        The pipeline tokenises an input once for the tasks whose type shares this method and that
        read it the same way (text columns, pair encoding, ``subword_labels``), so the result
        must depend on the spec through those alone."""
        raise NotImplementedError

    def lengths(self, encoded: datasets.Dataset) -> list[int]:
        """Token count of every encoded example (for length grouping and ``drop_longest``)."""
        lengths = [len(x) for x in encoded["input_ids"]]
        if "input_ids_b" in encoded.column_names:
            lengths = [a + len(b) for a, b in zip(lengths, encoded["input_ids_b"])]
        return lengths

    # --- the model ---------------------------------------------------------------------------
    def build_head(self, spec: TaskSpec, config: Any, hidden: int) -> nn.Module:
        """The task's head (``config``: the [`MultitaskConfig`][hf_multitask.configuration.MultitaskConfig]; ``hidden``: the encoder's width)."""
        raise NotImplementedError

    def logits(self, model: Any, spec: TaskSpec, inputs: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """The head's output for a batch (``inputs``: the model's keyword inputs)."""
        raise NotImplementedError

    def loss(self, spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss in fp32 (missing labels, [`missing_label()`][hf_multitask.task_types.TaskType.missing_label], left out)."""
        raise NotImplementedError

    def loss_terms(self, spec: TaskSpec, labels: torch.Tensor) -> int:
        """How many labels a batch's [`loss()`][hf_multitask.task_types.TaskType.loss] averages over. Evaluation weights each
        batch's mean loss by it, so a task's loss is the mean over all its labels however the
        examples are batched. Default: the labels that are not [`missing_label()`][hf_multitask.task_types.TaskType.missing_label] (one per
        example when the type has no marker)."""
        marker = self.missing_label(spec)
        if marker is None:
            if labels.numel() == 0:
                return 0
            return int(labels.shape[0]) if labels.dim() else 1
        if isinstance(marker, float) and marker != marker:  # NaN marks a missing number
            return int((~torch.isnan(labels.float())).sum())
        return int((labels != marker).sum())

    def shares_states(self, model: Any, spec: TaskSpec, batch: dict[str, Any]) -> bool:
        """Whether the task's logits can come from token states computed once for several
        tasks ([`MultitaskModel.forward_all()`][hf_multitask.modeling.MultitaskModel.forward_all]); then [`logits_from_states()`][hf_multitask.task_types.TaskType.logits_from_states] gives them."""
        return False

    def logits_from_states(self, model: Any, spec: TaskSpec, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The logits from token ``states`` the encoder computed once for several tasks (when [`shares_states()`][hf_multitask.task_types.TaskType.shares_states])."""
        raise NotImplementedError

    # --- distillation (BAM!'s teacher annealing, see hf_multitask.distillation) --------------
    def teacher_outputs(self, spec: TaskSpec, logits: np.ndarray, batch: dict[str, Any]) -> list[np.ndarray]:
        """What a teacher's batch of ``logits`` leaves for each example, to be cached and
        collated back as the ``teacher`` column (float32 arrays; examples of one batch may differ
        in shape, the collator pads them with NaN). Default: each example's logits row as it is;
        a type whose rows carry padding (per-token logits) cuts it off."""
        return [np.asarray(row, dtype=np.float32) for row in np.asarray(logits)]

    def distillation_loss(self, spec: TaskSpec, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor,
                          gold_weight: float, temperature: float = 1.0) -> torch.Tensor:  # fmt: skip
        """The loss to the mixed target ``gold_weight * gold + (1 - gold_weight) * teacher``
        (``teacher``: the collated ``teacher`` column). With ``gold_weight == 1`` it must equal
        [`loss()`][hf_multitask.task_types.TaskType.loss]. A type without one cannot be distilled into; it says so by name."""
        raise NotImplementedError(
            f"Task {spec.name!r}: task type {self.name!r} defines no distillation target (TaskType.distillation_loss); "
            "train it without a teacher"
        )

    # --- predictions and metrics -------------------------------------------------------------
    def predictions(self, spec: TaskSpec, logits: np.ndarray, batch: dict[str, Any]) -> np.ndarray:
        """One prediction per example (an object array of per-word arrays for sequence labels)."""
        raise NotImplementedError

    def gold(self, spec: TaskSpec, labels: np.ndarray, batch: dict[str, Any]) -> np.ndarray:
        """The batch's gold labels, one per example, in the form [`predictions()`][hf_multitask.task_types.TaskType.predictions] returns."""
        return labels

    def compute_metrics(self, spec: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """``{metric: value, ..., "score": value in [0, 1]}``."""
        raise NotImplementedError

    def score(self, spec: TaskSpec, metric: str, value: float) -> float:
        """``value`` of ``metric`` mapped to ``[0, 1]`` for ``overall`` (as it is, by default)."""
        return float(value)

    def format_prediction(self, spec: TaskSpec, prediction: Any) -> str:
        """One prediction as text for prediction files."""
        return str(prediction)

    # --- the pipeline ------------------------------------------------------------------------
    def accepts(self, spec: TaskSpec, item: Any) -> bool:
        """Whether a bare pipeline input (no ``{task: input}`` dict) is for this task: a string
        for one-column tasks, a pair of strings for two-column tasks."""
        if isinstance(item, str):
            return len(spec.text_columns) == 1
        return len(spec.text_columns) == 2 and isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)

    def pipeline_output(self, spec: TaskSpec, logits: np.ndarray, batch: dict[str, Any], raw: dict[str, Any]) -> Any:
        """The pipeline's answer for one example (``logits`` and ``batch`` hold that example only)."""
        return self.predictions(spec, logits, batch)[0].tolist()


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def soft_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor, gold_weight: float, temperature: float
) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (``(N, C)`` class scores) to the mixed soft target
    ``p = gold_weight * onehot(labels) + (1 - gold_weight) * softmax(teacher / temperature)``,
    over the rows whose label is not `IGNORE_INDEX` (in fp32):

        L = -(1 / |present|) * sum_i sum_c p_ic * log_softmax(logits_i)_c

    The temperature softens the teacher's distribution only; the student's scores are taken as
    they are, so at ``gold_weight == 1`` this is the plain cross-entropy to the gold class."""
    labels = labels.long().reshape(-1)
    present = labels != IGNORE_INDEX
    scores = logits.float().reshape(labels.numel(), -1)[present]
    soft = torch.softmax(teacher.float().reshape(labels.numel(), -1)[present] / temperature, dim=-1)
    target = (1.0 - gold_weight) * soft
    target = target.scatter_add(1, labels[present].unsqueeze(1), torch.full_like(target[:, :1], gold_weight))
    return -(target * torch.log_softmax(scores, dim=-1)).sum() / present.sum().clamp_min(1)


TASK_TYPES: Registry[TaskType] = Registry("task type")


def register_task_type(task_type: TaskType | type[TaskType]) -> TaskType:
    """Register a task type (an instance or a class) under its ``name``; usable as a decorator."""
    instance = task_type() if isinstance(task_type, type) else task_type
    if not isinstance(instance, TaskType):
        raise TypeError(f"register_task_type takes a TaskType, got {type(instance).__name__}")
    TASK_TYPES.register(instance.name, instance)
    return task_type  # type: ignore[return-value]


def get_task_type(name: str) -> TaskType:
    """The registered task type called ``name`` (a `RegistryError`,
    also a ``ValueError``, lists them otherwise)."""
    return TASK_TYPES.get_entry(name)
