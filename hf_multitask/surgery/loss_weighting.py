"""Loss-weighting methods: one weighted sum of the task losses, no per-task gradients at all.

A [`LossWeighting`][hf_multitask.surgery.loss_weighting.LossWeighting] trains on ``sum_i w_i L_i``: the trainer takes one backward of it per
micro-batch and never allocates the ``(T, P)`` surgery buffer. The contract, called by the
trainer in this order every optimizer step:

1. ``begin_step(tasks)`` with every training task (RLW draws its weights here);
2. per micro-batch, ``micro_weights(names, losses)`` with the detached float64 losses of the
   tasks in that micro-batch (under DDP: their mean over ranks, so every rank computes the
   same weights) returns the detached weights ``w`` of ``sum_i w_i L_i``;
3. ``observe(names, losses)`` with the step's mean losses (over micro-batches and ranks)
   updates the method's state (UW's log-variances, FAMO's logits). The trainer calls it after
   the optimizer step, and skips it for a step the GradScaler skipped.

The state (generator, parameters, the Adam state) is in ``state_dict`` and saved with every
checkpoint. A loss weighting is not an [`Aggregator`][hf_multitask.surgery.base.Aggregator]: it never
sees a gradient. Both kinds are named by the trainer's one ``aggregator`` flag; the trainer
picks its step (one weighted backward, or per-task gradients and surgery) once, from the
kind of the method it was given.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from .base import SeededMethod

__all__ = ["FAMO", "RLW", "LossWeighting", "UncertaintyWeighting"]


class LossWeighting(SeededMethod):
    """Base class of the methods that weight losses instead of gradients (see the module docstring)."""

    uses_losses = False  # True: micro_weights reads the losses (the trainer averages them over ranks first)

    def begin_step(self, tasks: Sequence[str]) -> None:
        """A new optimizer step over ``tasks`` (all training tasks) begins."""

    def micro_weights(self, tasks: Sequence[str], losses: torch.Tensor) -> torch.Tensor:
        """Detached weights (float64, one per name in ``tasks``) of this micro-batch's losses."""
        return self.step_weights(tasks)

    def observe(self, tasks: Sequence[str], losses: torch.Tensor) -> None:
        """The step's mean task losses, after the optimizer step (not called for a skipped step): update the state."""

    def step_weights(self, tasks: Sequence[str]) -> torch.Tensor:
        """The current weights, without a loss to read."""
        raise NotImplementedError


class _PerTaskParameter(LossWeighting):
    """A loss weighting with one float64 parameter per task, trained by ``torch.optim.Adam``
    (``weight_decay`` is Adam's L2 term) on the gradient the method computes in [`observe()`][hf_multitask.surgery.loss_weighting._PerTaskParameter.observe]."""

    def __init__(self, seed: int = 0, lr: float = 1e-2, weight_decay: float = 0.0) -> None:
        super().__init__(seed)
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.task_names: list[str] = []
        self._reset(torch.zeros(0, dtype=torch.float64))

    def _reset(self, param: torch.Tensor) -> None:
        self.param = param
        self.opt = torch.optim.Adam([self.param], lr=self.lr, weight_decay=self.weight_decay, foreach=False)

    def _adam_step(self, grad: torch.Tensor) -> None:
        self.param.grad = grad
        self.opt.step()
        self.param.grad = None

    def begin_step(self, tasks: Sequence[str]) -> None:
        self._ensure(tasks)

    def _ensure(self, tasks: Sequence[str]) -> list[int]:
        new = [t for t in tasks if t not in self.task_names]
        if new:
            if self.opt.state:
                raise ValueError(f"{type(self).__name__}: tasks {new} appeared after training started ({self.task_names})")
            self.task_names.extend(new)
            self._reset(torch.zeros(len(self.task_names), dtype=torch.float64))
        return [self.task_names.index(t) for t in tasks]

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "tasks": list(self.task_names),
            "param": self.param.clone(),
            # a copy: Adam updates its moments in place, and load_state_dict keeps the tensors it is given
            "opt": copy.deepcopy(self.opt.state_dict()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.task_names = list(state["tasks"])
        self._reset(state["param"].clone())
        opt = state["opt"]
        if "m" in opt:  # a checkpoint of the earlier hand-written Adam: its moments and step count
            moments = {} if opt["m"] is None else {0: {"step": torch.tensor(float(opt["t"])), "exp_avg": opt["m"], "exp_avg_sq": opt["v"]}}
            opt = {"state": moments, "param_groups": self.opt.state_dict()["param_groups"]}
        self.opt.load_state_dict(copy.deepcopy(opt))


class RLW(LossWeighting):
    """Random loss weighting (Lin et al. 2022, "Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning"): every step draws ``z ~ N(0, I_T)`` and trains on

        L = sum_i w_i L_i,   w = softmax(z)

    The control that a multitask optimiser should beat. The draws come from the aggregator's
    seeded generator, so every DDP rank draws the same weights and checkpoints restore the
    sequence.
    """

    name = "rlw"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._current: dict[str, float] = {}

    def begin_step(self, tasks: Sequence[str]) -> None:
        self._current = dict(zip(tasks, self.step_weights(tasks).tolist()))

    def micro_weights(self, tasks: Sequence[str], losses: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self._current[t] for t in tasks], dtype=torch.float64)

    def step_weights(self, tasks: Sequence[str]) -> torch.Tensor:
        z = torch.randn(len(tasks), generator=self.generator, dtype=torch.float64)
        return torch.softmax(z, dim=0)


