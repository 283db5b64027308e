"""Running a grid: every cell in its own process, one at a time, resumable; tuning first."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoints import latest_complete_checkpoint
from .derive import derived_cell, evaluation_history, task_test_files
from .grid import RESULT, Arm, Grid, GridError
from .stats import _overall, scored

_PACKAGES = ("hf-multitask", "torch", "transformers", "datasets", "accelerate", "peft", "numpy", "scikit-learn")


def versions() -> dict[str, str]:
    """The Python and package versions a cell ran with, kept in its result: a later install can
    shift the last digits of a committed result (transformers 5.17 -> 5.24 moved a trio cell by 1e-7)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "machine": platform.machine()}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


ATTEMPT = "compare_attempt.json"  # in a run folder: the command of the attempt that is writing it


def _resumable(out: Path, cmd: list[str]) -> Path | None:
    """The newest complete checkpoint an earlier, unfinished attempt of this same command left in
    ``out`` (killed, or the machine lost), or None: a folder written by another command (the
    grid was edited since) or with no complete checkpoint starts over."""
    try:
        earlier = json.loads((out / ATTEMPT).read_text()).get("cmd")
    except (OSError, ValueError, AttributeError):
        return None
    if earlier != cmd:
        return None
    return latest_complete_checkpoint(out)[0]


def _run_one(cmd: list[str], out: Path, log: Path) -> dict[str, Any]:
    """Run one recipe in a child process; its metrics plus wall time, the child's peak RSS, the
    versions and its evaluations during training ([`derive.evaluation_history()`][hf_multitask.compare.derive.evaluation_history]). A run an earlier attempt left unfinished continues from its newest complete checkpoint
    (``--resume_from_checkpoint true``; the result records ``resumed_from``, and its time covers the
    resumed part only); otherwise it starts over (``--overwrite_output_dir``)."""
    out.mkdir(parents=True, exist_ok=True)
    resume = _resumable(out, cmd)
    (out / ATTEMPT).write_text(json.dumps({"cmd": cmd}))
    full = [*cmd, "--resume_from_checkpoint", "true"] if resume else [*cmd, "--overwrite_output_dir"]
    start = time.perf_counter()
    with open(log, "a" if resume else "w") as handle:
        if resume:
            handle.write(f"\n[compare] the earlier attempt stopped: resuming from {resume.name}\n")
            handle.flush()
        proc = subprocess.Popen(full, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"run failed (exit {proc.returncode}): {' '.join(full)}\nlog {log}:\n" + "\n".join(tail))
    metrics = json.loads((out / "metrics.json").read_text())
    return {"metrics": metrics, "wall_seconds": wall, "peak_rss_mb": usage.ru_maxrss / 1024,  # ru_maxrss is KiB on Linux
            "versions": versions(), **({"resumed_from": resume.name} if resume else {}), **evaluation_history(out)}  # fmt: skip


def _limits(grid: Grid, tasks: list[str]) -> dict[str, int]:
    """The grid's train limits of the tasks a run trains."""
    return {t: n for t, n in grid.train_limits.items() if t in tasks}


def _per_task_flags(flags: list[str], grid_tasks: list[str], tasks: list[str]) -> list[str]:
    """``flags`` with every per-task mapping (a flag whose value is a JSON object keyed by grid
    tasks, e.g. ``--validation_files {"sst": ..., "sts": ...}``) cut to the run's ``tasks``, and
    dropped when none of them is left, so a single-task run is never refused for naming the
    other tasks."""
    out: list[str] = []
    for i, value in enumerate(flags):
        if i and flags[i - 1].startswith("--") and value.lstrip().startswith("{"):
            try:
                mapping = json.loads(value)
            except json.JSONDecodeError:
                mapping = None
            if isinstance(mapping, dict) and mapping and set(mapping) <= set(grid_tasks):
                kept = {t: v for t, v in mapping.items() if t in tasks}
                if not kept:
                    out.pop()  # the flag itself goes too
                    continue
                value = json.dumps(kept)
        out.append(value)
    return out


