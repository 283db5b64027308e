"""Task schedules: which tasks (and how many of their examples) make up each training step.

A schedule turns the task sizes ``N_i`` and per-task batch sizes ``B_i`` into an *epoch
plan*: a list of steps, each a list of [`Slot`][hf_multitask.mixing.schedules.Slot] ``(task, examples, loss_weight)``.
Plans depend only on ``(seed, epoch)``, so every DDP rank computes the same plan and a
resumed run replays it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..registry import Registry

__all__ = [
    "Slot",
    "Schedule",
    "RoundRobin",
    "Sampled",
    "Staggered",
    "GradientCompromise",
    "annealed_alpha",
    "compromise_beta",
    "task_probabilities",
    "build_schedule",
    "parse_ratios",
    "SCHEDULE_NAMES",
    "SCHEDULES",
    "register_schedule",
]


@dataclass(frozen=True)
class Slot:
    """``examples`` examples of ``task`` in one step, their loss multiplied by ``loss_weight``."""

    task: str
    examples: int
    loss_weight: float = 1.0


def _progress(epoch: int, num_epochs: int) -> float:
    """``(e - 1) / (E - 1)`` for 1-based epoch e of E (0 when E = 1); ``epoch`` is 0-based."""
    if num_epochs <= 1:
        return 0.0
    return min(1.0, max(0.0, epoch / (num_epochs - 1)))


def annealed_alpha(epoch: int, num_epochs: int) -> float:
    """PAL-schedule exponent ``alpha = 1 - 0.8 (e - 1) / (E - 1)`` (Stickland & Murray 2019).

    ``epoch`` is 0-based (``e = epoch + 1``); with ``E = 1`` alpha is 1.
    """
    return 1.0 - 0.8 * _progress(epoch, num_epochs)


def compromise_beta(epoch: int, num_epochs: int) -> float:
    """Gradient-compromise loss exponent ``beta = 0.2 + 0.8 (e - 1) / (E - 1)`` (0-based ``epoch``)."""
    return 0.2 + 0.8 * _progress(epoch, num_epochs)


def task_probabilities(
    sizes: Mapping[str, int], kind: str, *, epoch: int = 0, num_epochs: int = 1, temperature: float = 1.0
) -> dict[str, float]:
    """Per-task sampling probabilities.

    * ``proportional``: ``p_i ∝ N_i``
    * ``annealed``: ``p_i ∝ N_i ** alpha``, alpha from [`annealed_alpha()`][hf_multitask.mixing.schedules.annealed_alpha]
    * ``temperature``: ``p_i ∝ N_i ** (1 / T)``
    * ``uniform``: ``p_i = 1 / T_tasks``
    """
    if kind == "proportional":
        power = 1.0
    elif kind == "annealed":
        power = annealed_alpha(epoch, num_epochs)
    elif kind == "temperature":
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        power = 1.0 / temperature
    elif kind == "uniform":
        power = 0.0
    else:
        raise ValueError(f"Unknown sampling kind {kind!r}")
    raw = {t: float(n) ** power for t, n in sizes.items()}
    total = sum(raw.values())
    return {t: v / total for t, v in raw.items()}


def parse_ratios(ratios: str | Mapping[str, float] | Sequence[float], tasks: Sequence[str]) -> dict[str, float]:
    """Batch ratios like ``"0:3:1"`` (in task order) or ``{"quora": 3, "sts": 1}``."""
    if isinstance(ratios, str):
        parts = [float(x) for x in ratios.split(":")]
        if len(parts) != len(tasks):
            raise ValueError(f"ratio {ratios!r} has {len(parts)} parts for {len(tasks)} tasks {list(tasks)}")
        out = dict(zip(tasks, parts))
    elif isinstance(ratios, Mapping):
        unknown = [t for t in ratios if t not in tasks]
        if unknown:
            raise ValueError(f"ratios name unknown task(s) {unknown}; tasks are {list(tasks)}")
        out = {t: float(ratios.get(t, 0.0)) for t in tasks}
    else:
        parts = [float(x) for x in ratios]
        if len(parts) != len(tasks):
            raise ValueError(f"{len(parts)} ratios for {len(tasks)} tasks")
        out = dict(zip(tasks, parts))
    if any(v < 0 for v in out.values()) or not any(v > 0 for v in out.values()):
        raise ValueError(f"ratios must be >= 0 with at least one > 0, got {out}")
    return out


class Schedule:
    """Base class. ``plan(epoch, num_epochs, sizes, batch_sizes, generator)`` returns the steps."""

    name = "base"

    def plan(
        self, epoch: int, num_epochs: int, sizes: Mapping[str, int], batch_sizes: Mapping[str, int], generator: torch.Generator
    ) -> list[list[Slot]]:
        """The steps of one epoch: each a list of [`Slot`][hf_multitask.mixing.schedules.Slot] (task, examples, loss weight).

        Args:
            epoch: The epoch (0-based).
            num_epochs: How many epochs the run has (annealed schedules follow it).
            sizes: Each task's number of training examples.
            batch_sizes: Each task's batch size.
            generator: The seeded generator of any sampling.
        """
        raise NotImplementedError

    def epochs_to_size(self, num_epochs: int) -> int:
        """How many epochs to plan to find the longest one (1 unless epochs differ)."""
        return max(1, num_epochs)

    def static_note(self, num_epochs: int) -> str | None:
        """What the schedule does not do in a run of ``num_epochs`` epochs that its name says it
        does (an annealed schedule whose exponent moves from epoch to epoch, in a one-epoch run),
        or None. The trainer logs it as a warning and the model card says it."""
        return None

    def max_steps_per_epoch(self, num_epochs: int, sizes: Mapping[str, int], batch_sizes: Mapping[str, int], world_size: int = 1) -> int:
        """Longest epoch (the Trainer sizes its epoch loop with it)."""
        gen = torch.Generator().manual_seed(0)
        return max(len(self.plan(e, num_epochs, sizes, batch_sizes, gen, world_size)) for e in range(self.epochs_to_size(num_epochs)))


def _capped(steps: int, steps_per_epoch: int | None) -> int:
    return min(steps, int(steps_per_epoch)) if steps_per_epoch else steps


class RoundRobin(Schedule):
    """Every step holds one batch of every task (``B_i`` examples of task i).

    An epoch lasts until the largest task has been seen once (``max_i ceil(N_i / (B_i W))``, W ranks
    steps); smaller tasks cycle, reshuffled each pass. ``samples_per_task`` instead sets the
    epoch to ``max_i ceil(samples_per_task / (B_i W))`` steps (e.g. 20,000 samples of each task
    per epoch); ``steps_per_epoch`` caps it. ``ratios`` (e.g. ``"0:3:1"``) set the batch
    composition: task i gets ``round(ratio_i / max(ratios) * B_i)`` examples per step and
    tasks with ratio 0 sit out.
    """

    name = "round_robin"

    def __init__(self, steps_per_epoch: int | None = None, samples_per_task: int | None = None, ratios: Any = None) -> None:
        self.steps_per_epoch, self.samples_per_task, self.ratios = steps_per_epoch, samples_per_task, ratios

    def _batches(self, sizes: Mapping[str, int], batch_sizes: Mapping[str, int]) -> dict[str, int]:
        if self.ratios is None:
            return {t: batch_sizes[t] for t in sizes}
        ratios = parse_ratios(self.ratios, list(sizes))
        top = max(ratios.values())
        out = {t: int(round(ratios[t] / top * batch_sizes[t])) for t in sizes}
        return {t: b for t, b in out.items() if b > 0}

    def plan(self, epoch, num_epochs, sizes, batch_sizes, generator, world_size=1):
        batches = self._batches(sizes, batch_sizes)
        if self.samples_per_task is not None:
            steps = max(math.ceil(self.samples_per_task / (b * world_size)) for b in batches.values())
        else:
            steps = max(math.ceil(sizes[t] / (b * world_size)) for t, b in batches.items())
        steps = _capped(steps, self.steps_per_epoch)
        step = [Slot(t, b) for t, b in batches.items()]
        return [list(step) for _ in range(steps)]


class Sampled(Schedule):
    """One task per step, drawn with the probabilities of [`task_probabilities()`][hf_multitask.mixing.schedules.task_probabilities].

    ``kind`` is ``proportional``, ``annealed`` (the PAL schedule), ``temperature`` or
    ``uniform``. An epoch has ``sum_i ceil(N_i / (B_i W))`` steps (W ranks) (as many batches as the data
    holds), or ``sum_i ceil(samples_per_task / (B_i W))``, capped by ``steps_per_epoch``.

    ``annealed`` moves its exponent alpha from epoch to epoch, as the PAL paper's formula does
    (``anneal="epochs"``, the default): in a one-epoch run alpha stays 1, which is the
    ``proportional`` schedule (`static_note()` says so). ``anneal="steps"`` moves alpha
    from 1 to 0.2 over the steps of all the run's epochs instead, ``alpha = 1 - 0.8 s / (S - 1)``
    at step ``s`` of ``S``, so a one-epoch run anneals too.
    """

    def __init__(
        self,
        kind: str,
        temperature: float = 2.0,
        steps_per_epoch: int | None = None,
        samples_per_task: int | None = None,
        anneal: str = "epochs",
    ) -> None:
        task_probabilities({"a": 1}, kind, temperature=temperature)  # validates kind / temperature
        if anneal not in ("epochs", "steps") or (anneal == "steps" and kind != "annealed"):
            raise ValueError(f"anneal must be 'epochs' or 'steps' (the latter for the annealed schedule only), got {anneal!r} for {kind!r}")
        self.kind, self.temperature, self.anneal = kind, float(temperature), anneal
        self.steps_per_epoch, self.samples_per_task = steps_per_epoch, samples_per_task
        self.name = kind
        # anneal="steps": the draws the run makes when --max_steps stops it inside its last planned epoch (the trainer
        # sets it), so alpha still reaches 0.2 at the last step; None: every planned epoch runs whole
        self.total_draws: int | None = None

    def static_note(self, num_epochs):
        if self.kind == "annealed" and self.anneal == "epochs" and num_epochs <= 1:
            return ("the annealed schedule moves alpha from epoch to epoch (1 in the first, 0.2 in the last); in one epoch alpha "
                    "stays 1, so every step is drawn as by the proportional schedule")  # fmt: skip
        return None

    def steps(self, sizes, batch_sizes, world_size: int = 1) -> int:
        """Steps per epoch: one batch per draw, as many as one pass over every task's data takes (``samples_per_task`` examples of each task when given), capped by ``steps_per_epoch``."""
        if self.samples_per_task is not None:
            steps = sum(math.ceil(self.samples_per_task / (batch_sizes[t] * world_size)) for t in sizes)
        else:
            steps = sum(math.ceil(sizes[t] / (batch_sizes[t] * world_size)) for t in sizes)
        return _capped(steps, self.steps_per_epoch)

    def plan(self, epoch, num_epochs, sizes, batch_sizes, generator, world_size=1):
        tasks = list(sizes)
        n = self.steps(sizes, batch_sizes, world_size)
        if self.anneal == "steps":  # alpha from 1 to 0.2 over all the run's steps: one row of weights per step
            total = n * max(1, num_epochs)
            if self.total_draws is not None:  # --max_steps ends the run inside its last planned epoch
                total = min(total, self.total_draws)
            alphas = [1.0 - 0.8 * min(1.0, (epoch * n + i) / (total - 1)) if total > 1 else 1.0 for i in range(n)]
            weights = torch.tensor([[float(sizes[t]) ** a for t in tasks] for a in alphas], dtype=torch.float64)
            draws = torch.multinomial(weights, 1, generator=generator).view(-1).tolist()
            return [[Slot(tasks[i], batch_sizes[tasks[i]])] for i in draws]
        probs = task_probabilities(sizes, self.kind, epoch=epoch, num_epochs=num_epochs, temperature=self.temperature)
        weights = torch.tensor([probs[t] for t in tasks], dtype=torch.float64)
        draws = torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
        return [[Slot(tasks[i], batch_sizes[tasks[i]])] for i in draws]


