"""The grid: arms, seeds, splits and protocol of a comparison, validated on construction."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT = "result.json"  # a finished cell's file: its presence means the cell never runs again


_ARM_KEYS = ("args", "single_task", "candidates", "choice_of", "tasks", "primary", "same_training_as", "candidates_same_training_as",
             "teachers_from")  # fmt: skip


class GridError(ValueError):
    """A grid file or a results folder that cannot be used (the message names the key or file)."""


@dataclass
class Arm:
    """One method under comparison: recipe flags, or one single-task run per task, optionally
    with ``candidates`` (name -> extra flags) compared on the tuning split, the best kept, or
    with ``choice_of`` another tuned arm, whose chosen candidate's flags it adds to its own.

    ``primary``: the tasks the arm serves (issue 25's auxiliary learning). The harness passes them
    as ``--primary_tasks`` (so the runs choose their checkpoint by them), and the arm is scored on
    them alone: its tuning choice, its overall score and its comparisons with other arms.

    ``same_training_as``: another arm that trains exactly as this one (the same flags and tasks;
    only ``primary``, so only the checkpoint choice and the score, differ). Its cell runs first,
    and this arm's cell is that run re-scored when its primary tasks keep the same checkpoint
    (`derive`); it trains only when they keep another.

    ``candidates_same_training_as``: the same promise for some of a tuned arm's candidates
    (candidate name -> another tuned arm whose candidate of that name trains exactly as it, e.g.
    the plain summed loss among primary-task methods, which ``--primary_tasks`` changes only in
    the checkpoint it keeps): that candidate's tuning run is the other arm's re-scored when it can be.

    ``teachers_from``: another arm whose models teach this arm's student (BAM!'s distillation,
    [`hf_multitask.distillation`][hf_multitask.distillation]): each cell first trains that arm's
    cell again, by its exact command, for the same seed and split (its ``result.json`` beside the
    run, so the retrained teachers can be checked against that arm's cells), then runs with
    ``--teachers`` and ``--teacher_cache teacher_outputs/`` in the cell. A single-task arm's model
    of each task teaches that task (under ``teachers/{task}/``); a multitask arm's one run teaches
    every task (under ``teachers/{arm}/``): with two-step specialisation, each task's own expert
    (every expert is saved, whichever the run keeps), otherwise its ``best/`` model. A tuned teacher
    arm (``candidates`` or ``choice_of``) teaches with its chosen flags. The cached outputs are
    small and committed; a task whose cache is there needs no teacher trained again."""

    name: str
    args: list[str] = field(default_factory=list)
    single_task: bool = False
    candidates: dict[str, list[str]] = field(default_factory=dict)
    tasks: list[str] | None = None  # a subset of the grid's tasks (None: all of them)
    choice_of: str | None = None  # a tuned arm whose chosen candidate this arm reuses
    primary: list[str] | None = None  # the tasks it serves, passed as --primary_tasks (None: all tasks, symmetric)
    same_training_as: str | None = None  # an arm with the same flags whose run this arm re-scores when it can
    candidates_same_training_as: dict[str, str] = field(default_factory=dict)  # candidate -> tuned arm re-scored likewise
    teachers_from: str | None = None  # an arm whose models (same seed and split) teach this arm


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
    # flags added to the tuning runs only, e.g. ["--benchmark_validation", "split"]: choose on a split carved from
    # the training data when the reported runs use a fixed validation set
    tuning_args: list[str] = field(default_factory=list)
    reference: str | None = None
    baseline: str | None = None
    pairs: list[list[str]] = field(default_factory=list)  # [a, b]: report a - b per seed (e.g. a method vs its control)
    # where each reported cell's test prediction files (its runs' predictions/test/) are gathered, relative
    # to the results folder, e.g. "{arm}/seed{seed}/test" (None: not gathered)
    test_predictions: str | None = None
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
            if arm.primary != self.arm(arm.choice_of).primary:
                raise GridError(f"arm {arm.name!r}: 'choice_of' {arm.choice_of!r} chose its candidate for the primary tasks "
                                f"{self.arm(arm.choice_of).primary}; give this arm the same 'primary' (it has {arm.primary})")  # fmt: skip
        for arm in self.arms:
            if arm.teachers_from is not None and (arm.teachers_from not in names or arm.teachers_from == arm.name
                                                  or self.arm(arm.teachers_from).teachers_from or self.arm(arm.teachers_from).primary
                                                  or arm.single_task or arm.candidates):  # fmt: skip
                raise GridError(f"arm {arm.name!r}: 'teachers_from' must name another arm of {names} that is not distilled itself and "
                                f"has no primary tasks, and the arm itself must be one untuned run (no candidates), got "
                                f"{arm.teachers_from!r}")  # fmt: skip
            if arm.same_training_as is not None:
                self._check_same_training(arm, names)
            for candidate, source in arm.candidates_same_training_as.items():
                self._check_same_candidate(arm, candidate, source, names)
        if self.tuning_split is not None and self.tuning_split in self.splits:
            raise GridError(f"'tuning_split' {self.tuning_split} is also in 'splits': never report on the split used to choose")
        if self.test_predictions is not None:
            try:
                self.test_predictions.format(arm="a", seed=0, split=0)
            except (KeyError, IndexError, ValueError) as err:
                raise GridError(
                    f"'test_predictions': {self.test_predictions!r} may use only {{arm}}, {{seed}} and {{split}} ({err})"
                ) from None
        unknown = sorted(set(self.train_limits) - set(self.tasks))
        if unknown:
            raise GridError(f"'train_limits' names tasks {unknown} that are not in 'tasks' {self.tasks}")
        for arm in self.arms:
            extra = sorted(set(arm.tasks or []) - set(self.tasks))
            if extra or (arm.tasks is not None and not arm.tasks):
                raise GridError(f"arm {arm.name!r}: 'tasks' must be a non-empty subset of the grid's tasks {self.tasks}, got {arm.tasks}")
            if arm.primary is not None:
                outside = sorted(set(arm.primary) - set(arm.tasks or self.tasks))
                if not arm.primary or outside:
                    raise GridError(f"arm {arm.name!r}: 'primary' must be a non-empty subset of the arm's tasks "
                                    f"{arm.tasks or self.tasks}, got {arm.primary}")  # fmt: skip
                if arm.single_task:
                    raise GridError(f"arm {arm.name!r}: a single_task arm has no auxiliary tasks, so no 'primary'")
            for flag in ("--seed", "--validation_seed", "--output-dir", "--output_dir", "--tasks", "--train_limits"):
                if flag in arm.args or flag in self.protocol:
                    raise GridError(f"arm {arm.name!r}: {flag} is set by the harness, not by the grid")
            for flag in ("--primary_tasks", "--primary-tasks"):
                if flag in arm.args or flag in self.protocol or any(flag in c for c in arm.candidates.values()):
                    raise GridError(f"arm {arm.name!r}: {flag} is set by the harness from the arm's 'primary' key, "
                                    "which also scores the arm on those tasks")  # fmt: skip

    def _check_same_training(self, arm: Arm, names: list[str]) -> None:
        where = f"arm {arm.name!r}: 'same_training_as'"
        other = self._rescored_source(arm, where, arm.same_training_as, names, lambda o: o.same_training_as)
        for who in (arm, other):
            if who.single_task or who.candidates or who.choice_of:
                raise GridError(f"{where} needs two arms with one fixed run per cell; {who.name!r} is "
                                "single_task, tuned or reuses a tuning")  # fmt: skip
        self._check_same_flags(arm, other, f"{where} {other.name!r} needs the same 'args'", arm.args, other.args)

    def _check_same_candidate(self, arm: Arm, candidate: str, source: str, names: list[str]) -> None:
        where = f"arm {arm.name!r}: 'candidates_same_training_as' {candidate!r}"
        if candidate not in arm.candidates:
            raise GridError(f"{where} is not one of the arm's candidates {sorted(arm.candidates)}")
        other = self._rescored_source(arm, where, source, names, lambda o: o.candidates_same_training_as.get(candidate),
                                      what="that candidate from ")  # fmt: skip
        if candidate not in other.candidates:
            raise GridError(f"{where}: arm {source!r} has no candidate {candidate!r} (it has {sorted(other.candidates)})")
        self._check_same_flags(arm, other, f"{where}: {source!r}'s candidate needs the same flags",
                               [*arm.args, *arm.candidates[candidate]], [*other.args, *other.candidates[candidate]])  # fmt: skip

    def _rescored_source(self, arm: Arm, where: str, source: str | None, names: list[str],
                         rescores: Callable[[Arm], str | None], what: str = "") -> Arm:  # fmt: skip
        """The arm whose run a re-scoring key of ``arm`` names (``where`` opens each error):
        another arm of the grid that does not re-score in turn (``rescores(other)``: the arm
        it re-scores the same run from, or None). Re-scoring does not chain."""
        if source not in names or source == arm.name:
            raise GridError(f"{where} must name another arm of {names}, got {source!r}")
        other = self.arm(source)
        chained = rescores(other)
        if chained is not None:
            raise GridError(f"{where}: {source!r} itself re-scores {what}{chained!r}: name that arm")
        return other

    def _check_same_flags(self, arm: Arm, other: Arm, needs: str, mine: list[str], theirs: list[str]) -> None:
        """A re-scored run is the same training only with the same flags and tasks (``needs``
        opens the error)."""
        if mine != theirs or (arm.tasks or self.tasks) != (other.tasks or self.tasks):
            raise GridError(f"{needs} and 'tasks' (only 'primary' may differ); got {mine} / {theirs}")

    def arm(self, name: str) -> Arm:
        """The arm called ``name`` (a [`GridError`][hf_multitask.compare.grid.GridError] naming the grid's arms if there is none)."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise GridError(f"no arm {name!r}; the grid has {[a.name for a in self.arms]}")

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
            "test_predictions",
            "tuning_args",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise GridError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        arms_data = data.get("arms") or {}
        if not isinstance(arms_data, dict):
            raise GridError(f"{where}: 'arms' must map arm names to {{{', '.join(_ARM_KEYS)}}}")
        arms = []
        for name, spec in arms_data.items():
            spec = spec or {}
            bad = sorted(set(spec) - set(_ARM_KEYS))
            if bad:
                raise GridError(f"{where}: arm {name!r}: unknown keys {bad}")
            same_candidates = spec.get("candidates_same_training_as") or {}
            if not isinstance(same_candidates, dict):
                raise GridError(f"{where}: arm {name!r}: 'candidates_same_training_as' must map candidate names to arm names, "
                                f"got {same_candidates!r}")  # fmt: skip
            tasks, primary = spec.get("tasks"), spec.get("primary")
            if isinstance(primary, str):
                primary = [primary]
            arms.append(Arm(str(name), [str(a) for a in spec.get("args", [])], bool(spec.get("single_task", False)),
                            {str(k): [str(a) for a in (v or [])] for k, v in (spec.get("candidates") or {}).items()},
                            None if tasks is None else [str(t) for t in tasks],
                            None if spec.get("choice_of") is None else str(spec["choice_of"]),
                            None if primary is None else [str(t) for t in primary],
                            None if spec.get("same_training_as") is None else str(spec["same_training_as"]),
                            {str(k): str(v) for k, v in same_candidates.items()},
                            None if spec.get("teachers_from") is None else str(spec["teachers_from"])))  # fmt: skip
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
        from ..reading import DataError, read_text

        try:
            text = read_text(path)
        except OSError as err:
            raise GridError(f"cannot read grid file {path}: {err.strerror}") from None
        except DataError as err:
            raise GridError(str(err)) from None
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise GridError(f"{path}: line {err.lineno}, column {err.colno}: invalid JSON: {err.msg}") from None
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
