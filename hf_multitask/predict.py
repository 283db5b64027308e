"""Prediction, evaluation and CS224N-format prediction files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .encoding import MultitaskCollator
from .metrics import compute_task_metrics, overall_score
from .precision import autocast
from .tasks import TaskSpec, metric_groups

__all__ = ["TaskPredictions", "predict", "evaluate", "metrics_from_predictions", "write_predictions"]


@dataclass
class TaskPredictions:
    """Predictions of one task: example ids, predictions, and gold labels when the data had them."""

    task: str
    ids: list[str]
    predictions: np.ndarray
    labels: np.ndarray | None
    loss: float | None = None  # the task's mean loss over all its labels (TaskType.loss_terms), when it has any


def length_order(spec: TaskSpec, dataset: datasets.Dataset) -> np.ndarray:
    """The indices of ``dataset`` in order of token count (stable: ties keep the file order), the
    order [`predict()`][hf_multitask.predict.predict] and the teacher pass batch in, so a batch pads little."""
    return np.argsort(spec.task_type.lengths(dataset), kind="stable")


def unsort(order: np.ndarray) -> np.ndarray:
    """Where each example went in ``order``: ``unsort(order)[j]`` is the position example ``j``
    was batched at, so ``outputs[unsort(order)]`` puts outputs back in the dataset's order."""
    where = np.empty_like(order)
    where[order] = np.arange(len(order))
    return where


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    dataset: datasets.Dataset,
    task: str,
    *,
    pad_token_id: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    by_length: bool = True,
    dtype: torch.dtype | None = None,
) -> TaskPredictions:
    """Run ``model`` on an encoded dataset (see [`encode_task()`][hf_multitask.encoding.encode_task]).

    ``model``: a [`MultitaskModel`][hf_multitask.modeling.MultitaskModel], a routed one, or an export on ONNX Runtime
    ([`OnnxMultitaskModel`][hf_multitask.onnx_backend.OnnxMultitaskModel]).

    With ``by_length`` (the default) the examples are batched in order of token count, so a
    batch pads little (on TweetEval's validation files, 1.8x fewer padded token slots than
    in file order); the returned ids, predictions and labels are in the dataset's order
    either way. A prediction can differ from the file-order one only in float rounding.
    Data that is not a `datasets.Dataset` (a list of encoded rows) is batched as given.
    ``dtype=torch.bfloat16`` runs the model under bf16 autocast (its weights stay as they are;
    on a CPU it pays only with bf16 instructions, see [`hf_multitask.precision`][hf_multitask.precision]);
    an ONNX export refuses it.
    """
    spec: TaskSpec = model.get_task(task)
    if dtype is not None and getattr(model, "is_onnx", False):  # ONNX Runtime would run the graph as exported, saying nothing
        raise ValueError(f"dtype={dtype} is for a PyTorch model: an ONNX export runs in fp32, or in int8 if exported with --quantize int8")
    was_training = model.training
    model.eval()
    sortable = by_length and isinstance(dataset, datasets.Dataset) and len(dataset) > batch_size  # else: as given
    order = length_order(spec, dataset) if sortable else None
    collate = MultitaskCollator(pad_token_id, task=task, keep_ids=True)
    loader = DataLoader(dataset if order is None else dataset.select(order), batch_size=batch_size, shuffle=False, collate_fn=collate)
    device = model.device if hasattr(model, "device") else next(model.parameters()).device  # an ONNX model has no parameters
    ids: list[str] = []
    preds: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    loss_sum, loss_n = 0.0, 0
    for batch in tqdm(loader, desc=f"Predicting {task}", disable=not progress):
        ids.extend(batch.pop("ids", []))
        gold = batch.get("labels")
        inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        with autocast(device, dtype):
            out = model(**inputs)
        logits = out.logits.float().cpu().numpy()
        host = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        preds.append(spec.task_type.predictions(spec, logits, host))
        if gold is not None:
            labels.append(spec.task_type.gold(spec, gold.numpy(), host))
            terms = spec.task_type.loss_terms(spec, gold) if getattr(out, "loss", None) is not None else 0
            if terms:  # the batch's mean loss, weighted by the labels it averages (none: nothing to add)
                loss_sum += float(out.loss) * terms
                loss_n += terms
    model.train(was_training)
    predictions = np.concatenate(preds) if preds else np.zeros(0)
    gold_all = np.concatenate(labels) if labels else None
    if order is not None:  # back to the dataset's order
        where = unsort(order)
        predictions, gold_all = predictions[where], (None if gold_all is None else gold_all[where])
        ids = [ids[k] for k in where] if ids else ids
    return TaskPredictions(task=task, ids=ids, predictions=predictions, labels=gold_all, loss=loss_sum / loss_n if loss_n else None)