class GradientCompromise(Schedule):
    """Batches of batches for the "gradient compromise" method.

    Each step draws ``batches_per_step`` task batches (default: the number of tasks) with the
    annealed probabilities ``p_i ∝ N_i ** alpha`` (see [`annealed_alpha()`][hf_multitask.mixing.schedules.annealed_alpha]); batches of the
    same task are merged, and every task's loss is scaled by ``N_i ** -beta`` with
    ``beta = 0.2 + 0.8 (e - 1) / (E - 1)`` ([`compromise_beta()`][hf_multitask.mixing.schedules.compromise_beta]). With ``normalize=True``
    (default) the loss weights are divided by their mean over the tasks, so the overall loss
    scale (and the learning rate that suits it) does not shrink as beta grows. All batches go
    to the surgery step at once. An epoch has ``ceil(sum_i N_i / (B_i W) / k)`` steps (W ranks).
    """

    name = "gradient_compromise"

    def __init__(self, batches_per_step: int | None = None, normalize: bool = True, steps_per_epoch: int | None = None) -> None:
        if batches_per_step is not None and batches_per_step <= 0:
            raise ValueError(f"batches_per_step must be positive, got {batches_per_step}")
        self.batches_per_step, self.normalize, self.steps_per_epoch = batches_per_step, normalize, steps_per_epoch

    def static_note(self, num_epochs):
        if num_epochs <= 1:
            return ("gradient_compromise moves alpha and beta from epoch to epoch; in one epoch alpha stays 1 and beta 0.2 "
                    "(batches drawn as by the proportional schedule, losses scaled by N_i^-0.2)")  # fmt: skip
        return None

    def loss_weights(self, sizes: Mapping[str, int], epoch: int, num_epochs: int) -> dict[str, float]:
        """Each task's loss weight in ``epoch`` (normalised to mean 1 over the tasks when ``normalize``)."""
        beta = compromise_beta(epoch, num_epochs)
        w = {t: float(n) ** -beta for t, n in sizes.items()}
        if self.normalize:
            mean = sum(w.values()) / len(w)
            w = {t: v / mean for t, v in w.items()}
        return w

    def plan(self, epoch, num_epochs, sizes, batch_sizes, generator, world_size=1):
        k = self.batches_per_step or len(sizes)
        tasks = list(sizes)
        probs = task_probabilities(sizes, "annealed", epoch=epoch, num_epochs=num_epochs)
        weights = self.loss_weights(sizes, epoch, num_epochs)
        total = sum(sizes[t] / (batch_sizes[t] * world_size) for t in tasks)
        n = _capped(max(1, math.ceil(total / k)), self.steps_per_epoch)
        p = torch.tensor([probs[t] for t in tasks], dtype=torch.float64)
        draws = torch.multinomial(p, n * k, replacement=True, generator=generator).view(n, k).tolist()
        plan = []
        for row in draws:
            counts: dict[str, int] = {}
            for i in row:
                counts[tasks[i]] = counts.get(tasks[i], 0) + 1
            plan.append([Slot(t, c * batch_sizes[t], weights[t]) for t, c in counts.items()])
        return plan


