"""Does a multitask method help *my* tasks? A seeded, resumable comparison harness.

A grid (YAML or JSON) names the recipe flags every run shares (the protocol), the arms to
compare, the training seeds and the validation splits (``--validation_seed`` values)::

    tasks: [sst, quora, sts]
    train_limits: {quora: 8000}   # passed as --train_limits to the runs that train the task
    protocol: [--data-dir, ../shared/data, --max_length, "64", ...]
    seeds: [0, 1, 2]
    splits: [1]                 # the splits results are reported on
    tuning_split: 0             # candidates are compared here only, never reported as results
    reference: separate         # the single-task arm: Delta-m is relative to it
    baseline: sum_tuned         # paired differences are against it
    pairs: [[pcgrad, sum_tuned]]  # more paired differences (a - b per seed), e.g. a method vs its control
    arms:
      separate: {single_task: true, args: [--warmup_ratio, "0.1"]}
      pcgrad: {args: [--aggregator, pcgrad]}
      sum_tuned:
        args: [--aggregator, sum]
        candidates:             # the tuning budget: one run each on the tuning split
          round_robin: []
          annealed: [--schedule, annealed, --gradient_accumulation_steps, "3"]
      pcgrad_on_sum_choice:     # PCGrad with the candidate sum_tuned chose: only the method differs
        args: [--aggregator, pcgrad]
        choice_of: sum_tuned

``python -m hf_multitask.compare run grid.yaml --output-dir DIR`` runs every
(split, arm, seed) in its own process through the recipe (``python -m hf_multitask.recipe``),
tuning arms first; a finished run (its ``result.json``) is never run again, so an interrupted
grid continues where it stopped. Each run's wall time, training time and peak memory (the
child's max RSS) are recorded. ``python -m hf_multitask.compare report DIR`` writes the
results as CSV, a markdown table (per-task metrics, overall and Delta-m with 95 % t
intervals over seeds, the paired difference with the baseline and whether its interval
excludes 0, cost; then the ``pairs`` table of paired differences) and a PNG of score vs cost
and per-task deltas.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Arm", "Grid", "GridError", "interval", "load_results", "main", "grid_dict", "paired", "report", "run_grid", "summarise"]

RESULT = "result.json"
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]  # fmt: skip


class GridError(ValueError):
    """A grid file or a results folder that cannot be used (the message names the key or file)."""


@dataclass
class Arm:
    """One method under comparison: recipe flags, or one single-task run per task, optionally
    with ``candidates`` (name -> extra flags) compared on the tuning split, the best kept, or
    with ``choice_of`` another tuned arm, whose chosen candidate's flags it adds to its own."""

    name: str
    args: list[str] = field(default_factory=list)
    single_task: bool = False
    candidates: dict[str, list[str]] = field(default_factory=dict)
    tasks: list[str] | None = None  # a subset of the grid's tasks (None: all of them)
    choice_of: str | None = None  # a tuned arm whose chosen candidate this arm reuses


