"""Scores and statistics of a comparison folder's cells: per-arm summaries and paired differences."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from .grid import GridError

_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


def interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t interval (``nan`` half-width for one value)."""
    n = len(values)
    if n == 0 or any(math.isnan(v) for v in values):
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if n == 1:
        return mean, math.nan
    t = _T975[n - 2] if n - 2 < len(_T975) else 1.96
    return mean, t * statistics.stdev(values) / math.sqrt(n)


def _metric_names() -> set[str]:
    """Every registered task type's metric names (``accuracy``, ``macro_f1``, ``stance_f1``, ...)."""
    from ..tasks import TASK_TYPES  # importing tasks registers the built-in types

    return {m for task_type in TASK_TYPES.values() for m in task_type.metrics}


def _primary(metrics: dict[str, Any], task: str) -> tuple[str, float]:
    """The task's own metric (accuracy, pearson, ...): ``eval_<task>_<metric>`` with a registered
    metric name, so a metric group's members (``eval_stance_abortion_loss`` beside the group's
    ``eval_stance_stance_f1``) are never taken for the group's metric."""
    prefix = f"eval_{task}_"
    known = _metric_names()
    keys = sorted(k for k in metrics if k.startswith(prefix) and k[len(prefix) :] in known)
    if not keys:
        raise GridError(f"no metric for task {task!r} in the run's metrics (keys {prefix}<one of {sorted(known)}>)")
    return keys[0][len(prefix) :], float(metrics[keys[0]])


def _overall(metrics: dict[str, Any], tasks: Sequence[str]) -> float:
    missing = [t for t in tasks if f"eval_{t}_score" not in metrics]
    if missing:
        raise GridError(f"no eval_<task>_score for tasks {missing} in the run's metrics")
    return sum(float(metrics[f"eval_{t}_score"]) for t in tasks) / len(tasks)


def scored(cell: dict[str, Any], all_tasks: Sequence[str]) -> list[str]:
    """The tasks a cell's overall score is taken over: its primary tasks if its arm has some (the
    others are auxiliary), else the tasks it trained."""
    return list(cell.get("primary") or cell.get("tasks") or all_tasks)