class Staggered(Schedule):
    """A list of stages, each a schedule over a subset of tasks for a number of epochs.

    ``stages`` items are dicts like ``{"schedule": "round_robin", "tasks": ["quora"],
    "epochs": 2}`` or ``{"schedule": "round_robin", "epochs": 1, "steps_per_epoch": 500}``
    (any other key goes to that stage's schedule). The last stage continues for any epochs
    beyond the listed ones. Annealed stages count epochs within their own stage.
    """

    name = "staggered"

    def __init__(self, stages: Sequence[Mapping[str, Any]]) -> None:
        if not stages:
            raise ValueError("staggered needs at least one stage")
        self.stages = []
        for spec in stages:
            spec = dict(spec)
            epochs = int(spec.pop("epochs", 1))
            if epochs <= 0:
                raise ValueError(f"stage epochs must be positive, got {epochs}")
            tasks = spec.pop("tasks", None)
            name = spec.pop("schedule", "round_robin")
            if name == "staggered":
                raise ValueError("stages cannot nest a staggered schedule")
            self.stages.append((build_schedule(name, **spec), epochs, list(tasks) if tasks else None))

    def stage_of(self, epoch: int) -> tuple[int, int, int]:
        """(stage index, epoch within the stage, epochs of the stage) of a 0-based epoch."""
        start = 0
        for i, (_, epochs, _) in enumerate(self.stages):
            if epoch < start + epochs or i == len(self.stages) - 1:
                return i, epoch - start, epochs
            start += epochs
        raise AssertionError("unreachable")

    def plan(self, epoch, num_epochs, sizes, batch_sizes, generator, world_size=1):
        index, local, stage_epochs = self.stage_of(epoch)
        schedule, _, tasks = self.stages[index]
        if tasks is not None:
            unknown = [t for t in tasks if t not in sizes]
            if unknown:
                raise ValueError(f"stage {index} names unknown task(s) {unknown}; tasks are {list(sizes)}")
            sizes = {t: sizes[t] for t in tasks}
        return schedule.plan(local, stage_epochs, sizes, batch_sizes, generator, world_size)

    def epochs_to_size(self, num_epochs: int) -> int:
        return max(num_epochs, sum(e for _, e, _ in self.stages))

    def static_note(self, num_epochs):
        notes = [f"stage {i} ({epochs} epoch): {note}" for i, (schedule, epochs, _) in enumerate(self.stages)
                 if (note := schedule.static_note(epochs)) is not None]  # fmt: skip
        return "; ".join(notes) or None


def _sampled(kind: str):
    return lambda **kwargs: Sampled(kind, **kwargs)


# name -> factory(**schedule_kwargs); register_schedule adds your own
SCHEDULES: Registry[Any] = Registry("schedule", {
    "round_robin": RoundRobin,
    **{kind: _sampled(kind) for kind in ("proportional", "annealed", "temperature", "uniform")},
    "staggered": Staggered,
    "gradient_compromise": GradientCompromise,
})  # fmt: skip
SCHEDULE_NAMES = tuple(SCHEDULES)  # the built-in ones, in this order


def register_schedule(name: str, factory: Any) -> Any:
    """Register a schedule factory (``factory(**schedule_kwargs) -> Schedule``) under ``name``."""
    return SCHEDULES.register(name, factory)


def build_schedule(name: str | Schedule, **kwargs: Any) -> Schedule:
    """A schedule by name: ``round_robin``, ``proportional``, ``annealed``, ``temperature``,
    ``uniform``, ``staggered`` (``stages=[...]``), ``gradient_compromise`` or a registered one."""
    if isinstance(name, Schedule):
        return name
    return SCHEDULES.get_entry(name)(**kwargs)