class UncertaintyWeighting(_PerTaskParameter):
    """Uncertainty weighting (Kendall, Gal & Cipolla 2018, "Multi-Task Learning Using
    Uncertainty to Weigh Losses"), in the log-variance form ``s_i = log sigma_i^2``:

        L = sum_i exp(-s_i) L_i + s_i

    The network trains on ``sum_i w_i L_i`` with ``w_i = exp(-s_i)``; after each step the
    ``s_i`` take one Adam step (learning rate ``lr``) on ``dL/ds_i = 1 - exp(-s_i) L_i``, whose
    fixed point is ``s_i = log L_i``, i.e. ``w_i = 1 / L_i``. The paper's regression form halves
    the first term (``1/(2 sigma^2)``); the uniform form here is the one most re-evaluations
    use, the same for every task type. ``s`` starts at 0 (weights 1), and is updated with the
    step's mean losses, identical on every DDP rank.
    """

    name = "uw"

    def step_weights(self, tasks: Sequence[str]) -> torch.Tensor:
        idx = self._ensure(tasks)  # first: it may grow self.param
        return torch.exp(-self.param[idx])

    def micro_weights(self, tasks: Sequence[str], losses: torch.Tensor) -> torch.Tensor:
        return self.step_weights(tasks)

    def observe(self, tasks: Sequence[str], losses: torch.Tensor) -> None:
        idx = self._ensure(tasks)
        grad = torch.zeros_like(self.param)
        grad[idx] = 1 - torch.exp(-self.param[idx]) * losses.double()
        self._adam_step(grad)


class FAMO(_PerTaskParameter):
    """FAMO, fast adaptive multitask optimisation (Liu et al. 2023, "FAMO: Fast Adaptive
    Multitask Optimization"): O(1) memory and no per-task gradients. With logits ``xi``,
    ``z = softmax(xi)`` and ``D_i = L_i - m_i + eps`` (``m_i`` a lower bound of the loss, 0 by
    default), the network trains on

        d = sum_i (z_i / (c D_i)) grad L_i,   c = sum_j z_j / D_j

    i.e. on the gradient of ``sum_i z_i log D_i / c``: loss weights ``w_i = z_i / (c D_i)``,
    which sum to 1. After the step the logits follow the tasks' rates of improvement
    ``delta_i = log D_i(prev) - log D_i(now)``:

        xi <- Adam(xi, J_softmax(xi)^T delta + gamma xi)

    so a task whose loss fell less than the others gains weight. Defaults follow the paper:
    ``lr = 0.025`` for the logits, ``gamma = 1e-3``. Two practical choices, stated:

    - ``delta`` compares the step's mean loss with the previous step's (new batches), not the
      same batch re-evaluated after the update, which would cost an extra forward per step;
    - under accumulation, ``c`` is taken over every task, using the latest known loss of the
      tasks that are not in the micro-batch, so one-task micro-batches keep their weights.
    """

    name = "famo"
    uses_losses = True

    def __init__(self, seed: int = 0, lr: float = 0.025, gamma: float = 1e-3, min_loss: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__(seed, lr=lr, weight_decay=gamma)
        self.min_loss, self.eps = float(min_loss), float(eps)
        self.latest = torch.zeros(0, dtype=torch.float64)  # latest D_i seen in a micro-batch (0: not yet)
        self.previous = torch.zeros(0, dtype=torch.float64)  # D_i of the last observed step (0: not yet)

    def _ensure(self, tasks: Sequence[str]) -> list[int]:
        idx = super()._ensure(tasks)
        if self.latest.numel() != len(self.task_names):
            self.latest = torch.zeros(len(self.task_names), dtype=torch.float64)
            self.previous = torch.zeros(len(self.task_names), dtype=torch.float64)
        return idx

    def _shifted(self, losses: torch.Tensor) -> torch.Tensor:
        d = losses.double() - self.min_loss + self.eps
        if bool((d <= 0).any()):
            raise ValueError(f"FAMO needs losses above min_loss={self.min_loss}, got {losses.tolist()}")
        return d

    def step_weights(self, tasks: Sequence[str]) -> torch.Tensor:
        idx = self._ensure(tasks)
        return torch.softmax(self.param, 0)[idx] / torch.softmax(self.param, 0)[idx].sum()

    def micro_weights(self, tasks: Sequence[str], losses: torch.Tensor) -> torch.Tensor:
        idx = self._ensure(tasks)
        d = self._shifted(losses)
        self.latest[idx] = d
        z = torch.softmax(self.param, 0)
        known = self.latest > 0
        c = (z[known] / self.latest[known]).sum()
        return z[idx] / (c * d)

    def observe(self, tasks: Sequence[str], losses: torch.Tensor) -> None:
        idx = self._ensure(tasks)
        d = self._shifted(losses)
        delta = torch.zeros_like(self.param)
        prev = self.previous[idx]
        seen = prev > 0
        if bool(seen.any()):
            rows = torch.tensor(idx)[seen]
            delta[rows] = prev[seen].log() - d[seen].log()
            z = torch.softmax(self.param, 0)
            grad = z * (delta - (z * delta).sum())  # J_softmax^T delta, J = diag(z) - z z^T
            self._adam_step(grad)
        self.previous[idx] = d

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "latest": self.latest.clone(), "previous": self.previous.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.latest, self.previous = state["latest"].clone(), state["previous"].clone()
