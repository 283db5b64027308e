"""Where a grid stands: each run done, resumable from a checkpoint, or still to run, and about
how much time is left at the pace of the runs already done. Nothing is run."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from .derive import can_derive
from .grid import RESULT, Arm, Grid, GridError
from .run import (
    _finished,
    _identity,
    _resumable,
    best_candidate,
    candidate_args,
    cell_folder,
    cell_plan,
    finished_part,
    gathered,
    reported_args,
    same_run,
    tuning_folder,
)


def _runs(grid: Grid, args: list[str] | None, arm: Arm, seed: int, split: int, folder: Path, gathering: bool,
          teacher_args: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """One cell: ``done`` (its result) or None, ``left`` (its runs still to go: one, or one per
    unfinished task of a single-task arm), ``resumable`` (how many of those can continue from a
    checkpoint), ``waiting`` (its flags are not known until its arm's tuning is done),
    ``rescored`` (it will be its ``same_training_as`` source's finished cell, or for a tuning run
    its ``candidates_same_training_as`` source's, re-scored: no run left; set by [`status()`][hf_multitask.compare.status.status],
    which knows the source's row), ``copied`` (another arm's finished cell has its very flags,
    [`run.same_run()`][hf_multitask.compare.run.same_run]: no run left) and ``edited``
    (its result was run with other flags: ``run`` stops there). ``gathering``: the cell's test
    files are gathered (reported cells of a grid with ``test_predictions``), as in ``run``."""
    tasks = list(arm.tasks or grid.tasks)
    row: dict[str, Any] = {"arm": arm.name, "seed": seed, "split": split, "runs": len(tasks) if arm.single_task else 1,
                           "done": None, "left": 0, "resumable": 0, "waiting": args is None, "rescored": False,
                           "copied": False, "edited": False}  # fmt: skip
    try:
        # flags not known until the tuning is done: a result is taken as done, its flags checked once they are known
        identity = {} if args is None else _identity(grid, args, tasks, arm.primary, arm.teachers_from,
                                                     teacher_args if teacher_args is not None or not arm.teachers_from
                                                     else list(grid.arm(arm.teachers_from).args))  # fmt: skip
        row["done"] = _finished(folder / RESULT, identity)
        if row["done"] is not None:
            return row
        if args is None:
            row["left"] = row["runs"]
            return row
        parts = [(folder / t, [t]) for t in tasks] if arm.single_task else [(folder, tasks)]
        for where, run_tasks in parts:
            if arm.single_task and finished_part(grid, args, run_tasks[0], where, gathering):
                continue  # this task of a single-task arm has run (and its test files are there if gathered)
            # teachers: a teachers_from arm's, still to train
            teachers, cmd = cell_plan(grid, args, arm, run_tasks, seed, split, where, teacher_args)
            row["runs"] += len(teachers)
            row["left"] += len(teachers) + 1
            row["resumable"] += sum(_resumable(sub / "run", sub_cmd) is not None for _, sub, sub_cmd in teachers)
            row["resumable"] += _resumable(where / "run", cmd) is not None
    except GridError:
        row["edited"] = True
    return row


def status(grid: Grid, out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """One row per tuning run and per reported cell (``kind``: ``tuning`` / ``run``), in the
    order ``run`` takes them (see [`_runs()`][hf_multitask.compare.status._runs] for the keys)."""
    out = Path(out_dir)
    rows: list[dict[str, Any]] = []
    tuning: dict[tuple[str, str], dict[str, Any]] = {}
    for arm in grid.arms:
        for cand in arm.candidates:
            row = _runs(grid, candidate_args(grid, arm, cand), arm, grid.tuning_seed, grid.tuning_split,
                        tuning_folder(out, arm, cand), gathering=False)  # fmt: skip
            tuning[arm.name, cand] = {**row, "kind": "tuning", "candidate": cand}
    for (name, cand), row in tuning.items():  # a candidate re-scored from another arm's run of it takes no run
        source = grid.arm(name).candidates_same_training_as.get(cand)
        if source is None or row["done"] is not None or row["edited"]:
            continue
        if can_derive(grid.arm(name), tuning[source, cand]["done"], None, gathering=False):
            row.update(rescored=True, left=0, resumable=0)
    rows += tuning.values()
    chosen: dict[str, str] = {}  # the tuned arms whose tuning is done
    for arm in grid.arms:
        results = {cand: tuning[arm.name, cand]["done"] for cand in arm.candidates if tuning[arm.name, cand]["done"] is not None}
        if arm.candidates and len(results) == len(arm.candidates):
            chosen[arm.name] = best_candidate(grid, results)[0]
    cells: dict[tuple[str, int, int], dict[str, Any]] = {}
    for arm in grid.arms:
        args = reported_args(grid, arm, chosen)
        teacher_args = reported_args(grid, grid.arm(arm.teachers_from), chosen) if arm.teachers_from else None
        if arm.teachers_from and teacher_args is None:
            args = None  # the teachers' flags wait for their arm's tuning
        for split in grid.splits:
            for seed in grid.seeds:
                cells[arm.name, seed, split] = _runs(
                    grid, args, arm, seed, split, cell_folder(out, arm, seed, split), bool(grid.test_predictions), teacher_args
                )
    for (name, seed, split), row in cells.items():  # `run` runs a source's cell first, then re-scores it if it can
        arm = grid.arm(name)
        if row["done"] is not None or row["waiting"] or row["edited"]:
            continue
        if arm.same_training_as is None:
            args = reported_args(grid, arm, chosen)  # known: the cell is not waiting for its tuning
            if args is not None and same_run(grid, out, arm, args, seed, split) is not None:
                row.update(copied=True, left=0, resumable=0)
            continue
        source = grid.arm(arm.same_training_as)
        if can_derive(arm, cells[source.name, seed, split]["done"], gathered(grid, out, source, seed, split), bool(grid.test_predictions)):
            row.update(rescored=True, left=0, resumable=0)
    rows += [{**row, "kind": "run"} for row in cells.values()]
    return rows


def _pace(rows: list[dict[str, Any]]) -> float | None:
    """The median wall seconds of one finished run (a single-task cell's time split over its
    tasks; resumed runs left out: their time covers part of a run)."""
    walls = [r["done"]["wall_seconds"] / r["runs"] for r in rows
             if r["done"] and r["done"].get("wall_seconds") and not r["done"].get("resumed_from")]  # fmt: skip
    return statistics.median(walls) if walls else None


def status_text(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a table by arm and the time left, at `_pace()` per run left (a resumable
    run counted whole, so the estimate is an upper bound)."""
    lines = ["| arm | tuning runs done | cells done | runs left | resumable |", "|---|---|---|---|---|"]
    for arm in dict.fromkeys(r["arm"] for r in rows if r["kind"] == "run"):  # every arm has reported cells, in the grid's order
        mine = [r for r in rows if r["arm"] == arm]
        tuning = [r for r in mine if r["kind"] == "tuning"]
        cells = [r for r in mine if r["kind"] == "run"]
        tuned = f"{sum(r['done'] is not None for r in tuning)}/{len(tuning)}" if tuning else "—"
        if any(r["rescored"] for r in tuning):
            tuned += f" ({sum(r['rescored'] for r in tuning)} to be re-scored from another arm's run, no run left)"
        done = f"{sum(r['done'] is not None for r in cells)}/{len(cells)}"
        if any(r["waiting"] and r["done"] is None for r in cells):
            done += " (flags chosen by the tuning)"
        rescored = sum(r["rescored"] for r in cells)
        if rescored:
            done += f" ({rescored} to be re-scored from `same_training_as` runs, no run left)"
        copied = sum(r["copied"] for r in cells)
        if copied:
            done += f" ({copied} to be copied from another arm's cells with the same flags, no run left)"
        if any(r["edited"] for r in mine):
            done += " (a result was run with other flags: `run` stops there)"
        lines.append(f"| `{arm}` | {tuned} | {done} | {sum(r['left'] for r in mine)} | {sum(r['resumable'] for r in mine)} |")
    left, pace = sum(r["left"] for r in rows), _pace(rows)
    if left and pace:
        lines.append(f"\n{left} runs left: about {left * pace / 3600:.1f} h at the median wall time of a finished run "
                     f"({pace / 60:.0f} min; resumable runs counted whole)")  # fmt: skip
    else:
        lines.append(f"\n{left} runs left" + (" (no finished run to time them by)" if left else ""))
    return "\n".join(lines)
