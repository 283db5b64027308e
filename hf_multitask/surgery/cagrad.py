"""Conflict-Averse Gradient descent (CAGrad, Liu et al. 2021) on the Gram matrix."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import Aggregator


class CAGrad(Aggregator):
    """CAGrad: the update that maximises the worst task improvement near the average gradient.

    Liu, Liu, Jin, Stone, Liu. "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021. With ``g0 = (1/T) sum_i g_i`` and ``phi = c^2 ||g0||^2``, solve on the simplex

        w* = argmin_w  g_w . g0 + sqrt(phi) ||g_w||,   g_w = sum_i w_i g_i

    and return ``d = g0 + sqrt(phi) / ||g_w*|| * g_w*``. ``c`` in [0, 1) trades average
    progress (c = 0: plain mean) for the worst task. The inner problem runs on the Gram matrix
    by exponentiated-gradient (mirror) descent for ``steps`` iterations.
    """

    name = "cagrad"

    def __init__(self, seed: int = 0, c: float = 0.4, steps: int = 100, lr: float = 1.0) -> None:
        super().__init__(seed)
        if not 0.0 <= c < 1.0:
            raise ValueError(f"c must be in [0, 1), got {c}")
        self.c, self.steps, self.lr = float(c), int(steps), float(lr)

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        t = gram.shape[0]
        mean = torch.full((t,), 1.0 / t, dtype=gram.dtype)
        g0_sq = float(mean @ gram @ mean)
        if g0_sq <= 0 or self.c == 0.0:
            return mean
        scale = float(gram.diagonal().max())
        g = gram / scale  # conditioning only; w* is scale-free
        sqrt_phi = self.c * math.sqrt(g0_sq / scale)
        gb = g @ mean  # g_i . g0
        w = mean.clone()
        for _ in range(self.steps):
            gw_norm = math.sqrt(max(float(w @ g @ w), 1e-20))
            grad = gb + sqrt_phi * (g @ w) / gw_norm
            w = w * torch.exp(-self.lr * (grad - grad.min()))
            w = w / w.sum()
        gw_norm = math.sqrt(max(float(w @ gram @ w), 1e-300))
        lam = self.c * math.sqrt(g0_sq) / gw_norm
        self.last_info["simplex_weights"] = w
        return mean + lam * w
