"""Task specifications: one [`TaskSpec`][hf_multitask.tasks.TaskSpec] drives heads, losses, metrics and data loading."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .conllu import UPOS_TAGS
from .spec_inference import features_of, infer_task_fields
from .task_types import TASK_TYPES, TaskType, get_task_type

# importing the built-in task types registers them (each class is decorated with @register_task_type;
# `from .module import Name`, not `from . import module`: trust_remote_code copies only the former)
from .types_multiple_choice import MultipleChoiceType  # noqa: F401
from .types_sequence import ClassificationType, RegressionType  # noqa: F401
from .types_token_classification import TokenClassificationType  # noqa: F401

TaskKind = str  # a registered task type: "classification", "regression", "token_classification", ...
PairEncoding = Literal["cross", "bi", "cosine"]

PAIR_ENCODINGS: tuple[str, ...] = ("cross", "bi", "cosine")
SUBWORD_LABELS: tuple[str, ...] = ("first", "all")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class TaskSpec:
    """Everything the library needs to know about one task.

    Args:
        name: Unique task name, used as the ``task=`` argument of the model and as the
            metric prefix. Letters, digits, ``_`` and ``-``; must start with a letter.
        kind: The task type (see [`hf_multitask.task_types`][hf_multitask.task_types]): ``"classification"``
            (cross-entropy loss, accuracy), ``"regression"`` (mean squared error, Pearson r),
            ``"token_classification"`` (one tag per word) or any registered type.
        num_labels: Number of classes (tags); must be 1 for regression.
        text_columns: One column for a single-sentence task, two for a sentence-pair task;
            for token classification the one column holding the words.
        label_column: Column holding the gold label.
        label_range: ``(low, high)`` of valid labels for regression (inclusive). Used to
            validate data, to scale the cosine pair head and to normalise the metric.
            Classification labels are always ``0 .. num_labels - 1``.
        metric: Metric reported for this task; defaults to ``accuracy`` for classification
            and ``pearson`` for regression.
        pair_encoding: Overrides the model-wide pair encoding for this task
            (``"cross"``, ``"bi"`` or ``"cosine"``). Ignored by single-sentence tasks.
        id_column: Column holding the example id (generated from the row number if absent).
        label_names: Names of the classes / tags, index order. Labels in the data may be
            given by name; predictions are written as names.
        subword_labels: Token classification: label the first sub-token of each word only
            (``"first"``, the rest are ignored by the loss) or every sub-token (``"all"``).
        metric_group: Tasks that share a ``metric_group`` are scored as one: their predictions
            are pooled for the group's metric (``{group}_{metric}``, ``{group}_score``) and
            ``overall`` counts the group once, as a benchmark scores one task split into
            several heads (TweetEval's stance: five targets, one metric over all of them).
            Members must share kind, ``num_labels`` and metric; each keeps its own metrics too.
    """

    name: str
    kind: TaskKind
    num_labels: int
    text_columns: tuple[str, ...]
    label_column: str = "label"
    label_range: tuple[float, float] | None = None
    metric: str | None = None
    pair_encoding: PairEncoding | None = None
    id_column: str = "id"
    label_names: tuple[str, ...] | None = None
    subword_labels: str = "first"
    metric_group: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"TaskSpec name {self.name!r} must start with a letter and hold only letters, digits, '_' or '-'")
        try:
            task_type = get_task_type(self.kind)
        except ValueError:
            raise ValueError(
                f"TaskSpec {self.name!r}: kind must be a registered task type {sorted(TASK_TYPES)}, got {self.kind!r}"
            ) from None
        cols = self.text_columns
        if isinstance(cols, str):
            cols = (cols,)
        object.__setattr__(self, "text_columns", tuple(cols))
        if not self.text_columns or not all(isinstance(c, str) and c for c in self.text_columns):
            raise ValueError(f"TaskSpec {self.name!r}: text_columns must be column names, got {self.text_columns!r}")
        object.__setattr__(self, "num_labels", int(self.num_labels))
        if self.label_names is not None:
            names = tuple(str(n) for n in self.label_names)
            if len(names) != self.num_labels or len(set(names)) != len(names):
                raise ValueError(f"TaskSpec {self.name!r}: label_names must be {self.num_labels} distinct names, got {list(names)}")
            object.__setattr__(self, "label_names", names)
        if self.subword_labels not in SUBWORD_LABELS:
            raise ValueError(f"TaskSpec {self.name!r}: subword_labels must be one of {SUBWORD_LABELS}, got {self.subword_labels!r}")
        if self.label_range is not None:
            lo, hi = (float(x) for x in self.label_range)
            if not lo < hi:
                raise ValueError(f"TaskSpec {self.name!r}: label_range must be (low, high) with low < high, got {self.label_range!r}")
            object.__setattr__(self, "label_range", (lo, hi))
        metric = self.metric or task_type.metrics[0]
        if metric not in task_type.metrics:
            raise ValueError(f"TaskSpec {self.name!r}: metric {metric!r} is not available for {self.kind}; choose from {task_type.metrics}")
        object.__setattr__(self, "metric", metric)
        if self.pair_encoding is not None and self.pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"TaskSpec {self.name!r}: pair_encoding must be one of {PAIR_ENCODINGS}, got {self.pair_encoding!r}")
        if self.metric_group is not None and (not isinstance(self.metric_group, str) or not _NAME_RE.match(self.metric_group)):
            raise ValueError(f"TaskSpec {self.name!r}: metric_group {self.metric_group!r} must be a name like a task's")
        task_type.validate(self)

    @classmethod
    def from_dataset(
        cls,
        source: Any,
        text_columns: str | Sequence[str],
        label_column: str = "label",
        *,
        name: str | None = None,
        split: str = "train",
        subset: str | None = None,
        **overrides: Any,
    ) -> TaskSpec:
        """A task described by a dataset's features (see `hf_multitask.spec_inference.infer_task_fields()`):
        ``ClassLabel`` -> classification with its names, list of ``ClassLabel`` -> token
        classification, float -> regression, a list-of-strings column next to a string column
        -> multiple choice. ``source`` is a ``datasets.Dataset`` / ``DatasetDict`` or a Hub id
        (only its metadata is read; offline, a [`DataError`][hf_multitask.reading.DataError] says what to
        do). ``overrides`` set or replace any field (``kind=`` and ``num_labels=`` together skip
        the inference)."""
        columns = (text_columns,) if isinstance(text_columns, str) else tuple(text_columns)
        features, default_name = features_of(source, split=split, subset=subset)
        explicit = {"kind", "num_labels"} <= set(overrides)
        fields = {} if explicit else infer_task_fields(features, columns, label_column)
        fields.update(overrides)
        task_name = name or re.sub(r"[^A-Za-z0-9_\-]", "_", default_name)
        if not task_name[:1].isalpha():
            task_name = f"task_{task_name}"
        return cls(name=task_name, text_columns=columns, label_column=label_column, **fields)

    @property
    def task_type(self) -> TaskType:
        """The [`TaskType`][hf_multitask.task_types.TaskType] that owns this task's kind."""
        return get_task_type(self.kind)

    @property
    def is_pair(self) -> bool:
        """True for sentence-pair tasks (two text columns)."""
        return len(self.text_columns) == 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, stored in [`MultitaskConfig`][hf_multitask.configuration.MultitaskConfig]."""
        d = dataclasses.asdict(self)
        d["text_columns"] = list(self.text_columns)
        if self.label_range is not None:
            d["label_range"] = list(self.label_range)
        if self.label_names is not None:
            d["label_names"] = list(self.label_names)
        for key, default in (("label_names", None), ("subword_labels", "first"), ("metric_group", None)):
            if d[key] == default:
                del d[key]  # configs saved before these fields existed stay identical
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        """Inverse of [`to_dict()`][hf_multitask.tasks.TaskSpec.to_dict]; unknown keys raise a clear error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"Unknown TaskSpec field(s) {sorted(unknown)}; known fields are {sorted(known)}")
        data = dict(data)
        if data.get("label_range") is not None:
            data["label_range"] = tuple(data["label_range"])
        if data.get("label_names") is not None:
            data["label_names"] = tuple(data["label_names"])
        return cls(**data)


