"""Conflict-Averse Gradient descent (CAGrad, Liu et al. 2021) on the Gram matrix."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence

import torch

from .base import Aggregator

logger = logging.getLogger(__name__)

# up to this many tasks the dual is solved exactly by enumerating the faces of the simplex
EXACT_MAX_TASKS = 10
KKT_TOLERANCE = 1e-8


def cagrad_objective(gram: torch.Tensor, w: torch.Tensor, c: float) -> float:
    """``F(w) = g_w . g0 + c ||g0|| ||g_w||`` from the Gram matrix (``g0`` the mean gradient)."""
    t = gram.shape[0]
    mean = torch.full((t,), 1.0 / t, dtype=gram.dtype)
    b = gram @ mean
    return float(w @ b + c * math.sqrt(max(float(mean @ b), 0.0)) * math.sqrt(max(float(w @ gram @ w), 0.0)))


def kkt_residual(gram: torch.Tensor, w: torch.Tensor, c: float) -> float:
    """How far ``w`` is from optimal for ``min_simplex F`` (0 at the optimum; relative to ``max G_ii``).

    With ``u = grad F(w)`` and ``nu = w . u``: optimality on the simplex means ``u_i >= nu`` for
    every task and ``u_i = nu`` where ``w_i > 0``.
    """
    t = gram.shape[0]
    mean = torch.full((t,), 1.0 / t, dtype=gram.dtype)
    b = gram @ mean
    norm = math.sqrt(max(float(w @ gram @ w), 0.0))
    if norm == 0.0:
        return 0.0
    u = b + c * math.sqrt(max(float(mean @ b), 0.0)) * (gram @ w) / norm
    nu = float(w @ u)
    below = float((nu - u).clamp_min(0).max())
    off = float(((u - nu).abs() * (w > 1e-12)).max())
    return max(below, off) / max(float(gram.diagonal().max()), 1e-300)


def _face_candidates(g: torch.Tensor, b: torch.Tensor, sqrt_phi: float, support: tuple[int, ...]) -> list[torch.Tensor]:
    """Stationary points of ``F`` inside the face of the simplex spanned by ``support``.

    On the face, ``b_S + sqrt(phi) G_SS w_S / n = nu 1`` with ``n = ||g_w||``; writing
    ``w_S = t G_SS^+ (nu 1 - b_S)`` the constraints ``n = t sqrt(phi)`` and ``1 . w_S = 1`` give
    a quadratic in ``nu``: ``A nu^2 - 2 B nu + C - phi = 0`` with ``A = 1.G^+1``,
    ``B = 1.G^+b``, ``C = b.G^+b``.
    """
    t = g.shape[0]
    idx = list(support)
    if len(idx) == 1:
        w = torch.zeros(t, dtype=g.dtype)
        w[idx[0]] = 1.0
        return [w]
    pinv = torch.linalg.pinv(g[idx][:, idx], hermitian=True)
    one = torch.ones(len(idx), dtype=g.dtype)
    bs = b[idx]
    a_, b_, c_ = float(one @ pinv @ one), float(one @ pinv @ bs), float(bs @ pinv @ bs) - sqrt_phi**2
    disc = b_ * b_ - a_ * c_
    if a_ <= 0 or disc < 0:
        return []
    out = []
    for nu in ((b_ + math.sqrt(disc)) / a_, (b_ - math.sqrt(disc)) / a_):
        v = pinv @ (nu * one - bs)
        total = float(v.sum())
        if total <= 0:
            continue
        ws = v / total
        if bool((ws < -1e-12).any()):
            continue
        w = torch.zeros(t, dtype=g.dtype)
        w[idx] = ws.clamp_min(0)
        out.append(w / w.sum())
    return out


def solve_cagrad_dual(gram: torch.Tensor, c: float, steps: int = 20000) -> tuple[torch.Tensor, float]:
    """``argmin_{w in simplex} F(w)`` and its KKT residual, in float64.

    Up to [`EXACT_MAX_TASKS`][hf_multitask.surgery.cagrad.EXACT_MAX_TASKS] tasks, every face of the simplex is searched for its
    stationary point in closed form ([`_face_candidates()`][hf_multitask.surgery.cagrad._face_candidates]) and the best feasible one is
    taken: the exact optimum (F is convex). Above that, or if the exact search leaves a KKT
    residual (degenerate Gram matrices), projected mirror descent with a decaying step runs
    for ``steps`` iterations; the caller sees the residual either way.
    """
    g = gram.double() / float(gram.diagonal().max())  # conditioning only: w* is scale-free
    t = g.shape[0]
    mean = torch.full((t,), 1.0 / t, dtype=g.dtype)
    b = g @ mean
    sqrt_phi = c * math.sqrt(max(float(mean @ b), 0.0))
    best, best_value = mean, cagrad_objective(g, mean, c)
    if t <= EXACT_MAX_TASKS:
        for k in range(1, t + 1):
            for support in itertools.combinations(range(t), k):
                for w in _face_candidates(g, b, sqrt_phi, support):
                    value = cagrad_objective(g, w, c)
                    if value < best_value:
                        best, best_value = w, value
    residual = kkt_residual(g, best, c)
    if residual > KKT_TOLERANCE:
        best, best_value = _mirror_descent(g, b, sqrt_phi, c, best, best_value, steps)
        best, best_value = _active_set_polish(g, b, sqrt_phi, c, best, best_value)
        residual = kkt_residual(g, best, c)
    return best, residual


def _mirror_descent(g, b, sqrt_phi, c, best, best_value, steps):
    """Exponentiated-gradient descent with a decaying step from ``best``: finds the support."""
    w = best.clone()
    for k in range(steps):
        norm = math.sqrt(max(float(w @ g @ w), 1e-30))
        grad = b + sqrt_phi * (g @ w) / norm
        w = w * torch.exp(-(grad - grad.min()) / math.sqrt(k + 1.0))
        w = w / w.sum()
        if k % 50 == 0 or k == steps - 1:
            value = cagrad_objective(g, w, c)
            if value < best_value:
                best, best_value = w.clone(), value
    return best, best_value


def _active_set_polish(g, b, sqrt_phi, c, best, best_value, rounds: int = 50):
    """Closed-form face solutions ([`_face_candidates()`][hf_multitask.surgery.cagrad._face_candidates]) on the supports that the weights of
    ``best`` suggest (its k largest weights, for every k), then, while the KKT conditions fail,
    on the best support plus the task that violates them most."""
    order = torch.argsort(best, descending=True).tolist()
    for k in range(1, len(order) + 1):
        for w in _face_candidates(g, b, sqrt_phi, tuple(sorted(order[:k]))):
            value = cagrad_objective(g, w, c)
            if value < best_value:
                best, best_value = w, value
    for _ in range(rounds):
        if kkt_residual(g, best, c) <= KKT_TOLERANCE:
            break
        norm = math.sqrt(max(float(best @ g @ best), 1e-30))
        u = b + sqrt_phi * (g @ best) / norm
        support = {int(i) for i in torch.nonzero(best > 1e-12).flatten()}
        outside = [i for i in range(g.shape[0]) if i not in support]
        if not outside:
            break
        support.add(min(outside, key=lambda i: float(u[i])))
        improved = False
        for w in _face_candidates(g, b, sqrt_phi, tuple(sorted(support))):
            value = cagrad_objective(g, w, c)
            if value < best_value:
                best, best_value, improved = w, value, True
        if not improved:
            break
    return best, best_value


class CAGrad(Aggregator):
    """CAGrad: the update that maximises the worst task improvement near the average gradient.

    Liu, Liu, Jin, Stone, Liu. "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021. The primal problem is ``max_d min_i g_i . d`` subject to
    ``||d - g0|| <= c ||g0||`` (``g0 = (1/T) sum_i g_i``). Its dual (the paper's Eq. 2) is, on
    the simplex,

        w* = argmin_w  F(w) = g_w . g0 + c ||g0|| ||g_w||,   g_w = sum_i w_i g_i

    and the update is ``d = g0 + c ||g0|| / ||g_w*|| * g_w*`` (no rescaling). ``c`` in [0, 1)
    trades average progress (c = 0: plain mean) for the worst task. The dual is solved to
    optimality from the Gram matrix in float64 (`solve_cagrad_dual()`: exact for up to 10
    tasks); ``last_info["kkt_residual"]`` reports how close the solution is, and a residual
    above 1e-6 logs a warning. By strong duality the worst task's improvement ``min_i g_i . d``
    equals ``F(w*)``.
    """

    name = "cagrad"

    def __init__(self, seed: int = 0, c: float = 0.4, steps: int = 20000) -> None:
        super().__init__(seed)
        if not 0.0 <= c < 1.0:
            raise ValueError(f"c must be in [0, 1), got {c}")
        self.c, self.steps = float(c), int(steps)

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        t = gram.shape[0]
        mean = torch.full((t,), 1.0 / t, dtype=gram.dtype)
        g0_sq = float(mean @ gram @ mean)
        if g0_sq <= 0 or self.c == 0.0:
            return mean
        w, residual = solve_cagrad_dual(gram, self.c, self.steps)
        self.last_info["simplex_weights"] = w
        self.last_info["kkt_residual"] = residual
        if residual > 1e-6:
            logger.warning("CAGrad: the dual solver stopped %.2e from optimal (KKT residual) for tasks %s", residual, list(tasks))
        gw_sq = float(w @ gram @ w)
        if gw_sq <= 1e-24 * float(gram.diagonal().max()):
            return mean  # 0 is in the hull of the gradients: every direction near g0 is conflict-free to first order
        lam = self.c * math.sqrt(g0_sq) / math.sqrt(gw_sq)
        return mean + lam * w
