"""One training, several checkpoint choices: an arm with ``same_training_as`` another trains
exactly as that arm (the same flags) and differs only in its ``primary`` tasks, which change
nothing but the checkpoint the run keeps and the score it reports (no primary-aware aggregator,
no STILTs phase: the grid's author vouches for that by naming the source).

The source's run records every evaluation during training (the recipe's ``trainer_state.json``;
the harness keeps them in the result as ``evaluations`` and ``best_step``). When the arm's own
rule (the first evaluation with the highest mean score of its primary tasks, as the Trainer
chooses) picks the checkpoint the source kept, the arm's run would end in the very model the
source ended in: its cell is the source's result re-scored for its primary tasks, and its test
files are the source's files of those tasks. When it picks another checkpoint, or the source's
result has no evaluations (it ran before they were recorded), the cell trains as any other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..metrics import prefixed_metrics
from .grid import Arm

TRAINER_STATE = "trainer_state.json"  # written by the recipe after training: its log history and best step
_TIMING = ("_runtime", "_per_second")  # evaluation-speed keys: not results, and not the same in two runs


def evaluation_history(run: Path) -> dict[str, Any]:
    """``{"evaluations": [...], "best_step": n}`` from a finished run's ``trainer_state.json``: every
    evaluation during training (its step and ``eval_*`` results) and the step of the checkpoint it
    kept; empty when the run wrote no state (another command, or an older recipe)."""
    try:
        state = json.loads((run / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return {}
    evaluations = [{"step": entry["step"], **{k: v for k, v in entry.items() if k.startswith("eval_") and not k.endswith(_TIMING)}}
                   for entry in state.get("log_history", []) if any(k.startswith("eval_") and k.endswith("_score") for k in entry)]  # fmt: skip
    if not evaluations or state.get("best_global_step") is None:
        return {}
    return {"evaluations": evaluations, "best_step": state["best_global_step"]}


def _unprefixed(evaluation: dict[str, Any]) -> dict[str, float]:
    """The ``eval_*`` results of an evaluation (or a run's metrics), unprefixed, as the recipe computed
    them before ``overall`` followed any primary task."""
    out = {k[len("eval_") :]: v for k, v in evaluation.items() if k.startswith("eval_")}
    if "overall_all" in out:
        out["overall"] = out.pop("overall_all")
    return out


def chosen_step(evaluations: list[dict[str, Any]], primary: list[str] | None) -> int | None:
    """The step of the checkpoint a run keeps when ``primary`` chooses it: the first evaluation with
    the highest ``overall`` (the mean score of the primary tasks, else of every task), as the
    Trainer's ``metric_for_best_model="overall"`` does (a later evaluation must be strictly better)."""
    best, step = None, None
    for evaluation in evaluations:
        value = prefixed_metrics(_unprefixed(evaluation), primary)["eval_overall"]
        if best is None or value > best:
            best, step = value, evaluation["step"]
    return step


def rescored(metrics: dict[str, Any], primary: list[str] | None) -> dict[str, Any]:
    """A finished run's metrics with ``eval_overall`` (and ``eval_overall_all``) following ``primary``."""
    return {**{k: v for k, v in metrics.items() if not k.startswith("eval_")}, **prefixed_metrics(_unprefixed(metrics), primary)}


def task_test_files(source: Path, tasks: list[str]) -> list[Path] | None:
    """The files of ``tasks`` in a folder of test predictions (``{task}.txt`` or a ``{task}/``
    folder, the official layout), or None if one of them is missing."""
    found = [next((p for p in (source / f"{t}.txt", source / t) if p.exists()), None) for t in tasks]
    return None if any(p is None for p in found) else [p for p in found if p is not None]


def _reusable(arm: Arm, source: dict[str, Any], source_test: Path | None, gathering: bool) -> list[Path] | None:
    """The source's test files the arm's cell would take (its primary tasks' files, or every task's;
    none when the grid gathers none), or None when the cell must train instead (see [`derived_cell()`][hf_multitask.compare.derive.derived_cell])."""
    history, best = source.get("evaluations"), source.get("best_step")
    if not history or best is None or chosen_step(history, source.get("primary")) != best:
        return None  # no evaluations recorded, or they do not show the choice the source made
    if chosen_step(history, arm.primary) != best:
        return None  # the arm's primary tasks keep another checkpoint
    if not gathering:
        return []
    if source_test is None or not source_test.is_dir():
        return None
    return task_test_files(source_test, arm.primary or source["tasks"])


def can_derive(arm: Arm, source: dict[str, Any] | None, source_test: Path | None, gathering: bool) -> bool:
    """Whether the arm's cell would be its source's finished cell (``source``) re-scored, not trained."""
    return source is not None and _reusable(arm, source, source_test, gathering) is not None


def derived_cell(arm: Arm, source: dict[str, Any], source_test: Path | None, gather: Path | None) -> dict[str, Any] | None:
    """The arm's result from its source's finished cell (``source``; its gathered test files in
    ``source_test``), its test files copied to ``gather``; or None when the cell must train: the
    source recorded no evaluations, they do not reproduce the source's own choice, the arm's
    primary tasks keep another checkpoint, or a test file the arm needs is missing."""
    files = _reusable(arm, source, source_test, gather is not None)
    if files is None:
        return None
    if gather is not None:
        if gather.exists():
            shutil.rmtree(gather)
        gather.mkdir(parents=True)
        for path in files:
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, gather / path.name)
    # the arm's own identity (arm, seed, flags, primary) is written over this by the harness; a source's
    # primary tasks must not stay behind when the arm has none
    result = {k: v for k, v in source.items() if k != "primary"}
    result.update(metrics=rescored(source["metrics"], arm.primary), wall_seconds=0.0,
                  derived_from={"arm": source["arm"], "seed": source["seed"], "split": source["split"], "step": source["best_step"]})  # fmt: skip
    return result
