"""PCGrad (Yu et al. 2020) and sample-weighted PCGrad, computed on the Gram matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Aggregator, projected_norms


def pcgrad_coefficients(gram: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Coefficients ``C`` with ``g_i^PC = sum_k C[i, k] g_k``.

    Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", Algorithm 1: for each task i,
    start from ``g_i^PC = g_i`` and, for every other task j in random order,

        if g_i^PC . g_j < 0:   g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2 * g_j

    (projection onto the normal plane of the *original* g_j). Since g_i^PC stays a linear
    combination of the rows, ``g_i^PC . g_j = C[i] @ G[:, j]`` and only the T x T Gram matrix
    ``G`` is needed. Rows with zero norm are never projected on.
    """
    t = gram.shape[0]
    coeffs = torch.eye(t, dtype=gram.dtype)
    diag = gram.diagonal()
    for i in range(t):
        others = [j for j in torch.randperm(t, generator=generator).tolist() if j != i]
        for j in others:
            if diag[j] <= 0:
                continue
            dot = coeffs[i] @ gram[:, j]
            if dot < 0:
                coeffs[i, j] -= dot / diag[j]
    return coeffs


class PCGrad(Aggregator):
    """PCGrad: ``d = sum_i g_i^PC`` (see :func:`pcgrad_coefficients` for ``g_i^PC``).

    Yu, Kumar, Gupta, Levine, Hausman, Finn. "Gradient Surgery for Multi-Task Learning",
    NeurIPS 2020. With no conflicting pair (all ``g_i . g_j >= 0``) this is the plain sum.
    The random projection order comes from a seeded ``torch.Generator``.
    """

    name = "pcgrad"

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        coeffs = pcgrad_coefficients(gram, self.generator)
        self.last_info["coeffs"] = coeffs
        self.last_info["removed"] = projected_norms(gram, coeffs)
        return coeffs.sum(0)

    def loss_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Every task's loss counts once: projection changes directions, not task weights."""
        return torch.ones_like(weights)


class WeightedPCGrad(PCGrad):
    """Sample-weighted PCGrad: each task weighted by its share of the step's samples, then PCGrad.

    Each row ``g_i`` is task i's mean-loss gradient over its ``n_i`` samples in the step, so the
    sample-weighted combination (every sample counting once, as in one pooled batch) weights
    row i by ``n_i``. Normalised to mean 1 (equal samples give plain PCGrad, and learning
    rates carry over):

        w_i = n_i / mean_j(n_j),     d = sum_i (w_i g_i)^PC

    The weights depend only on the sample counts, not on how the samples were batched (a
    24:8 split gives 1.5:0.5 whether it came as one batch per task or as micro-batches).
    ``counts`` is required. With gradient accumulation the trainer allows it only when every
    task is in every micro-batch (``round_robin``), where rows are exactly the mean-loss
    gradients over the step.
    """

    name = "weighted_pcgrad"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)

    def sample_weights(self, counts: torch.Tensor) -> torch.Tensor:
        return counts / counts.mean()

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        if counts is None:
            raise ValueError("weighted_pcgrad needs the per-task sample counts of the step")
        scale = self.sample_weights(counts.to(gram.dtype))
        scaled_gram = scale[:, None] * gram * scale[None, :]
        scaled_coeffs = pcgrad_coefficients(scaled_gram, self.generator)
        coeffs = scaled_coeffs * scale[None, :]  # in terms of the unscaled rows
        self.last_info["coeffs"] = coeffs
        self.last_info["removed"] = projected_norms(scaled_gram, scaled_coeffs)  # ||w_i g_i - (w_i g_i)^PC||
        self.last_info["sample_weights"] = scale
        return coeffs.sum(0)

    def loss_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Each task's loss counts with its sample weight ``w_i``."""
        return self.last_info["sample_weights"].to(weights)
