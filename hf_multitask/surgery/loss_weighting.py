"""Loss-weighting methods: one weighted sum of the task losses, no per-task gradients at all.

A method here declares ``needs_gradients = False``: the trainer then takes one backward of
``sum_i w_i L_i`` per micro-batch, with the weights fixed for the whole optimizer step, and
never allocates the ``(T, P)`` surgery buffer. Such a method is still an
:class:`~hf_multitask.surgery.Aggregator` (``weights`` returns the step weights), so it can be
called on gradient rows too, which the tests use to compare with the buffer path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Aggregator

__all__ = ["LossWeighting", "RLW"]


class LossWeighting(Aggregator):
    """Base class: ``step_weights(tasks)`` gives the loss weights of one optimizer step."""

    needs_gradients = False

    def step_weights(self, tasks: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        return self.step_weights(list(tasks))


class RLW(LossWeighting):
    """Random loss weighting (Lin et al. 2022, "Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning"): every step draws ``z ~ N(0, I_T)`` and trains on

        L = sum_i w_i L_i,   w = softmax(z)

    The control that a multitask optimiser should beat. The draws come from the aggregator's
    seeded generator, so every DDP rank draws the same weights and checkpoints restore the
    sequence.
    """

    name = "rlw"

    def step_weights(self, tasks: Sequence[str]) -> torch.Tensor:
        z = torch.randn(len(tasks), generator=self.generator, dtype=torch.float64)
        return torch.softmax(z, dim=0)
