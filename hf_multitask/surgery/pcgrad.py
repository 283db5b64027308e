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


class WeightedPCGrad(PCGrad):
    """Sample-weighted PCGrad: scale row i by ``w_i = 1 / n_i`` (``n_i`` = samples of task i in
    the step), then PCGrad: ``d = sum_i (w_i g_i)^PC``.

    With ``normalize=True`` (default) the weights are divided by their mean, ``w_i =
    (1/n_i) / mean_j(1/n_j)``: the same direction (PCGrad is positively homogeneous), but an
    update of the same size as plain PCGrad when all tasks have equal batches, so learning
    rates carry over. ``counts`` is required.
    """

    name = "weighted_pcgrad"

    def __init__(self, seed: int = 0, normalize: bool = True) -> None:
        super().__init__(seed)
        self.normalize = normalize

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        if counts is None:
            raise ValueError("weighted_pcgrad needs the per-task sample counts of the step")
        scale = 1.0 / counts
        if self.normalize:
            scale = scale / scale.mean()
        scaled_gram = scale[:, None] * gram * scale[None, :]
        scaled_coeffs = pcgrad_coefficients(scaled_gram, self.generator)
        coeffs = scaled_coeffs * scale[None, :]  # in terms of the unscaled rows
        self.last_info["coeffs"] = coeffs
        self.last_info["removed"] = projected_norms(scaled_gram, scaled_coeffs)  # ||w_i g_i - (w_i g_i)^PC||
        return coeffs.sum(0)