def summarise(grid: dict[str, Any], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (split, arm): metric means, overall, Delta-m vs the reference arm and the
    paired difference vs the baseline arm (both per seed, then mean and 95 % interval), cost."""
    all_tasks = grid["tasks"]
    by = {(c["split"], c["arm"], c["seed"]): c for c in cells}

    def tasks_of(split: int, arm: str, seed: int) -> list[str]:
        return list(by[(split, arm, seed)].get("tasks") or all_tasks)

    def scored_of(split: int, arm: str, seed: int) -> list[str]:
        return scored(by[(split, arm, seed)], all_tasks)

    rows = []
    for split in sorted({c["split"] for c in cells}):
        for arm in [a for a in grid["arms"] if any(k[:2] == (split, a) for k in by)]:
            seeds = sorted(k[2] for k in by if k[:2] == (split, arm))
            row: dict[str, Any] = {"split": split, "arm": arm, "seeds": len(seeds)}
            tasks, on = tasks_of(split, arm, seeds[0]), scored_of(split, arm, seeds[0])
            row["tasks"] = " ".join(on)
            for task in all_tasks:
                if task not in tasks:
                    row[f"{task}_metric"], row[task], row[f"{task}_ci"] = "", math.nan, math.nan
                    continue
                values = [_primary(by[(split, arm, s)]["metrics"], task) for s in seeds]
                row[f"{task}_metric"] = values[0][0]
                row[task], row[f"{task}_ci"] = interval([v for _, v in values])
            overall = {s: _overall(by[(split, arm, s)]["metrics"], on) for s in seeds}
            row["overall"], row["overall_ci"] = interval(list(overall.values()))
            for key, other in (
                ("delta_m", grid.get("reference")),
                ("vs_reference", grid.get("reference")),
                ("vs_baseline", grid.get("baseline")),
            ):
                paired = [s for s in seeds if (split, other, s) in by] if other else []
                shared = [t for t in on if paired and t in scored_of(split, other, paired[0])]
                if key != "delta_m" and paired and set(shared) != set(on):
                    paired = []  # the other arm is not scored on all of this arm's tasks: no overall to compare with
                if not paired or other == arm or not shared:
                    row[key], row[f"{key}_ci"], row[f"{key}_seeds"] = math.nan, math.nan, 0
                    continue
                if key == "delta_m":
                    diffs = []
                    for s in paired:
                        mine, ref = by[(split, arm, s)]["metrics"], by[(split, other, s)]["metrics"]
                        base = [_primary(ref, t)[1] for t in shared]
                        if any(b == 0 or math.isnan(b) for b in base):  # relative change undefined
                            diffs.append(math.nan)
                            continue
                        rel = [(_primary(mine, t)[1] - b) / abs(b) for t, b in zip(shared, base)]
                        diffs.append(100 * sum(rel) / len(rel))
                else:
                    diffs = [overall[s] - _overall(by[(split, other, s)]["metrics"], on) for s in paired]
                row[key], row[f"{key}_ci"] = interval(diffs)
                row[f"{key}_seeds"] = len(paired)
            m = [by[(split, arm, s)] for s in seeds]
            # medians over seeds: one run slowed by other work on the machine must not move the row
            row["s_per_1k_examples"] = _median_rate(m, "train_examples", 1000.0)
            row["s_per_step"] = _median_rate(m, "train_global_steps")
            row["peak_rss_mb"] = max(c["peak_rss_mb"] for c in m)
            # cells taken from another arm's runs with the very same flags (run.same_run): not trained again
            row["same_run_as"] = " ".join(sorted({c["same_run_as"]["arm"] for c in m if "same_run_as" in c}))
            rows.append(row)
    return rows


# what a phase before the main run (STILTs' auxiliary training) adds to each of the main run's counts
_PHASE_COUNT = {"train_examples": "intermediate_examples", "train_global_steps": "intermediate_global_steps"}


def _median_rate(cells: list[dict[str, Any]], per: str, scale: float = 1.0) -> float:
    """The median over cells of training seconds per ``per`` (times ``scale``); ``nan`` if none has
    it. Seconds and counts include an auxiliary phase before the main run (``intermediate_*``
    metrics), so a STILTs arm pays for its phase. Left out: a cell resumed from a checkpoint (its
    seconds cover the resumed part only) and a cell whose run had such a phase but did not time it
    (written before runs recorded it)."""
    rates = [r for r in (_rate(c, per) for c in cells) if r is not None]
    return scale * statistics.median(rates) if rates else math.nan


def _rate(cell: dict[str, Any], per: str) -> float | None:
    m = cell["metrics"]
    if not m.get(per) or cell.get("resumed_from"):
        return None
    seconds, count = m.get("train_seconds", 0.0), m[per]
    if "intermediate_seconds" in m:
        phase = m.get(_PHASE_COUNT[per])
        if phase is None and per == "train_global_steps":  # runs before it was recorded: the phase ran exactly its flag's steps
            phase = _flag(cell, "--intermediate_steps")
        if phase is None:
            return None
        seconds, count = seconds + m["intermediate_seconds"], count + phase
    elif _flag(cell, "--intermediate_steps"):
        return None
    return seconds / count


def _flag(cell: dict[str, Any], name: str) -> int | None:
    """The integer value of flag ``name`` in a cell's arm flags or protocol, in any form the
    recipe's parser takes (``--a_b v``, ``--a-b v``, ``--a_b=v``); ``None`` if absent or 0."""
    flags = [*cell.get("protocol", []), *cell.get("args", [])]  # the arm's flags come last and win
    value = None
    for i, token in enumerate(flags):
        flag, inline, rest = token.partition("=")
        if flag.replace("-", "_") == name.replace("-", "_"):
            value = rest if inline else (flags[i + 1] if i + 1 < len(flags) else None)
    return (int(value) or None) if value is not None else None


def paired(grid: dict[str, Any], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (split, pair) of the grid's ``pairs``: ``a - b`` per seed both arms finished,
    for each task's metric and the overall score, then mean and 95 % interval. Arms that ran on
    different task sets, or scored on their primary tasks, are compared on the scored tasks they
    share (``tasks`` names them: both overall scores are taken over those tasks); pairs with no
    task in common are left out."""
    by = {(c["split"], c["arm"], c["seed"]): c for c in cells}
    rows = []
    for split in sorted({c["split"] for c in cells}):
        for a, b in grid.get("pairs") or []:
            seeds = sorted(k[2] for k in by if k[:2] == (split, a) and (split, b, k[2]) in by)
            if not seeds:
                continue
            other = scored(by[(split, b, seeds[0])], grid["tasks"])
            tasks = [t for t in scored(by[(split, a, seeds[0])], grid["tasks"]) if t in other]
            if not tasks:
                continue
            row: dict[str, Any] = {"split": split, "pair": f"{a} − {b}", "seeds": len(seeds), "tasks": " ".join(tasks)}
            for task in grid["tasks"]:
                diffs = [_primary(by[(split, a, s)]["metrics"], task)[1] - _primary(by[(split, b, s)]["metrics"], task)[1]
                         for s in seeds] if task in tasks else []  # fmt: skip
                row[task], row[f"{task}_ci"] = interval(diffs) if diffs else (math.nan, math.nan)
            diffs = [_overall(by[(split, a, s)]["metrics"], tasks) - _overall(by[(split, b, s)]["metrics"], tasks) for s in seeds]
            row["overall"], row["overall_ci"] = interval(diffs)
            rows.append(row)
    return rows