@dataclass
class Grid:
    """A comparison: ``arms`` x ``seeds`` x ``splits`` under one ``protocol`` (see the module docstring)."""

    tasks: list[str]
    arms: list[Arm]
    seeds: list[int]
    splits: list[int]
    protocol: list[str] = field(default_factory=list)
    train_limits: dict[str, int] = field(default_factory=dict)
    tuning_split: int | None = None
    tuning_seed: int = 0
    reference: str | None = None
    baseline: str | None = None
    pairs: list[list[str]] = field(default_factory=list)  # [a, b]: report a - b per seed (e.g. a method vs its control)
    command: list[str] = field(default_factory=lambda: [sys.executable, "-m", "hf_multitask.recipe"])

    def __post_init__(self) -> None:
        names = [a.name for a in self.arms]
        if not self.tasks or not self.arms or not self.seeds or not self.splits:
            raise GridError("a grid needs non-empty 'tasks', 'arms', 'seeds' and 'splits'")
        if len(set(names)) != len(names):
            raise GridError(f"arm names repeat: {names}")
        for key in ("reference", "baseline"):
            value = getattr(self, key)
            if value is not None and value not in names:
                raise GridError(f"'{key}': {value!r} is not an arm ({names})")
        for pair in self.pairs:
            if len(pair) != 2 or pair[0] == pair[1] or any(a not in names for a in pair):
                raise GridError(f"'pairs': each entry must be two different arms of {names}, got {pair}")
        if self.reference is not None and not self.arm(self.reference).single_task:
            raise GridError(f"'reference': arm {self.reference!r} must be single_task (Delta-m is relative to single-task models)")
        tuned = [a.name for a in self.arms if a.candidates]
        if tuned and self.tuning_split is None:
            raise GridError(f"arms {tuned} have candidates but the grid has no 'tuning_split'")
        for arm in self.arms:
            if arm.choice_of is None:
                continue
            if arm.candidates or arm.single_task:
                raise GridError(f"arm {arm.name!r}: 'choice_of' reuses another arm's tuning; it cannot have candidates or be single_task")
            if arm.choice_of not in tuned:
                raise GridError(f"arm {arm.name!r}: 'choice_of' must name an arm with candidates ({tuned}), got {arm.choice_of!r}")
        if self.tuning_split is not None and self.tuning_split in self.splits:
            raise GridError(f"'tuning_split' {self.tuning_split} is also in 'splits': never report on the split used to choose")
        unknown = sorted(set(self.train_limits) - set(self.tasks))
        if unknown:
            raise GridError(f"'train_limits' names tasks {unknown} that are not in 'tasks' {self.tasks}")
        for arm in self.arms:
            extra = sorted(set(arm.tasks or []) - set(self.tasks))
            if extra or (arm.tasks is not None and not arm.tasks):
                raise GridError(f"arm {arm.name!r}: 'tasks' must be a non-empty subset of the grid's tasks {self.tasks}, got {arm.tasks}")
            for flag in ("--seed", "--validation_seed", "--output-dir", "--output_dir", "--tasks", "--train_limits"):
                if flag in arm.args or flag in self.protocol:
                    raise GridError(f"arm {arm.name!r}: {flag} is set by the harness, not by the grid")

    def arm(self, name: str) -> Arm:
        return next(a for a in self.arms if a.name == name)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "grid") -> Grid:
        known = {
            "tasks",
            "arms",
            "seeds",
            "splits",
            "protocol",
            "train_limits",
            "tuning_split",
            "tuning_seed",
            "reference",
            "baseline",
            "pairs",
            "command",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise GridError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        arms_data = data.get("arms") or {}
        if not isinstance(arms_data, dict):
            raise GridError(f"{where}: 'arms' must map arm names to {{args, single_task, candidates, choice_of, tasks}}")
        arms = []
        for name, spec in arms_data.items():
            spec = spec or {}
            bad = sorted(set(spec) - {"args", "single_task", "candidates", "tasks", "choice_of"})
            if bad:
                raise GridError(f"{where}: arm {name!r}: unknown keys {bad}")
            tasks = spec.get("tasks")
            arms.append(Arm(str(name), [str(a) for a in spec.get("args", [])], bool(spec.get("single_task", False)),
                            {str(k): [str(a) for a in (v or [])] for k, v in (spec.get("candidates") or {}).items()},
                            None if tasks is None else [str(t) for t in tasks],
                            None if spec.get("choice_of") is None else str(spec["choice_of"])))  # fmt: skip
        fields = {k: data[k] for k in known - {"arms"} if k in data}
        for key in ("seeds", "splits"):
            if key in fields and not all(isinstance(v, int) for v in fields[key]):
                raise GridError(f"{where}: '{key}' must be a list of integers, got {fields[key]}")
        if "pairs" in fields:
            if not isinstance(fields["pairs"], list) or not all(isinstance(p, (list, tuple)) for p in fields["pairs"]):
                raise GridError(f"{where}: 'pairs' must be a list of [arm, arm] lists, got {fields['pairs']}")
            fields["pairs"] = [[str(a) for a in p] for p in fields["pairs"]]
        try:
            return cls(arms=arms, **fields)
        except TypeError as err:
            raise GridError(f"{where}: {err}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Grid:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise GridError(f"cannot read grid file {path}: {err.strerror}") from None
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as err:
                mark = getattr(err, "problem_mark", None)
                at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
                raise GridError(f"{path}:{at} invalid YAML: {getattr(err, 'problem', err)}") from None
        if not isinstance(data, dict):
            raise GridError(f"{path}: a grid file must hold a mapping")
        return cls.from_dict(data, where=str(path))


# ---------------------------------------------------------------------------------------- running
def _run_one(cmd: list[str], out: Path, log: Path) -> dict[str, Any]:
    """Run one recipe in a child process; its metrics plus wall time and the child's peak RSS."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"run failed (exit {proc.returncode}): {' '.join(cmd)}\nlog {log}:\n" + "\n".join(tail))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"metrics": metrics, "wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024}  # ru_maxrss is KiB on Linux


def _recipe_cmd(grid: Grid, args: list[str], tasks: list[str], seed: int, split: int, out: Path) -> list[str]:
    limits = {t: n for t, n in grid.train_limits.items() if t in tasks}
    extra = ["--train_limits", json.dumps(limits)] if limits else []
    return [*grid.command, *grid.protocol, *args, *extra, "--tasks", *tasks, "--seed", str(seed), "--validation_seed", str(split),
            "--output-dir", str(out), "--overwrite_output_dir"]  # fmt: skip


def _execute(grid: Grid, args: list[str], arm: Arm, seed: int, split: int, folder: Path, say: Any) -> dict[str, Any]:
    """One (arm, seed, split) cell: resumable; single-task arms run once per task and combine."""
    done = folder / RESULT
    if done.is_file():
        return json.loads(done.read_text())
    tasks = list(arm.tasks or grid.tasks)
    if arm.single_task:
        parts: dict[str, dict[str, Any]] = {}
        for task in tasks:
            sub = folder / task
            if (sub / RESULT).is_file():
                parts[task] = json.loads((sub / RESULT).read_text())
            else:
                say(f"{arm.name} / {task}: seed {seed}, split {split}")
                parts[task] = _run_one(_recipe_cmd(grid, args, [task], seed, split, sub / "run"), sub / "run", sub / "log.txt")
                (sub / RESULT).write_text(json.dumps(parts[task], indent=2))
        metrics: dict[str, float] = {}
        for task, part in parts.items():
            metrics.update({k: v for k, v in part["metrics"].items() if k.startswith(f"eval_{task}_")})
        steps = sum(p["metrics"].get("train_global_steps", 0) for p in parts.values())
        train_seconds = sum(p["metrics"].get("train_seconds", 0.0) for p in parts.values())
        examples = sum(p["metrics"].get("train_examples", 0) for p in parts.values())
        metrics.update(train_seconds=train_seconds, train_examples=examples, train_global_steps=steps)
        result = {"metrics": metrics, "wall_seconds": sum(p["wall_seconds"] for p in parts.values()),
                  "peak_rss_mb": max(p["peak_rss_mb"] for p in parts.values())}  # fmt: skip
    else:
        say(f"{arm.name}: seed {seed}, split {split}")
        result = _run_one(_recipe_cmd(grid, args, tasks, seed, split, folder / "run"), folder / "run", folder / "log.txt")
    result.update(arm=arm.name, seed=seed, split=split, args=args, tasks=tasks)
    done.write_text(json.dumps(result, indent=2))
    return result


def _overall(metrics: dict[str, Any], tasks: Sequence[str]) -> float:
    missing = [t for t in tasks if f"eval_{t}_score" not in metrics]
    if missing:
        raise GridError(f"no eval_<task>_score for tasks {missing} in the run's metrics")
    return sum(float(metrics[f"eval_{t}_score"]) for t in tasks) / len(tasks)


def tuned_args(grid: Grid, arm: Arm, out_dir: Path, say: Any = print) -> list[str]:
    """The arm's flags plus its best candidate's (by overall score on the tuning split), running
    the candidates that have not run yet; for a ``choice_of`` arm, plus the candidate that arm chose."""
    if arm.choice_of is not None:
        source = grid.arm(arm.choice_of)
        return [*arm.args, *source.candidates[_choose(grid, source, out_dir, say)]]
    if not arm.candidates:
        return list(arm.args)
    return [*arm.args, *arm.candidates[_choose(grid, arm, out_dir, say)]]


def _choose(grid: Grid, arm: Arm, out_dir: Path, say: Any) -> str:
    """The name of the arm's best candidate on the tuning split (recorded in ``choice.json``)."""
    assert grid.tuning_split is not None
    scores = {}
    for cand, extra in arm.candidates.items():
        res = _execute(grid, [*arm.args, *extra], arm, grid.tuning_seed, grid.tuning_split,
                       out_dir / "tuning" / arm.name / cand, say)  # fmt: skip
        scores[cand] = _overall(res["metrics"], arm.tasks or grid.tasks)
    best = max(scores, key=lambda k: scores[k])
    choice = {"arm": arm.name, "split": grid.tuning_split, "seed": grid.tuning_seed, "scores": scores, "chosen": best}
    (out_dir / "tuning" / arm.name / "choice.json").write_text(json.dumps(choice, indent=2))
    return best


def run_grid(grid: Grid, out_dir: str | os.PathLike, arms: Sequence[str] | None = None, say: Any = print) -> list[dict[str, Any]]:
    """Run (or resume) the grid into ``out_dir``; returns every cell's result. ``arms`` restricts
    the run to some arms (their tuning included). Runs go one at a time: on a small machine two
    training processes at once slow each other down many times over."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(grid_dict(grid), indent=2))
    chosen = [grid.arm(a) for a in arms] if arms else grid.arms
    unknown = sorted(set(arms or []) - {a.name for a in grid.arms})
    if unknown:
        raise GridError(f"--arms: unknown arms {unknown}; the grid has {[a.name for a in grid.arms]}")
    results = []
    for arm in chosen:
        args = tuned_args(grid, arm, out, say)
        for split in grid.splits:
            for seed in grid.seeds:
                results.append(_execute(grid, args, arm, seed, split, out / "runs" / f"split{split}" / arm.name / f"seed{seed}", say))
    return results


def grid_dict(grid: Grid) -> dict[str, Any]:
    """The grid as ``grid.json`` records it in a comparison folder (what the report reads)."""
    return {"tasks": grid.tasks, "train_limits": grid.train_limits, "seeds": grid.seeds, "splits": grid.splits, "protocol": grid.protocol,
            "tuning_split": grid.tuning_split, "tuning_seed": grid.tuning_seed, "reference": grid.reference,
            "baseline": grid.baseline, "pairs": grid.pairs,
            "arms": {a.name: {"args": a.args, "single_task": a.single_task, "candidates": a.candidates, "tasks": a.tasks or grid.tasks,
                              **({"choice_of": a.choice_of} if a.choice_of else {})}
                     for a in grid.arms}}  # fmt: skip


# ---------------------------------------------------------------------------------------- statistics
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


def _primary(metrics: dict[str, Any], task: str) -> tuple[str, float]:
    """The task's own metric (accuracy, pearson, ...): ``eval_<task>_<metric>`` other than score/loss."""
    keys = sorted(k for k in metrics if k.startswith(f"eval_{task}_") and k not in (f"eval_{task}_score", f"eval_{task}_loss"))
    if not keys:
        raise GridError(f"no metric for task {task!r} in the run's metrics")
    return keys[0][len(f"eval_{task}_") :], float(metrics[keys[0]])


def load_results(out_dir: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid description and every finished reported cell (tuning runs excluded)."""
    out = Path(out_dir)
    if not (out / "grid.json").is_file():
        raise GridError(f"{out} holds no grid.json: not a comparison folder (run `python -m hf_multitask.compare run` first)")
    grid = json.loads((out / "grid.json").read_text())
    cells = [json.loads(p.read_text()) for p in sorted((out / "runs").glob(f"split*/*/seed*/{RESULT}"))] if (out / "runs").is_dir() else []
    return grid, cells


def summarise(grid: dict[str, Any], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (split, arm): metric means, overall, Delta-m vs the reference arm and the
    paired difference vs the baseline arm (both per seed, then mean and 95 % interval), cost."""
    all_tasks = grid["tasks"]
    by = {(c["split"], c["arm"], c["seed"]): c for c in cells}

    def tasks_of(split: int, arm: str, seed: int) -> list[str]:
        return list(by[(split, arm, seed)].get("tasks") or all_tasks)

    rows = []
    for split in sorted({c["split"] for c in cells}):
        for arm in [a for a in grid["arms"] if any(k[:2] == (split, a) for k in by)]:
            seeds = sorted(k[2] for k in by if k[:2] == (split, arm))
            row: dict[str, Any] = {"split": split, "arm": arm, "seeds": len(seeds)}
            tasks = tasks_of(split, arm, seeds[0])
            row["tasks"] = " ".join(tasks)
            for task in all_tasks:
                if task not in tasks:
                    row[f"{task}_metric"], row[task], row[f"{task}_ci"] = "", math.nan, math.nan
                    continue
                values = [_primary(by[(split, arm, s)]["metrics"], task) for s in seeds]
                row[f"{task}_metric"] = values[0][0]
                row[task], row[f"{task}_ci"] = interval([v for _, v in values])
            overall = {s: _overall(by[(split, arm, s)]["metrics"], tasks) for s in seeds}
            row["overall"], row["overall_ci"] = interval(list(overall.values()))
            for key, other in (
                ("delta_m", grid.get("reference")),
                ("vs_reference", grid.get("reference")),
                ("vs_baseline", grid.get("baseline")),
            ):
                paired = [s for s in seeds if (split, other, s) in by] if other else []
                shared = [t for t in tasks if paired and t in tasks_of(split, other, paired[0])]
                if key != "delta_m" and paired and set(shared) != set(tasks_of(split, other, paired[0])) | set(tasks):
                    paired = []  # overall scores over different task sets are not comparable
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
                    diffs = [overall[s] - _overall(by[(split, other, s)]["metrics"], tasks) for s in paired]
                row[key], row[f"{key}_ci"] = interval(diffs)
                row[f"{key}_seeds"] = len(paired)
            m = [by[(split, arm, s)] for s in seeds]
            # medians over seeds: one run slowed by other work on the machine must not move the row
            row["s_per_1k_examples"] = _median_rate(m, "train_examples", 1000.0)
            row["s_per_step"] = _median_rate(m, "train_global_steps")
            row["peak_rss_mb"] = max(c["peak_rss_mb"] for c in m)
            rows.append(row)
    return rows


def _median_rate(cells: list[dict[str, Any]], per: str, scale: float = 1.0) -> float:
    """The median over cells of training seconds per ``per`` (times ``scale``); ``nan`` if none has it."""
    rates = [scale * c["metrics"].get("train_seconds", 0.0) / c["metrics"][per] for c in cells if c["metrics"].get(per)]
    return statistics.median(rates) if rates else math.nan


def paired(grid: dict[str, Any], cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (split, pair) of the grid's ``pairs``: ``a - b`` per seed both arms finished,
    for each task's metric and the overall score, then mean and 95 % interval. Pairs whose arms
    ran on different task sets are left out (their overall scores are not comparable)."""
    by = {(c["split"], c["arm"], c["seed"]): c for c in cells}
    rows = []
    for split in sorted({c["split"] for c in cells}):
        for a, b in grid.get("pairs") or []:
            seeds = sorted(k[2] for k in by if k[:2] == (split, a) and (split, b, k[2]) in by)
            if not seeds:
                continue
            tasks = list(by[(split, a, seeds[0])].get("tasks") or grid["tasks"])
            if set(tasks) != set(by[(split, b, seeds[0])].get("tasks") or grid["tasks"]):
                continue
            row: dict[str, Any] = {"split": split, "pair": f"{a} − {b}", "seeds": len(seeds)}
            for task in grid["tasks"]:
                diffs = [_primary(by[(split, a, s)]["metrics"], task)[1] - _primary(by[(split, b, s)]["metrics"], task)[1]
                         for s in seeds] if task in tasks else []  # fmt: skip
                row[task], row[f"{task}_ci"] = interval(diffs) if diffs else (math.nan, math.nan)
            diffs = [_overall(by[(split, a, s)]["metrics"], tasks) - _overall(by[(split, b, s)]["metrics"], tasks) for s in seeds]
            row["overall"], row["overall_ci"] = interval(diffs)
            rows.append(row)
    return rows


def _fmt(mean: float, ci: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" if math.isnan(ci) else f"{mean:.{digits}f} ± {ci:.{digits}f}"


def _verdict(mean: float, ci: float) -> str:
    if math.isnan(mean) or math.isnan(ci):
        return ""
    if mean - ci > 0:
        return " (better)"
    if mean + ci < 0:
        return " (worse)"
    return " (within noise)"


def markdown(
    grid: dict[str, Any], rows: list[dict[str, Any]], tuning: list[dict[str, Any]] | None = None, pairs: list[dict[str, Any]] | None = None
) -> str:
    """The results table (one per split), the paired differences and the tuning choices, as markdown."""
    tasks = grid["tasks"]
    lines = []
    for split in sorted({r["split"] for r in rows}):
        lines += [f"Validation split {split} (seeds: mean ± 95 % t interval; Δm and the paired Δ overall vs `{grid.get('reference')}` "
                  f"(the reference), paired Δ overall vs `{grid.get('baseline')}` (the baseline)):", ""]  # fmt: skip
        names = {t: next((r[f"{t}_metric"] for r in rows if r["split"] == split and r[f"{t}_metric"]), "") for t in tasks}
        head = ["arm", "seeds", *[f"{t} {names[t]}" for t in tasks], "overall", "Δm (%)", "Δ vs reference", "Δ vs baseline",
                "s / 1k examples (median)", "s / step (median)", "peak RSS (MB)"]  # fmt: skip
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in (r for r in rows if r["split"] == split):
            subset = "" if r.get("tasks", " ".join(tasks)) == " ".join(tasks) else f" ({r['tasks']} only)"
            cells = [f"`{r['arm']}`", str(r["seeds"]), *[_fmt(r[t], r[f"{t}_ci"]) for t in tasks], _fmt(r["overall"], r["overall_ci"]) + subset,
                     _fmt(r["delta_m"], r["delta_m_ci"], 2),
                     _fmt(r["vs_reference"], r["vs_reference_ci"]) + _verdict(r["vs_reference"], r["vs_reference_ci"]),
                     _fmt(r["vs_baseline"], r["vs_baseline_ci"]) + _verdict(r["vs_baseline"], r["vs_baseline_ci"]),
                     f"{r['s_per_1k_examples']:.1f}", f"{r['s_per_step']:.2f}", f"{r['peak_rss_mb']:.0f}"]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        mine = [r for r in pairs or [] if r["split"] == split]
        if mine:
            lines += [f"Paired differences on split {split} (same seed; mean ± 95 % t interval over seeds):", ""]
            head = ["a − b", "seeds", *[f"Δ {t}" for t in tasks], "Δ overall"]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for r in mine:
                cells = [f"`{r['pair']}`", str(r["seeds"]), *[_fmt(r[t], r[f"{t}_ci"]) for t in tasks],
                         _fmt(r["overall"], r["overall_ci"]) + _verdict(r["overall"], r["overall_ci"])]  # fmt: skip
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    for choice in tuning or []:
        scores = ", ".join(f"`{k}` {v:.4f}" for k, v in choice["scores"].items())
        lines.append(
            f"- `{choice['arm']}` tuned on split {choice['split']} (seed {choice['seed']}): {scores}; chosen `{choice['chosen']}`."
        )
        for name, spec in grid.get("arms", {}).items():
            if spec.get("choice_of") == choice["arm"]:
                lines.append(
                    f"- `{name}` takes `{choice['arm']}`'s choice, `{choice['chosen']}`, with its own flags {' '.join(spec['args'])}."
                )
    return "\n".join(lines).rstrip() + "\n"


def plot(grid: dict[str, Any], rows: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """Overall score vs training cost, and per-task differences from the reference arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, ref = grid["tasks"], grid.get("reference")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colour = {arm: f"C{i % 10}" for i, arm in enumerate(dict.fromkeys(r["arm"] for r in rows))}  # one colour per arm in both panels
    for r in rows:
        err = None if math.isnan(r["overall_ci"]) else r["overall_ci"]
        left.errorbar(r["s_per_1k_examples"], r["overall"], yerr=err, fmt="o", capsize=3, color=colour[r["arm"]])
        left.annotate(f"{r['arm']} (split {r['split']})", (r["s_per_1k_examples"], r["overall"]), fontsize=7, xytext=(4, 2),
                      textcoords="offset points")  # fmt: skip
    left.set_xlabel("training seconds per 1,000 examples")
    left.set_ylabel("overall score (mean over seeds)")
    left.set_title("score vs cost")
    others = [r for r in rows if r["arm"] != ref]
    width = 0.8 / max(1, len(others))
    for i, r in enumerate(others):
        base = next((b for b in rows if b["arm"] == ref and b["split"] == r["split"]), None)
        if base is None:
            continue
        deltas = [r[t] - base[t] for t in tasks]
        right.bar(
            [k + i * width for k in range(len(tasks))], deltas, width, label=f"{r['arm']} (split {r['split']})", color=colour[r["arm"]]
        )
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xticks([k + 0.4 - width / 2 for k in range(len(tasks))], tasks)
    right.set_ylabel(f"metric minus `{ref}`")
    right.set_title("per-task difference from single-task models")
    if others:
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out_dir: str | os.PathLike, markdown_path: str | None = None, png_path: str | None = None) -> list[dict[str, Any]]:
    """Write ``results.csv``, ``results.md`` (or ``markdown_path``) and ``results.png`` (or
    ``png_path``) into the comparison folder; returns the summary rows."""
    out = Path(out_dir)
    grid, cells = load_results(out)
    if not cells:
        raise GridError(f"{out}: no finished runs yet")
    rows = summarise(grid, cells)
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tuning = [json.loads(p.read_text()) for p in sorted(out.glob("tuning/*/choice.json"))]
    Path(markdown_path or out / "results.md").write_text(markdown(grid, rows, tuning, paired(grid, cells)))
    plot(grid, rows, png_path or out / "results.png")
    return rows


def main(argv: list[str] | None = None) -> None:
    """``python -m hf_multitask.compare run GRID --output-dir DIR`` / ``report DIR``."""
    parser = argparse.ArgumentParser(prog="python -m hf_multitask.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run (or resume) a grid")
    run_p.add_argument("grid", help="grid file (.yaml or .json)")
    run_p.add_argument("--output-dir", required=True)
    run_p.add_argument("--arms", nargs="+", help="run only these arms")
    run_p.add_argument("--report", action="store_true", help="write the report when the runs are done")
    rep_p = sub.add_parser("report", help="summarise a comparison folder")
    rep_p.add_argument("output_dir")
    rep_p.add_argument("--markdown", help="where to write the markdown table (default DIR/results.md)")
    rep_p.add_argument("--png", help="where to write the figure (default DIR/results.png)")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run_grid(Grid.from_file(args.grid), args.output_dir, args.arms, say=lambda m: print(f"[compare] {m}", flush=True))
            if args.report:
                report(args.output_dir)
        else:
            report(args.output_dir, args.markdown, args.png)
    except (GridError, RuntimeError) as err:
        print(f"hf-multitask compare: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()
