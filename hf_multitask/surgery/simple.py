"""Baselines: plain summed-loss and mean-loss multitask updates."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Aggregator


class Sum(Aggregator):
    """``d = sum_i g_i`` -- the gradient of the summed task losses (plain multitask)."""

    name = "sum"

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        return torch.ones(gram.shape[0], dtype=torch.float64)


class Mean(Aggregator):
    """``d = (1/T) sum_i g_i`` -- the gradient of the mean task loss."""

    name = "mean"

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        return torch.full((gram.shape[0],), 1.0 / gram.shape[0], dtype=torch.float64)
