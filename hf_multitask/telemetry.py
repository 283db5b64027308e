"""Gradient-conflict telemetry: pairwise cosines, conflict rate, norms, what surgery removed."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

__all__ = ["ConflictTelemetryCallback", "conflict_metrics", "plot_conflicts"]

PREFIX = "conflict/"


def conflict_metrics(info: dict[str, Any], grad_scale: float = 1.0) -> dict[str, float]:
    """Telemetry of one surgery step from an aggregator's ``last_info`` (the engine returns it as ``EngineStep.info``).

    ``grad_scale`` is the factor the gradients carry (the fp16 loss scale): norms are divided
    by it. Keys: ``conflict/cos_{a}_{b}``, ``conflict/rate`` (share of task pairs with negative
    cosine), ``conflict/grad_norm_{task}``, ``conflict/removed_{task}`` (``||g_i - g_i'||``,
    for methods that modify each task's gradient) and ``conflict/gradvac_target_{a}_{b}``.
    """
    gram: torch.Tensor = info["gram"]
    tasks: Sequence[str] = info["tasks"]
    factor = float(info.get("gram_scale", math.sqrt(float(info.get("gram_factor", 1.0))))) / float(grad_scale)
    out: dict[str, float] = {}
    if not torch.isfinite(gram).all():
        return out
    norms = gram.diagonal().clamp_min(0).sqrt()
    for i, t in enumerate(tasks):
        out[f"{PREFIX}grad_norm_{t}"] = float(norms[i]) * factor
    pairs, conflicts = 0, 0
    for i in range(len(tasks)):
        for j in range(i + 1, len(tasks)):
            denom = float(norms[i] * norms[j])
            cos = float(gram[i, j]) / denom if denom > 0 else 0.0
            out[f"{PREFIX}cos_{tasks[i]}_{tasks[j]}"] = cos
            pairs += 1
            conflicts += cos < 0
    if pairs:
        out[f"{PREFIX}rate"] = conflicts / pairs
    if "removed" in info:
        for i, t in enumerate(tasks):
            out[f"{PREFIX}removed_{t}"] = float(info["removed"][i]) * factor
    for (a, b), v in info.get("targets", {}).items():
        out[f"{PREFIX}gradvac_target_{a}_{b}"] = float(v)
    return out


class ConflictTelemetryCallback(TrainerCallback):
    """Puts gradient-conflict telemetry into the Trainer's logs every ``every_n_steps`` steps.

    [`MultitaskTrainer`][hf_multitask.trainer.MultitaskTrainer] hands it each surgery step's statistics
    ([`record()`][hf_multitask.telemetry.ConflictTelemetryCallback.record]); on a due step the callback asks the Trainer to log, and the trainer
    merges the pending values into that log entry, so TensorBoard, W&B, ``trainer_state.json``
    and every other logging integration receive them. ``history`` keeps every recorded row.
    """

    def __init__(self, every_n_steps: int = 10) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self.pending: dict[str, float] = {}
        self.history: list[dict[str, float]] = []

    def is_due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based, the one about to finish) is recorded."""
        return step % self.every_n_steps == 0 or step == 1

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Keep ``metrics`` of optimizer step ``step`` for the next log and in `history`."""
        self.pending = dict(metrics)
        self.history.append({"step": step, **metrics})

    def pop_pending(self) -> dict[str, float]:
        """The metrics recorded since the last log (then none): the trainer adds them to its log."""
        pending, self.pending = self.pending, {}
        return pending

    def on_step_end(self, args, state, control, **kwargs):  # noqa: D102
        if self.pending:
            control.should_log = True
        return control


MAX_CURVE_TASKS = 4  # above this many tasks the pairwise cosines are drawn as a matrix, not as curves


def _cosine_matrix(rows: list[dict[str, Any]], tasks: list[str]) -> list[list[float]]:
    """Mean pairwise cosine over the recorded steps (NaN where a pair was never recorded)."""
    out = []
    for a in tasks:
        line = []
        for b in tasks:
            if a == b:
                line.append(1.0)
                continue
            key = PREFIX + (f"cos_{a}_{b}" if any(PREFIX + f"cos_{a}_{b}" in r for r in rows) else f"cos_{b}_{a}")
            values = [r[key] for r in rows if key in r]
            line.append(sum(values) / len(values) if values else float("nan"))
        out.append(line)
    return out


def _draw_matrix(ax: Any, matrix: list[list[float]], tasks: list[str], steps: int) -> None:
    image = ax.imshow(matrix, cmap="RdBu", vmin=-0.3, vmax=0.3)
    ax.set_xticks(range(len(tasks)), tasks, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
    for i, line in enumerate(matrix):
        for j, value in enumerate(line):
            if i != j and value == value:
                ax.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=5.5)
    ax.set_title(f"mean pairwise cosine over {steps} recorded steps (blue: agree, red: conflict)")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def plot_conflicts(source: str | os.PathLike[str] | list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Plot conflict telemetry (pairwise cosines, conflict rate, norms, removed) to a PNG.

    ``source`` is a ``trainer_state.json`` path, a checkpoint / output folder holding one, or
    a list of log rows (``trainer.state.log_history`` or the callback's ``history``).
    Needs matplotlib (``pip install 'hf-multitask[plot]'``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plot_conflicts needs matplotlib: pip install 'hf-multitask[plot]'") from err
    if not isinstance(source, list):
        p = Path(source)
        if p.is_dir():
            p = p / "trainer_state.json"
        source = json.loads(p.read_text())["log_history"]
    rows = [r for r in source if any(k.startswith(PREFIX) for k in r)]
    if not rows:
        raise ValueError("No conflict telemetry in the logs: train with telemetry_steps > 0")
    keys = sorted({k for r in rows for k in r if k.startswith(PREFIX)})
    tasks = [k[len(PREFIX + "grad_norm_") :] for k in keys if k.startswith(PREFIX + "grad_norm_")]
    many = len(tasks) > MAX_CURVE_TASKS  # 10 tasks give 45 cosine curves: a matrix reads better
    groups = [
        ("pairwise cosine", [] if many else [k for k in keys if k.startswith(PREFIX + "cos_")]),
        ("conflict rate", [k for k in keys if k == PREFIX + "rate"]),
        ("gradient norm", [k for k in keys if k.startswith(PREFIX + "grad_norm_")]),
        ("removed by surgery", [k for k in keys if k.startswith(PREFIX + "removed_")]),
    ]
    groups = [(title, ks) for title, ks in groups if ks]
    matrix = _cosine_matrix(rows, tasks) if many else None
    extra = 1 if matrix is not None else 0
    fig, axes = plt.subplots(len(groups) + extra, 1, figsize=(7, 2.6 * len(groups) + 5.5 * extra), squeeze=False,
                             gridspec_kw={"height_ratios": [2.6] * len(groups) + [5.5] * extra})  # fmt: skip
    if matrix is not None:
        _draw_matrix(axes[-1, 0], matrix, tasks, len(rows))
    for ax, (title, ks) in zip(axes[:, 0], groups):
        for k in ks:
            pts = [(r["step"], r[k]) for r in rows if k in r]
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=k[len(PREFIX) :], marker=".")
        ax.set_title(title)
        if title == "pairwise cosine":
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.legend(fontsize=6 if many else 7, ncol=2 if many else 1)
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