class TaskLookup:
    """``task_names`` and ``get_task`` over a model's ``_specs`` (``{name: TaskSpec}``), shared by every
    kind of model prediction runs on."""

    _specs: dict[str, TaskSpec]

    @property
    def task_names(self) -> list[str]:
        return list(self._specs)

    def get_task(self, task: str) -> TaskSpec:
        """The [`TaskSpec`][hf_multitask.tasks.TaskSpec] of ``task``; unknown names raise ``KeyError`` listing known tasks."""
        try:
            return self._specs[task]
        except KeyError:
            raise KeyError(f"Unknown task {task!r}; this model knows {list(self._specs)}") from None


def metric_groups(specs: Sequence[TaskSpec]) -> dict[str, list[str]]:
    """``{group: [member task, ...]}`` of the tasks' ``metric_group``s, in task order; a
    ``ValueError`` names a group whose members differ in kind, ``num_labels`` or metric (their
    predictions could not be pooled under one metric) or that shares a name with a task."""
    groups: dict[str, list[TaskSpec]] = {}
    for spec in specs:
        if spec.metric_group is not None:
            groups.setdefault(spec.metric_group, []).append(spec)
    names = {s.name for s in specs}
    for group, members in groups.items():
        if group in names:
            raise ValueError(f"metric_group {group!r} is also a task's name: its pooled metrics would overwrite the task's")
        shapes = {(m.kind, m.num_labels, m.metric) for m in members}
        if len(shapes) > 1:
            raise ValueError(
                f"metric_group {group!r}: its tasks {[m.name for m in members]} must share kind, num_labels and metric to be "
                f"pooled, got {sorted(shapes)}"
            )
    return {group: [m.name for m in members] for group, members in groups.items()}


