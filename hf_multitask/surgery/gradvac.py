"""Gradient Vaccine (Wang et al. 2020), computed on the Gram matrix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .base import Aggregator, projected_norms


class GradVac(Aggregator):
    """Gradient Vaccine: adaptive gradient-similarity targets per task pair.

    Wang, Tsvetkov, Firat, Cao. "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021. For each task i, start from
    ``g_i' = g_i``; for every other task j in random order, with
    ``phi = cos(g_i', g_j)`` and target ``phi_hat_ij``:

        if phi < phi_hat_ij:
            g_i' <- g_i' + ||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
                           / (||g_j|| sqrt(1 - phi_hat^2)) * g_j
        phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi

    and ``d = sum_i g_i'``. Targets start at 0 (where the correction equals PCGrad's) and are
    kept per ordered task pair across steps (EMA with rate ``beta``, default 0.01); they are
    part of `state_dict()`, so checkpoints carry them.
    """

    name = "gradvac"

    def __init__(self, seed: int = 0, beta: float = 0.01) -> None:
        super().__init__(seed)
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {beta}")
        self.beta = float(beta)
        self.targets: dict[tuple[str, str], float] = {}

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        t = gram.shape[0]
        coeffs = torch.eye(t, dtype=gram.dtype)
        diag = gram.diagonal()
        for i in range(t):
            for j in self._permutation(t):
                if j == i or diag[j] <= 0:
                    continue
                norm_i_sq = coeffs[i] @ gram @ coeffs[i]
                if norm_i_sq <= 0:
                    continue
                norm_i, norm_j = math.sqrt(float(norm_i_sq)), math.sqrt(float(diag[j]))
                phi = float(coeffs[i] @ gram[:, j]) / (norm_i * norm_j)
                phi = max(-1.0, min(1.0, phi))
                key = (tasks[i], tasks[j])
                target = self.targets.get(key, 0.0)
                if phi < target:
                    root_target = math.sqrt(max(1.0 - target * target, 1e-12))
                    step = norm_i * (target * math.sqrt(max(1.0 - phi * phi, 0.0)) - phi * root_target) / (norm_j * root_target)
                    coeffs[i, j] += step
                self.targets[key] = (1.0 - self.beta) * target + self.beta * phi
        self.last_info["coeffs"] = coeffs
        self.last_info["removed"] = projected_norms(gram, coeffs)
        self.last_info["targets"] = dict(self.targets)
        return coeffs.sum(0)

    def loss_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Every task's loss counts once: the vaccine changes directions, not task weights."""
        return torch.ones_like(weights)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "targets": [[a, b, v] for (a, b), v in self.targets.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.targets = {(a, b): float(v) for a, b, v in state.get("targets", [])}
