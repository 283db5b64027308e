"""``TaskSpec.from_dataset``: a task described by a ``datasets`` dataset's features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:  # only to encode datasets: a saved model loads and runs without it (remote code, see hf_multitask.hub)
    import datasets
except ImportError:  # pragma: no cover - a dependency of the package
    datasets = None  # type: ignore[assignment]

from .reading import DataError

__all__ = ["infer_task_fields"]


def _is_list(feature: Any) -> bool:
    return isinstance(feature, (datasets.Sequence, getattr(datasets, "List", datasets.Sequence))) or isinstance(feature, list)


def _inner(feature: Any) -> Any:
    return feature[0] if isinstance(feature, list) else feature.feature


def _is_text(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def features_of(source: Any, split: str = "train", subset: str | None = None) -> tuple[datasets.Features, str]:
    """The features of a ``datasets.Dataset`` / ``DatasetDict`` or of a Hub dataset id (its
    builder's info: no data is downloaded beyond the dataset's metadata), and a name for it."""
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise ValueError(f"the DatasetDict has splits {list(source)}, not {split!r}")
        source = source[split]
    if isinstance(source, datasets.Dataset):
        return source.features, (source.info.dataset_name or "task")
    if isinstance(source, str):
        try:
            builder = datasets.load_dataset_builder(source, subset)
        except Exception as err:  # offline with a cold cache, unknown id, no network
            raise DataError(
                f"Could not read the features of the Hub dataset {source!r}: {type(err).__name__}: {err}. "
                "With no network, build the dataset in memory (datasets.Dataset) and pass it instead."
            ) from err
        if builder.info.features is None:
            raise DataError(f"The Hub dataset {source!r} does not declare its features; pass kind= and num_labels= yourself")
        return builder.info.features, source.split("/")[-1]
    raise TypeError(f"from_dataset takes a datasets.Dataset, a DatasetDict or a Hub id, got {type(source).__name__}")


def infer_task_fields(features: datasets.Features, text_columns: Sequence[str], label_column: str) -> dict[str, Any]:
    """``kind``, ``num_labels`` and ``label_names`` from the label and text features:

    - ``ClassLabel`` label with one or two string columns: classification (with the names);
    - ``ClassLabel`` or integer label, a string column and a list-of-strings column: multiple
      choice (``num_labels`` from a fixed-length list, else the label's classes);
    - list of ``ClassLabel`` label with a list-of-strings column: token classification;
    - float label: regression.
    """
    missing = [c for c in [*text_columns, label_column] if c not in features]
    if missing:
        raise ValueError(f"columns {missing} are not in the dataset; it has {list(features)}")
    label = features[label_column]
    texts = [features[c] for c in text_columns]
    if _is_list(label):
        inner = _inner(label)
        if not isinstance(inner, datasets.ClassLabel):
            raise ValueError(f"label column {label_column!r} is a list of {inner}; token classification needs a list of ClassLabel")
        if len(texts) != 1 or not (_is_list(texts[0]) and _is_text(_inner(texts[0]))):
            raise ValueError(f"token classification needs one text column holding a list of words; got {text_columns}")
        return {"kind": "token_classification", "num_labels": inner.num_classes, "label_names": tuple(inner.names)}
    if len(texts) == 2 and _is_text(texts[0]) and _is_list(texts[1]) and _is_text(_inner(texts[1])):
        length = texts[1].length if not isinstance(texts[1], list) else -1
        if length and length > 0:
            n = length
        elif isinstance(label, datasets.ClassLabel):
            n = label.num_classes
        else:
            raise ValueError(f"multiple choice: the choices column {text_columns[1]!r} has no fixed length; pass num_labels=")
        return {"kind": "multiple_choice", "num_labels": int(n)}
    if not all(_is_text(t) for t in texts) or len(texts) not in (1, 2):
        raise ValueError(f"text columns {list(text_columns)} must be one or two string columns for a sentence task; got {texts}")
    if isinstance(label, datasets.ClassLabel):
        return {"kind": "classification", "num_labels": label.num_classes, "label_names": tuple(label.names)}
    if isinstance(label, datasets.Value) and label.dtype.startswith("float"):
        return {"kind": "regression", "num_labels": 1}
    if isinstance(label, datasets.Value) and label.dtype.startswith(("int", "uint", "bool")):
        raise ValueError(
            f"label column {label_column!r} holds plain integers, not a ClassLabel: the number of classes is unknown; "
            "pass kind='classification' and num_labels= (or cast the column to ClassLabel)"
        )
    raise ValueError(f"cannot infer a task type from the label feature {label}")
