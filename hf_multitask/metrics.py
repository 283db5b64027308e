"""Task metrics and the overall score of the published SST/QQP/STS work, generalised to any task set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .tasks import TaskSpec

__all__ = [
    "accuracy",
    "macro_f1",
    "positive_f1",
    "stance_f1",
    "pearson",
    "spearman",
    "overall_score",
    "primary_overall",
    "prefixed_metrics",
    "compute_task_metrics",
]


def _arrays(predictions: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predictions and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    if p.size == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return p, y


def accuracy(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of exact matches."""
    p, y = _arrays(predictions, labels)
    return float(np.mean(p == y))


def _class_f1(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes, F1 of each) over the classes that occur in the gold labels or the predictions,
    from scikit-learn (the library of TweetEval's official script); a class never predicted
    and never gold has no F1, one with no true positive scores 0."""
    try:  # not needed to load or run a saved model (transformers' remote-code check skips imports in a try)
        from sklearn.metrics import f1_score
    except ImportError as err:  # pragma: no cover - a dependency of the package
        raise ImportError("F1 scores need scikit-learn: pip install scikit-learn") from err

    p, y = _arrays(predictions, labels)
    p, y = p.astype(np.int64), y.astype(np.int64)
    classes = np.union1d(p, y)
    return classes, f1_score(y, p, labels=classes, average=None, zero_division=0.0)


def macro_f1(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Macro-averaged F1: the unweighted mean of each class's F1 over the classes present in the
    gold labels or the predictions (scikit-learn's ``f1_score(average="macro")``; TweetEval's
    metric for emoji, emotion, hate and offensive)."""
    return float(np.mean(_class_f1(predictions, labels)[1]))


def _f1_of(predictions, labels, wanted: Sequence[int]) -> float:
    classes, scores = _class_f1(predictions, labels)
    by_class = dict(zip(classes.tolist(), scores.tolist()))
    return float(np.mean([by_class.get(c, 0.0) for c in wanted]))


def positive_f1(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """F1 of class 1 alone (TweetEval irony: the F1 of the ``irony`` class); 0 when class 1 is
    neither gold nor predicted."""
    return _f1_of(predictions, labels, [1])


def stance_f1(predictions: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The mean of the F1 of class 1 (``against``) and class 2 (``favor``), class 0 (``none``)
    left out: SemEval-2016 Task 6's F_avg, TweetEval's stance metric (computed over the five
    targets pooled)."""
    return _f1_of(predictions, labels, [1, 2])


def pearson(predictions: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation r; 0.0 when either side is constant (r is undefined there)."""
    p, y = _arrays(predictions, labels)
    pc, yc = p - p.mean(), y - y.mean()
    denom = np.sqrt((pc * pc).sum() * (yc * yc).sum())
    if denom == 0.0 or not np.isfinite(denom):
        return 0.0
    return float(np.clip((pc * yc).sum() / denom, -1.0, 1.0))


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty_like(x)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # average the ranks of ties
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inverse, ranks)
    return sums[inverse] / counts[inverse]


def spearman(predictions: Sequence[float] | np.ndarray, labels: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (Pearson r of average ranks)."""
    p, y = _arrays(predictions, labels)
    return pearson(_ranks(p), _ranks(y))


METRIC_DISPLAY = {"accuracy": "accuracy", "pearson": "pearsonr", "spearman": "spearmanr", "entity_f1": "f1", "macro_f1": "f1",
                  "positive_f1": "f1", "stance_f1": "f1"}  # fmt: skip


def overall_score(scores: Mapping[str, float]) -> float:
    """Mean of per-task normalised scores.

    For the reference trio this is ``(sst_acc + qqp_acc + (sts_r + 1) / 2) / 3``, the
    overall score of the CS224N multitask BERT work.
    """
    if not scores:
        raise ValueError("overall_score needs at least one task score")
    return float(np.mean(list(scores.values())))


def primary_overall(results: dict[str, float], primary: Sequence[str] | None) -> dict[str, float]:
    """``results`` with ``overall`` the mean score of the ``primary`` tasks (what the best
    checkpoint, early stopping and the model card follow) and the mean over every evaluated task
    kept as ``overall_all``. Unchanged without primary tasks, or when none of them was
    evaluated (a phase that scores other tasks one at a time, e.g. head pretraining)."""
    present = [t for t in primary or [] if f"{t}_score" in results]
    if not present:
        return results
    out = dict(results)
    out["overall_all"] = results["overall"]
    out["overall"] = overall_score({t: results[f"{t}_score"] for t in present})
    return out


def prefixed_metrics(results: dict[str, float], primary: Sequence[str] | None, prefix: str = "eval") -> dict[str, float]:
    """Evaluation results as the Trainer reports them: ``overall`` following the primary tasks
    ([`primary_overall()`][hf_multitask.metrics.primary_overall]), every key prefixed with ``{prefix}_``."""
    return {f"{prefix}_{k}": v for k, v in primary_overall(results, primary).items()}


def compute_task_metrics(spec: TaskSpec, predictions: Sequence[Any] | np.ndarray, labels: Sequence[Any] | np.ndarray) -> dict[str, float]:
    """``{metric_name: value, "score": value in [0, 1]}`` for one task: its task type's metrics
    (``spec.task_type.compute_metrics``), the public entry point for code outside the library."""
    return spec.task_type.compute_metrics(spec, predictions, labels)