def evaluate(
    model: torch.nn.Module,
    datasets_by_task: dict[str, datasets.Dataset],
    *,
    pad_token_id: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    predictions: dict[str, TaskPredictions] | None = None,
    by_length: bool = True,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Metrics of every task plus ``overall`` (mean of normalised task scores).

    Keys are ``{task}_{metric}``, ``{task}_score`` and ``{task}_loss`` for each task, ``overall``
    and ``loss`` (the sum of the per-task mean losses).
    Pass a dict as ``predictions`` to get each task's [`TaskPredictions`][hf_multitask.predict.TaskPredictions] as well;
    ``by_length`` and ``dtype`` as for [`predict()`][hf_multitask.predict.predict].
    """
    outputs = {}
    for task, ds in datasets_by_task.items():
        outputs[task] = predict(model, ds, task, pad_token_id=pad_token_id, batch_size=batch_size, progress=progress, by_length=by_length,
                                dtype=dtype)  # fmt: skip
        if predictions is not None:
            predictions[task] = outputs[task]
    return metrics_from_predictions(model, outputs)


def metrics_from_predictions(model: torch.nn.Module, outputs: dict[str, TaskPredictions]) -> dict[str, float]:
    """``{task}_{metric}``, ``{task}_score``, ``{task}_loss`` per task, ``overall`` and ``loss``
    (the sum of the tasks' mean losses, the summed-loss objective) from labelled predictions.

    Tasks of one ``metric_group`` are also scored pooled (``{group}_{metric}``,
    ``{group}_score``, over the members evaluated here), and ``overall`` counts the group once
    in place of its members."""
    results: dict[str, float] = {}
    scores: dict[str, float] = {}
    losses: list[float] = []
    specs = {task: model.get_task(task) for task in outputs}
    for task, out in outputs.items():
        if out.labels is None:
            raise ValueError(f"Task {task!r}: the evaluation data has no labels")
        metrics = compute_task_metrics(specs[task], out.predictions, out.labels)
        scores[task] = metrics["score"]
        results.update({f"{task}_{k}": v for k, v in metrics.items()})
        if out.loss is not None:
            results[f"{task}_loss"] = out.loss
            losses.append(out.loss)
    for group, members in metric_groups(list(specs.values())).items():
        pooled = compute_task_metrics(
            specs[members[0]],
            [p for m in members for p in outputs[m].predictions],
            [y for m in members for y in outputs[m].labels],  # type: ignore[union-attr]
        )
        results.update({f"{group}_{k}": v for k, v in pooled.items()})
        for m in members:
            del scores[m]
        scores[group] = pooled["score"]
    results["overall"] = overall_score(scores)
    if losses and len(losses) == len(outputs):
        results["loss"] = float(sum(losses))
    return results


def write_predictions(path: str | os.PathLike[str], spec: TaskSpec, predictions: TaskPredictions) -> Path:
    """Write predictions in the CS224N output format.

    The first line is ``id \\t Predicted_<label_column>``, then one ``<id> , <prediction>``
    line per example, as the CS224N default project's scripts write and read them. Each
    prediction is written by its task type (``format_prediction``): a class's name when the task
    has ``label_names``, else its index.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"id \t Predicted_{spec.label_column} \n")
        for ident, pred in zip(predictions.ids, predictions.predictions):
            f.write(f"{ident} , {spec.task_type.format_prediction(spec, pred)} \n")
    return path


def write_conll(path: str | os.PathLike[str], spec: TaskSpec, predictions: TaskPredictions, words: list[list[str]]) -> Path:
    """Token-classification predictions in a CoNLL-style file: a ``# sent_id = <id>`` line per
    sentence, then one ``word<TAB>predicted tag[<TAB>gold tag]`` line per word and a blank line.
    Words cut off by ``max_length`` (no prediction) get ``_``. ``words`` are the sentences in
    the order of ``predictions``."""
    if not spec.task_type.sequence_labels:
        raise ValueError(f"Task {spec.name!r} ({spec.kind}) has no per-word labels: use write_predictions")
    if len(words) != len(predictions.ids):
        raise ValueError(f"{len(words)} sentences of words for {len(predictions.ids)} predictions")
    names = spec.label_names
    tag = (lambda i: names[int(i)]) if names else (lambda i: str(int(i)))  # noqa: E731
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for k, (ident, sentence) in enumerate(zip(predictions.ids, words)):
            pred = list(predictions.predictions[k])
            gold = list(predictions.labels[k]) if predictions.labels is not None else None
            f.write(f"# sent_id = {ident}\n")
            for j, word in enumerate(sentence):
                cells = [word, tag(pred[j]) if j < len(pred) else "_"]
                if gold is not None:
                    cells.append(tag(gold[j]) if j < len(gold) else "_")
                f.write("\t".join(cells) + "\n")
            f.write("\n")
    return path