def _recipe_cmd(grid: Grid, args: list[str], tasks: list[str], seed: int, split: int, out: Path,
                primary: list[str] | None = None) -> list[str]:  # fmt: skip
    limits = _limits(grid, tasks)
    extra = ["--train_limits", json.dumps(limits)] if limits else []
    extra += ["--primary_tasks", *primary] if primary else []
    flags = _per_task_flags([*grid.protocol, *args], grid.tasks, tasks) if set(tasks) != set(grid.tasks) else [*grid.protocol, *args]
    return [*grid.command, *flags, *extra, "--tasks", *tasks, "--seed", str(seed), "--validation_seed", str(split),
            "--output-dir", str(out)]  # fmt: skip


def _identity(grid: Grid, args: list[str], tasks: list[str], primary: list[str] | None = None,
              teachers_from: str | None = None, teacher_args: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """What makes a finished cell's result valid for the grid as it is now: the run's flags (and
    its primary tasks, teacher arm and that arm's flags, recorded only when it has them, so older
    cells keep their identity)."""
    found = {"args": args, "tasks": tasks, "protocol": grid.protocol, "train_limits": _limits(grid, tasks)}
    return {**found, **({"primary": primary} if primary else {}), **({"teachers_from": teachers_from} if teachers_from else {}),
            **({"teacher_args": teacher_args} if teachers_from and teacher_args is not None else {})}  # fmt: skip


def _finished(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """A finished cell's result, or None if it has not run. A cell run with other flags (the grid
    was edited since) is refused rather than silently reused. Keys a result does not record
    (older cells) are not compared."""
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    for key, now in identity.items():
        if key in result and result[key] != now:
            raise GridError(
                f"{path} was run with {key} {result[key]}, but the grid now gives {now}: delete that cell's folder to run it "
                "again with the new flags, or give the changed arm or candidate a new name"
            )
    return result


def _gather_test_predictions(folders: list[Path], dest: Path) -> None:
    """Copy folders of test prediction files (a cell's runs' ``predictions/test/``: one run, or
    one per task of a single-task arm; or another cell's gathered folder) into one folder,
    replacing what an earlier attempt left."""
    found = [folder for folder in folders if folder.is_dir()]
    if not found:
        return
    if dest.exists():
        shutil.rmtree(dest)
    for source in found:
        shutil.copytree(source, dest, dirs_exist_ok=True)


def finished_part(grid: Grid, args: list[str], task: str, sub: Path, gathering: bool) -> dict[str, Any] | None:
    """The finished run of ``task`` (in ``sub``) of a single-task cell, or None if it must run: it
    has not, or the cell gathers test files and the run folder holding them is gone (a committed
    result on a fresh clone: the gathered folder would silently lack this task's files)."""
    part = _finished(sub / RESULT, _identity(grid, args, [task]))
    return None if part is not None and gathering and not (sub / "run").is_dir() else part


def same_run(grid: Grid, out: Path, arm: Arm, args: list[str], seed: int, split: int) -> tuple[dict[str, Any], Path | None] | None:
    """Another arm's finished cell that is this cell's very run, and its gathered test files: the
    same flags, tasks, primary tasks, protocol and train limits, seed and split, and both one
    run (or both single-task). A tuned arm that chooses a fixed arm's flags is that arm's cells;
    the grid trains them once. None when there is no such cell, or its test files are missing."""
    tasks = list(arm.tasks or grid.tasks)
    identity = {"primary": None, "teachers_from": None, **_identity(grid, args, tasks, arm.primary, arm.teachers_from)}
    for other in grid.arms:
        if other.name == arm.name or other.single_task != arm.single_task:
            continue
        path = cell_folder(out, other, seed, split) / RESULT
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        if any(result.get(key) != value for key, value in identity.items()) or "same_run_as" in result:
            continue  # other flags, or itself a copy (its source is found in turn)
        test = gathered(grid, out, other, seed, split)
        if test is not None and not (test.is_dir() and task_test_files(test, tasks) is not None):
            continue
        return result, test
    return None


def _execute(grid: Grid, args: list[str], arm: Arm, seed: int, split: int, folder: Path, say: Any,
             gather: Path | None = None, source: tuple[dict[str, Any], Path | None] | None = None,
             candidate: str | None = None, same: tuple[dict[str, Any], Path | None] | None = None,
             teacher_args: list[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """One (arm, seed, split) cell: resumable; single-task arms run once per task and combine.
    ``gather``: where the cell's test prediction files go once it has run. ``source``: for an arm
    with ``same_training_as`` (or a candidate in ``candidates_same_training_as``), that arm's
    finished cell (or candidate's tuning run) and its gathered test files, which this cell
    re-scores when it can ([`derive.derived_cell()`][hf_multitask.compare.derive.derived_cell]) instead of training. ``candidate``: the
    tuning candidate this run is, recorded in its result. ``same``: another arm's finished cell
    with this cell's very flags ([`same_run()`][hf_multitask.compare.run.same_run]) and its gathered test files, which this cell
    takes instead of training. ``teacher_args``: a ``teachers_from`` arm's flags, when it is tuned."""
    tasks = list(arm.tasks or grid.tasks)
    if arm.teachers_from and teacher_args is None:
        teacher_args = list(grid.arm(arm.teachers_from).args)
    identity = _identity(grid, args, tasks, arm.primary, arm.teachers_from, teacher_args)
    done = _finished(folder / RESULT, identity)
    if done is not None:
        return done
    derived = derived_cell(arm, source[0], source[1], gather) if source is not None else None
    runs: list[Path] = []
    if same is not None:
        other, other_test = same
        say(f"{arm.name}: seed {seed}, split {split} has the flags of {other['arm']}'s finished cell: its result, copied")
        result = {k: v for k, v in other.items() if k not in ("arm", "candidate", "derived_from")}
        result.update(wall_seconds=0.0, same_run_as={"arm": other["arm"], "seed": seed, "split": split})
        if gather is not None and other_test is not None:
            _gather_test_predictions([other_test], gather)
    elif derived is not None:
        of = f" / {candidate}" if candidate else ""  # a tuning run names its candidate, the same in both arms
        say(f"{arm.name}{of}: seed {seed}, split {split} keeps the checkpoint {derived['derived_from']['arm']}{of}'s run kept: "
            "its result, re-scored")  # fmt: skip
        result = derived
        if candidate:
            result["derived_from"]["candidate"] = candidate
    elif arm.single_task:
        parts: dict[str, dict[str, Any]] = {}
        for task in tasks:
            sub = folder / task
            part = finished_part(grid, args, task, sub, gathering=gather is not None)
            if part is not None:
                parts[task] = part
                continue
            if (sub / RESULT).is_file():
                say(f"{arm.name} / {task}: seed {seed}, split {split} has a result but no run folder for its test "
                    "predictions: running it again")  # fmt: skip
            say(f"{arm.name} / {task}: seed {seed}, split {split}")
            parts[task] = _run_one(cell_plan(grid, args, arm, [task], seed, split, sub)[1], sub / "run", sub / "log.txt")
            parts[task].update(_identity(grid, args, [task]))
            (sub / RESULT).write_text(json.dumps(parts[task], indent=2))
        metrics: dict[str, float] = {}
        for task, part in parts.items():
            metrics.update({k: v for k, v in part["metrics"].items() if k.startswith(f"eval_{task}_")})
        steps = sum(p["metrics"].get("train_global_steps", 0) for p in parts.values())
        train_seconds = sum(p["metrics"].get("train_seconds", 0.0) for p in parts.values())
        examples = sum(p["metrics"].get("train_examples", 0) for p in parts.values())
        metrics.update(train_seconds=train_seconds, train_examples=examples, train_global_steps=steps)
        result = {"metrics": metrics, "wall_seconds": sum(p["wall_seconds"] for p in parts.values()),
                  "peak_rss_mb": max(p["peak_rss_mb"] for p in parts.values()),
                  "versions": list(parts.values())[-1].get("versions")}  # fmt: skip
        resumed = {task: part["resumed_from"] for task, part in parts.items() if "resumed_from" in part}
        if resumed:
            result["resumed_from"] = resumed
        runs = [folder / task / "run" for task in tasks]
    else:
        teachers, cmd = cell_plan(grid, args, arm, tasks, seed, split, folder, teacher_args)
        _train_teachers(grid, arm, seed, split, teachers, say, teacher_args)
        say(f"{arm.name}: seed {seed}, split {split}")
        result = _run_one(cmd, folder / "run", folder / "log.txt")
        runs = [folder / "run"]
    if gather is not None and runs:
        _gather_test_predictions([run / "predictions" / "test" for run in runs], gather)
    result.update(arm=arm.name, seed=seed, split=split, **identity, **({"candidate": candidate} if candidate else {}))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULT).write_text(json.dumps(result, indent=2))
    return result


def teacher_plan(
    grid: Grid, arm: Arm, tasks: list[str], seed: int, split: int, folder: Path, source_args: list[str] | None = None
) -> tuple[list[tuple[str, Path, list[str]]], list[str]]:
    """A ``teachers_from`` cell's teachers still to train, as ``(name, folder, command)``, and the
    student's ``--teachers`` / ``--teacher_cache`` flags. The teacher arm's runs for the same seed
    and split, by its own command (``source_args``: its flags, its chosen candidate's included when
    it is tuned; default its own), with no test files: a single-task arm's run of each task whose
    cached outputs are not in ``folder/teacher_outputs`` and whose teacher has not run (under
    ``folder/teachers/{task}``); a multitask arm's one run (under ``folder/teachers/{arm}``), whose
    specialised experts teach their tasks if it specialises, else its ``best/`` model. Paths are
    relative to the working directory, so the committed cache names no machine's folders. Nothing
    is run."""
    source = grid.arm(arm.teachers_from)  # type: ignore[arg-type]
    source_args = list(source.args) if source_args is None else list(source_args)
    cache = folder / "teacher_outputs"
    todo, teachers = [], {}
    needed = [t for t in tasks if not (cache / f"{t}.npz").is_file()]

    def trained(sub: Path, run_tasks: list[str]) -> bool:
        # a teacher run that finished by the teacher arm's flags as they are now (one run with other flags, the grid
        # edited since, is refused by name rather than distilled from)
        return (sub / "run" / "best").is_dir() and _finished(sub / RESULT, _identity(grid, source_args, run_tasks)) is not None

    if source.single_task:
        for task in tasks:
            sub = folder / "teachers" / task
            if task in needed and not trained(sub, [task]):
                todo.append((task, sub, [*_recipe_cmd(grid, source_args, [task], seed, split, sub / "run"), "--test_predictions", "false"]))
            teachers[task] = os.path.relpath(sub / "run" / "best")
    else:
        sub = folder / "teachers" / source.name
        source_tasks = list(source.tasks or grid.tasks)
        if needed and not trained(sub, source_tasks):
            todo.append((source.name, sub, [*_recipe_cmd(grid, source_args, source_tasks, seed, split, sub / "run"),
                                             "--test_predictions", "false"]))  # fmt: skip
        teachers = {task: os.path.relpath(sub / "run" / teacher_model(source_args, task)) for task in tasks}
    return todo, ["--teachers", json.dumps(teachers), "--teacher_cache", os.path.relpath(cache)]


def _flag(args: list[str], flag: str, default: str) -> str:
    """The value the last ``flag`` in ``args`` is given (``default`` when it is not there)."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
    return values[-1] if values else default


def teacher_model(args: list[str], task: str) -> str:
    """Where in a multitask teacher run's folder ``task``'s teacher is: with two-step specialisation
    its expert (``specialised/{task}``, or ``specialised/experts`` for the PAL and LoRA forms, which
    hold every task's module in one model), otherwise ``best``."""
    if int(_flag(args, "--specialise_steps", "0")) <= 0:
        return "best"
    return f"specialised/{task}" if _flag(args, "--specialise_form", "encoder") == "encoder" else "specialised/experts"


def cell_plan(
    grid: Grid, args: list[str], arm: Arm, tasks: list[str], seed: int, split: int, folder: Path, teacher_args: list[str] | None = None
) -> tuple[list[tuple[str, Path, list[str]]], list[str]]:
    """A cell's runs: the teachers it still has to train ([`teacher_plan()`][hf_multitask.compare.run.teacher_plan]; none unless the
    arm has ``teachers_from``; ``teacher_args``: the teacher arm's flags when it is tuned), then its
    own command, with the teachers' flags. For a single-task arm, one task's run: ``tasks`` is that
    task and ``folder`` its sub-folder (such an arm has no teachers and no primary tasks,
    [`grid.Grid`][hf_multitask.compare.grid.Grid] refuses them). The one place a cell's command is
    built, for ``run`` and ``status`` alike (a resumable run is recognised by its command). Nothing
    is run."""
    teachers, flags = teacher_plan(grid, arm, tasks, seed, split, folder, teacher_args) if arm.teachers_from else ([], [])
    return teachers, [*_recipe_cmd(grid, args, tasks, seed, split, folder / "run", arm.primary), *flags]


def _train_teachers(grid: Grid, arm: Arm, seed: int, split: int, teachers: list[tuple[str, Path, list[str]]], say: Any,
                    teacher_args: list[str] | None = None) -> None:  # fmt: skip
    """Train ``teachers`` (from [`cell_plan()`][hf_multitask.compare.run.cell_plan]), each run's result beside it."""
    if not teachers:
        return
    source = grid.arm(arm.teachers_from)  # type: ignore[arg-type]
    source_args = list(source.args) if teacher_args is None else list(teacher_args)
    for name, sub, cmd in teachers:
        say(f"{arm.name}: seed {seed}, split {split}: teacher {name} ({source.name}'s run)")
        tasks = [name] if source.single_task else list(source.tasks or grid.tasks)
        result = {**_run_one(cmd, sub / "run", sub / "log.txt"), **_identity(grid, source_args, tasks)}
        (sub / RESULT).write_text(json.dumps(result, indent=2))


def tuned_args(grid: Grid, arm: Arm, out_dir: Path, say: Any = print) -> list[str]:
    """The arm's flags plus its best candidate's (by overall score on the tuning split), running
    the candidates that have not run yet; for a ``choice_of`` arm, plus the candidate that arm chose."""
    source = tuning_source(grid, arm)
    args = reported_args(grid, arm, {source.name: _choose(grid, source, out_dir, say)} if source else {})
    assert args is not None
    return args


def tuning_source(grid: Grid, arm: Arm) -> Arm | None:
    """The arm whose tuning chooses this arm's extra flags: the ``choice_of`` arm, the arm itself if
    it has candidates, else None."""
    if arm.choice_of is not None:
        return grid.arm(arm.choice_of)
    return arm if arm.candidates else None


def reported_args(grid: Grid, arm: Arm, chosen: dict[str, str]) -> list[str] | None:
    """The flags of an arm's reported runs: its own plus the candidate its tuning source chose
    (``chosen``: tuned arm name -> candidate name); None while that choice is not known."""
    source = tuning_source(grid, arm)
    if source is None:
        return list(arm.args)
    return [*arm.args, *source.candidates[chosen[source.name]]] if source.name in chosen else None


def candidate_args(grid: Grid, arm: Arm, candidate: str) -> list[str]:
    """The flags of one tuning run: the arm's, the candidate's and the grid's tuning flags."""
    return [*arm.args, *arm.candidates[candidate], *grid.tuning_args]


def best_candidate(grid: Grid, results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, float]]:
    """(the best candidate, every candidate's score) from their tuning results: the mean score
    over the tasks a result is scored on (its primary tasks if it has some; it records them)."""
    scores = {cand: _overall(res["metrics"], scored(res, grid.tasks)) for cand, res in results.items()}
    return max(scores, key=lambda k: scores[k]), scores


def _choose(grid: Grid, arm: Arm, out_dir: Path, say: Any) -> str:
    """The name of the arm's best candidate on the tuning split (recorded in ``choice.json``), by
    the mean score over the arm's primary tasks if it has some, else over all its tasks."""
    assert grid.tuning_split is not None
    results = {}
    for cand in arm.candidates:
        folder = tuning_folder(out_dir, arm, cand)
        source = None
        if cand in arm.candidates_same_training_as and not (folder / RESULT).is_file():  # the source's run first
            other = grid.arm(arm.candidates_same_training_as[cand])
            source = (_execute(grid, candidate_args(grid, other, cand), other, grid.tuning_seed, grid.tuning_split,
                               tuning_folder(out_dir, other, cand), say, candidate=cand), None)  # fmt: skip
        results[cand] = _execute(grid, candidate_args(grid, arm, cand), arm, grid.tuning_seed, grid.tuning_split, folder, say,
                                 source=source, candidate=cand)  # fmt: skip
    best, scores = best_candidate(grid, results)
    choice = {"arm": arm.name, "split": grid.tuning_split, "seed": grid.tuning_seed, "scores": scores, "chosen": best,
              **({"scored_on": arm.primary} if arm.primary else {})}  # fmt: skip
    (out_dir / "tuning" / arm.name / "choice.json").write_text(json.dumps(choice, indent=2))
    return best


def tuning_folder(out_dir: Path, arm: Arm, candidate: str) -> Path:
    """Where an arm's tuning run of ``candidate`` (on the grid's tuning split and seed) lives."""
    return out_dir / "tuning" / arm.name / candidate


def cell_folder(out_dir: Path, arm: Arm, seed: int, split: int) -> Path:
    """Where a reported (arm, seed, split) cell's result and run live."""
    return out_dir / "runs" / f"split{split}" / arm.name / f"seed{seed}"


def run_grid(grid: Grid, out_dir: str | os.PathLike, arms: Sequence[str] | None = None, say: Any = print,
             seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Run (or resume) the grid into ``out_dir``; returns every cell's result. ``arms`` restricts
    the run to some arms (their tuning included), ``seeds`` to some of the grid's seeds (one seed
    of every arm first, say); ``grid.json`` records the whole grid either way. Runs go one at a
    time: on a small machine two training processes at once slow each other down many times over."""
    unknown = sorted(set(arms or []) - {a.name for a in grid.arms})
    if unknown:
        raise GridError(f"--arms: unknown arms {unknown}; the grid has {[a.name for a in grid.arms]}")
    unknown_seeds = sorted(set(seeds or []) - set(grid.seeds))
    if unknown_seeds:
        raise GridError(f"--seeds: {unknown_seeds} are not seeds of the grid {grid.seeds}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(grid_dict(grid), indent=2))
    chosen = [grid.arm(a) for a in arms] if arms else grid.arms
    run_seeds = [s for s in grid.seeds if seeds is None or s in seeds]  # the grid's order
    results = []
    for arm in chosen:
        args = tuned_args(grid, arm, out, say)
        teacher_args = tuned_args(grid, grid.arm(arm.teachers_from), out, say) if arm.teachers_from else None
        for split in grid.splits:
            for seed in run_seeds:
                source = None
                if arm.same_training_as is not None:  # the source's cell first (it is a cell of the grid anyway)
                    other = grid.arm(arm.same_training_as)
                    other_test = gathered(grid, out, other, seed, split)
                    source = (_execute(grid, list(other.args), other, seed, split, cell_folder(out, other, seed, split), say, other_test),
                              other_test)  # fmt: skip
                folder = cell_folder(out, arm, seed, split)
                # a finished cell is read by _execute, so only an unfinished one looks for its twin
                same = same_run(grid, out, arm, args, seed, split) if source is None and not (folder / RESULT).is_file() else None
                results.append(_execute(grid, args, arm, seed, split, folder, say, gathered(grid, out, arm, seed, split), source,
                                        same=same, teacher_args=teacher_args))  # fmt: skip
    return results


def gathered(grid: Grid, out: Path, arm: Arm, seed: int, split: int) -> Path | None:
    """Where a reported cell's test prediction files are gathered (None: the grid does not gather them)."""
    return out / grid.test_predictions.format(arm=arm.name, seed=seed, split=split) if grid.test_predictions else None


def grid_dict(grid: Grid) -> dict[str, Any]:
    """The grid as ``grid.json`` records it in a comparison folder (what the report reads)."""
    return {"tasks": grid.tasks, "train_limits": grid.train_limits, "seeds": grid.seeds, "splits": grid.splits, "protocol": grid.protocol,
            "tuning_split": grid.tuning_split, "tuning_seed": grid.tuning_seed, "tuning_args": grid.tuning_args,
            "reference": grid.reference,
            "baseline": grid.baseline, "pairs": grid.pairs, "test_predictions": grid.test_predictions,
            "arms": {a.name: {"args": a.args, "single_task": a.single_task, "candidates": a.candidates, "tasks": a.tasks or grid.tasks,
                              **({"choice_of": a.choice_of} if a.choice_of else {}), **({"primary": a.primary} if a.primary else {}),
                              **({"same_training_as": a.same_training_as} if a.same_training_as else {}),
                              **({"candidates_same_training_as": a.candidates_same_training_as} if a.candidates_same_training_as else {}),
                              **({"teachers_from": a.teachers_from} if a.teachers_from else {})}
                     for a in grid.arms}}  # fmt: skip
