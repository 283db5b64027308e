"""UPGrad (Quinton & Rey 2024): project every task gradient onto the dual cone of all of them, then average."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from .base import Aggregator

__all__ = ["UPGrad", "dual_cone_weights"]

_EXACT_MAX_TASKS = 10


def dual_cone_weights(gram: torch.Tensor, u: torch.Tensor, tol: float = 1e-10) -> torch.Tensor:
    """``v* = argmin_{v >= u} v^T G v``: the weights of the projection of ``J^T u`` onto the dual
    cone ``{x : J x >= 0}`` of the rows of ``J`` (``G = J J^T``), i.e. ``pi(J^T u) = J^T v*``.

    KKT: ``G v = mu``, ``mu >= 0``, ``v >= u``, ``mu_i (v_i - u_i) = 0``. For up to 10 tasks every
    split into free indices F (``(G v)_F = 0``, so ``v_F = -G_FF^+ G_FB u_B``) and bound indices
    B (``v_B = u_B``) is tried and the first that satisfies the conditions is the optimum (the
    problem is convex); above that, projected gradient descent. Float64.
    """
    g = gram.double()
    u = u.double()
    t = g.shape[0]
    scale = float(g.diagonal().max()) or 1.0
    g = g / scale
    if t <= _EXACT_MAX_TASKS:
        best, best_value = None, float("inf")
        for k in range(t + 1):
            for free in itertools.combinations(range(t), k):
                bound = [i for i in range(t) if i not in free]
                v = u.clone()
                if free:
                    idx = list(free)
                    v[idx] = -torch.linalg.pinv(g[idx][:, idx], hermitian=True) @ (g[idx][:, bound] @ u[bound])
                if bool((v < u - tol).any()):
                    continue
                mu = g @ v
                if bound and bool((mu[bound] < -tol).any()):
                    continue
                value = float(v @ g @ v)
                if value < best_value - tol:
                    best, best_value = v, value
        if best is not None:
            return best
    # projected gradient on the box v >= u (also the fallback of degenerate Gram matrices)
    v = u.clone()
    step = 1.0 / max(float(torch.linalg.eigvalsh(g).max()), 1e-12)
    for _ in range(10000):
        v = torch.maximum(v - step * (g @ v), u)
    return v


class UPGrad(Aggregator):
    """UPGrad: the mean of every task gradient projected onto the dual cone of all of them.

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024. With
    ``pi(x)`` the projection of x onto ``{x : g_j . x >= 0 for every j}``:

        d = (1/T) sum_i pi(g_i),   pi(g_i) = J^T v_i,   v_i = argmin_{v >= e_i} v^T G v

    so ``d`` conflicts with no task (``g_j . d >= 0``), and without conflicts it is the mean of
    the gradients. Computed from the Gram matrix alone (`dual_cone_weights()`).
    """

    name = "upgrad"

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        t = gram.shape[0]
        eye = torch.eye(t, dtype=torch.float64)
        coeffs = torch.stack([dual_cone_weights(gram, eye[i]) for i in range(t)])  # row i: pi(g_i) = coeffs[i] @ J
        self.last_info["coeffs"] = coeffs
        return coeffs.mean(0)
