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
    """PCGrad: ``d = sum_i g_i^PC`` (see [`pcgrad_coefficients()`][hf_multitask.surgery.pcgrad.pcgrad_coefficients] for ``g_i^PC``).

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
    """Sample-weighted PCGrad as its paper defines it: every task's gradient scaled **down** by its
    sample count, then PCGrad.

    The multitask-BERT report that introduces it (test score 0.792; batch ratio SST:QQP:STS =
    0:3:1 with two-step fine-tuning) "mitigates this problem by proportionally scaling down the
    gradients of tasks with more samples, so that balance is maintained between the multiple
    tasks while still taking advantage of the samples in the larger dataset":

        w_i = 1 / n_i,     g^_i = w_i g_i,     d = sum_i (g^_i)^PC

    There ``g_i`` is the gradient of a loss that grows with the task's ``n_i`` samples (summed
    over them), so ``g^_i`` is the task's **per-sample mean gradient**: every task counts
    equally however many samples it brought, and the larger task's advantage is a
    lower-variance gradient, not a larger one.

    ``rows`` says what the rows are:

    * ``"mean"`` (the default, and what [`MultitaskTrainer`][hf_multitask.trainer.MultitaskTrainer] hands over:
      every task type's loss is the mean over its samples): each row already *is* the
      per-sample mean gradient, so there is **no further scaling** and the direction equals
      PCGrad's. The technique's effect then lives in the per-task batch sizes
      (``task_batch_sizes``, or ``schedule_kwargs: {ratios: "0:3:1"}`` as in
      ``recipes/configs/weighted_pcgrad.yaml``): a task with more samples per step contributes a
      less noisy gradient of the same weight.
    * ``"sum"`` (rows of losses summed over the step's samples, e.g. from a custom engine):
      each row is divided by ``n_i`` exactly once; ``counts`` is then required.

    With gradient accumulation the trainer allows it only when every task is in every
    micro-batch (``round_robin``), where the rows are exactly the per-sample mean gradients over
    the step. The earlier, opposite weighting (``w_i = n_i / mean n``, one pooled batch) is
    [`PooledPCGrad`][hf_multitask.surgery.pcgrad.PooledPCGrad].
    """

    name = "weighted_pcgrad"
    ROWS = ("mean", "sum")

    def __init__(self, seed: int = 0, rows: str = "mean") -> None:
        super().__init__(seed)
        if rows not in self.ROWS:
            raise ValueError(f"weighted_pcgrad: rows must be one of {self.ROWS}, got {rows!r}")
        self.rows = rows

    def sample_weights(self, counts: torch.Tensor | None, t: int, dtype: torch.dtype) -> torch.Tensor:
        """``w_i``: 1 for per-sample mean rows, ``1 / n_i`` for summed rows."""
        if self.rows == "mean":
            return torch.ones(t, dtype=dtype)
        if counts is None:
            raise ValueError("weighted_pcgrad with rows='sum' needs the per-task sample counts of the step")
        return 1.0 / counts.to(dtype)

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        return _scaled_pcgrad(self, gram, self.sample_weights(counts, gram.shape[0], gram.dtype))

    def loss_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Each task's loss counts with its sample weight ``w_i`` (1 for mean rows)."""
        return self.last_info["sample_weights"].to(weights)


class PooledPCGrad(WeightedPCGrad):
    """PCGrad on rows weighted by each task's share of the step's samples, as if all samples
    formed one pooled batch: ``w_i = n_i / mean_j(n_j)``, ``d = sum_i (w_i g_i)^PC`` with
    per-sample mean rows ``g_i``.

    This scales the task with more samples **up**: the opposite of sample-weighted PCGrad
    ([`WeightedPCGrad`][hf_multitask.surgery.pcgrad.WeightedPCGrad]), which is what this library called ``weighted_pcgrad`` until that
    was corrected. Kept under its own name for runs that want every sample to count once.
    Normalised to mean 1, so equal counts give plain PCGrad; only the shares matter, not the
    totals or the batching. ``counts`` is required."""

    name = "pooled_pcgrad"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed, rows="mean")

    def sample_weights(self, counts: torch.Tensor | None, t: int, dtype: torch.dtype) -> torch.Tensor:
        if counts is None:
            raise ValueError("pooled_pcgrad needs the per-task sample counts of the step")
        counts = counts.to(dtype)
        return counts / counts.mean()


def _scaled_pcgrad(agg: PCGrad, gram: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """PCGrad on the rows ``scale_i g_i`` from the Gram matrix of the ``g_i``; the weights (and
    ``coeffs``) are in terms of the unscaled rows. Sets ``last_info``."""
    scaled_gram = scale[:, None] * gram * scale[None, :]
    scaled_coeffs = pcgrad_coefficients(scaled_gram, agg.generator)
    coeffs = scaled_coeffs * scale[None, :]
    agg.last_info["coeffs"] = coeffs
    agg.last_info["removed"] = projected_norms(scaled_gram, scaled_coeffs)  # ||w_i g_i - (w_i g_i)^PC||
    agg.last_info["sample_weights"] = scale
    return coeffs.sum(0)