def member_tasks(names: Sequence[str], specs: Sequence[TaskSpec]) -> list[str]:
    """``names`` with each metric group's name replaced by its member tasks (task names kept):
    where a group stands for its tasks, e.g. a primary group whose tasks must be trained."""
    groups = metric_groups(specs)
    return [member for name in names for member in groups.get(name, [name])]


def sst_task(name: str = "sst") -> TaskSpec:
    """SST-5 sentiment in the CS224N file format (5 classes, accuracy)."""
    return TaskSpec(name=name, kind="classification", num_labels=5, text_columns=("sentence",), label_column="sentiment")


def quora_task(name: str = "quora") -> TaskSpec:
    """Quora Question Pairs paraphrase detection in the CS224N format (binary, accuracy)."""
    return TaskSpec(name=name, kind="classification", num_labels=2, text_columns=("sentence1", "sentence2"), label_column="is_duplicate")


def sts_task(name: str = "sts") -> TaskSpec:
    """STS-B similarity in the CS224N format (0-5 regression, Pearson r)."""
    return TaskSpec(
        name=name,
        kind="regression",
        num_labels=1,
        text_columns=("sentence1", "sentence2"),
        label_column="similarity",
        label_range=(0.0, 5.0),
    )


def upos_task(name: str = "upos") -> TaskSpec:
    """Universal POS tagging (17 UPOS tags, word accuracy) on a CoNLL-U file such as UD
    English-EWT (``en_ewt-ud-dev.conllu``): words from FORM, tags from UPOS."""
    return TaskSpec(name=name, kind="token_classification", num_labels=len(UPOS_TAGS), text_columns=("tokens",),
                    label_column="upos", label_names=UPOS_TAGS, metric="accuracy")  # fmt: skip


def reference_tasks() -> list[TaskSpec]:
    """The reference trio: SST-5, Quora and STS-B."""
    return [sst_task(), quora_task(), sts_task()]


def as_task_spec(task: TaskSpec | dict[str, Any]) -> TaskSpec:
    """Accept a TaskSpec or its dict form."""
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, dict):
        return TaskSpec.from_dict(task)
    raise TypeError(f"Expected a TaskSpec or dict, got {type(task).__name__}")
