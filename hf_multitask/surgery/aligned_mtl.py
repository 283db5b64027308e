"""Aligned-MTL (Senushkin et al. 2023): align the principal components of the task gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Aggregator


class AlignedMTL(Aggregator):
    """Aligned-MTL: make the gradient system well conditioned, then sum.

    Senushkin, Patakin, Kuznetsov, Konushin. "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023. With the Gram matrix ``G = J J^T = V diag(lambda) V^T`` (J the T x P
    gradient matrix, rank r), the aligned gradients are ``J_hat = B J`` with

        B = sqrt(lambda_min) * V diag(lambda)^(-1/2) V^T     (over the r non-zero eigenvalues)

    i.e. every singular value of J is set to the smallest non-zero one, so no task dominates
    and the condition number is 1. The update is ``d = J_hat^T alpha`` with ``alpha`` the task
    weights (all ones), so the aggregation weights are ``B alpha``.

    Which eigenvalues count as non-zero: those above ``T * eps * lambda_max``, with ``eps`` the
    machine epsilon of the precision the Gram matrix was accumulated in (float32 for float32
    gradients: the rounding noise of ``J J^T`` is about that large, so a smaller cut-off would
    keep noise eigenvalues and shrink the update by orders of magnitude). This is the
    authors' choice; ``rtol`` overrides it with ``rtol * lambda_max``.
    """

    name = "aligned_mtl"

    def __init__(self, seed: int = 0, rtol: float | None = None) -> None:
        super().__init__(seed)
        self.rtol = None if rtol is None else float(rtol)

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        t = gram.shape[0]
        lam, vec = torch.linalg.eigh(gram)
        eps = float(self.last_info.get("gram_eps", torch.finfo(torch.float32).eps))
        rtol = t * eps if self.rtol is None else self.rtol
        keep = lam > rtol * lam.max().clamp_min(0)
        if not bool(keep.any()):
            return torch.ones(t, dtype=gram.dtype)
        lam, vec = lam[keep], vec[:, keep]
        b = lam.min().sqrt() * (vec * lam.rsqrt()[None, :]) @ vec.T
        return b @ torch.ones(t, dtype=gram.dtype)
