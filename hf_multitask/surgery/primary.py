"""Primary-aware gradient methods: auxiliary tasks serve the task(s) a user cares about.

Each is a pure function of the T x T Gram matrix (plus, for MetaBalance, moving averages of
norms). ``primary`` names the primary tasks; every other row is an auxiliary. The primary
gradient is ``g_P = sum_{p in P} g_p`` (one primary: its own gradient), and the primary rows
are never changed: each method only decides how much of each auxiliary ``g_a`` reaches the
update ``d = g_P + sum_a c_a(g_a)``.

A step without a primary row has nothing to compare with: its rows are summed as they are
(use ``round_robin``, or gradient accumulation over all tasks, so every step holds the primary).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .base import Aggregator, projected_norms

__all__ = ["GradSimGating", "PrimaryPCGrad", "MetaBalance"]


class _PrimaryAware(Aggregator):
    """Base: ``primary`` task names (set by the trainer from ``primary_tasks``)."""

    uses_primary = True  # the trainer passes primary=args.primary_tasks

    def __init__(self, seed: int = 0, primary: Sequence[str] | str | None = None) -> None:
        super().__init__(seed)
        self.primary = [primary] if isinstance(primary, str) else list(primary or [])
        if not self.primary:
            raise ValueError(f"{self.name} needs the primary task(s): set primary_tasks (or aggregator_kwargs primary)")

    def _split(self, tasks: Sequence[str]) -> tuple[list[int], list[int]]:
        primary = [i for i, t in enumerate(tasks) if t in self.primary]
        return primary, [i for i in range(len(tasks)) if i not in primary]

    @staticmethod
    def _primary_products(gram: torch.Tensor, primary: list[int]) -> tuple[torch.Tensor, float]:
        """(<g_P, g_k> for every row k, ||g_P||^2) from the Gram matrix."""
        dots = gram[primary].sum(0)
        return dots, float(dots[primary].sum())

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        primary, aux = self._split(tasks)
        coeffs = torch.eye(gram.shape[0], dtype=gram.dtype)
        if primary and aux:
            self._auxiliary_coefficients(coeffs, gram, primary, aux, tasks)
        self.last_info["coeffs"] = coeffs
        self.last_info["removed"] = projected_norms(gram, coeffs)
        return coeffs.sum(0)

    def _auxiliary_coefficients(self, coeffs: torch.Tensor, gram: torch.Tensor, primary: list[int], aux: list[int],
                                tasks: Sequence[str]) -> None:  # fmt: skip
        raise NotImplementedError

    def loss_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Each task's head follows its own loss at weight 1: the methods change how much of an
        auxiliary's *shared* gradient reaches the encoder, not the task's own objective."""
        return torch.ones_like(weights)


class GradSimGating(_PrimaryAware):
    """Gradient-similarity gating of auxiliaries (Du, Czarnecki, Jayakumar, Farajtabar, Pascanu,
    Lakshminarayanan, "Adapting Auxiliary Losses Using Gradient Similarity", 2018):

        cos_a = <g_P, g_a> / (||g_P|| ||g_a||)
        unweighted:  d = g_P + sum_a [cos_a > 0] g_a
        weighted:    d = g_P + sum_a max(0, cos_a) g_a

    An auxiliary is used only where it agrees with the primary.
    """

    name = "gradsim"

    def __init__(self, seed: int = 0, primary: Sequence[str] | str | None = None, weighted: bool = False) -> None:
        super().__init__(seed, primary)
        self.weighted = bool(weighted)

    def _auxiliary_coefficients(self, coeffs, gram, primary, aux, tasks):
        dots, primary_sq = self._primary_products(gram, primary)
        cosines = {}
        for a in aux:
            denom = math.sqrt(max(primary_sq, 0.0) * max(float(gram[a, a]), 0.0))
            cos = float(dots[a]) / denom if denom > 0 else 0.0
            cosines[tasks[a]] = cos
            coeffs[a, a] = max(0.0, cos) if self.weighted else float(cos > 0)
        self.last_info["cosine_to_primary"] = cosines


class PrimaryPCGrad(_PrimaryAware):
    """PCGrad toward the primary: an auxiliary gradient that conflicts with the primary's is
    projected onto the primary's normal plane; the primary's own gradient is never changed
    (after Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", with the projection
    one-sided):

        g_a' = g_a - min(0, <g_a, g_P>) / ||g_P||^2 * g_P,     d = g_P + sum_a g_a'
    """

    name = "pcgrad_primary"

    def _auxiliary_coefficients(self, coeffs, gram, primary, aux, tasks):
        dots, primary_sq = self._primary_products(gram, primary)
        if primary_sq <= 0:
            return
        for a in aux:
            if dots[a] < 0:
                for p in primary:
                    coeffs[a, p] -= dots[a] / primary_sq


class MetaBalance(_PrimaryAware):
    """MetaBalance (He, Feng, Chen, Zhang, Chen, Wang, Hu, Zhou, Wen, WWW 2022, "MetaBalance:
    Improving Multi-Task Recommendations via Adapting Gradient Magnitudes of Auxiliary Tasks"):
    auxiliary gradient magnitudes are relaxed toward the primary's. With moving averages of the
    norms ``m_k <- beta m_k + (1 - beta) ||g_k||`` (``m_P`` of ``g_P``) and relax factor ``r``:

        g_a' = (r * m_P / m_a + (1 - r)) * g_a,     d = g_P + sum_a g_a'

    ``strategy``: ``"both"`` (every auxiliary), ``"reduce"`` (only those with m_a > m_P) or
    ``"enlarge"`` (only those with m_a < m_P); the paper finds the best strategy differs by
    data set. Here the rule applies to the whole shared gradient, not layer by layer (under fp16
    the averages see loss-scaled norms, whose ratio the rule uses). The moving averages are state: checkpoints carry them, and under DDP every rank sees the same reduced
    Gram matrix, so every rank keeps the same averages.
    """

    name = "metabalance"
    STRATEGIES = ("both", "reduce", "enlarge")

    def __init__(self, seed: int = 0, primary: Sequence[str] | str | None = None, relax: float = 0.7, beta: float = 0.9,
                 strategy: str = "both") -> None:  # fmt: skip
        super().__init__(seed, primary)
        if not 0.0 <= relax <= 1.0:
            raise ValueError(f"metabalance: relax must be in [0, 1], got {relax}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"metabalance: beta must be in [0, 1), got {beta}")
        if strategy not in self.STRATEGIES:
            raise ValueError(f"metabalance: strategy must be one of {self.STRATEGIES}, got {strategy!r}")
        self.relax, self.beta, self.strategy = float(relax), float(beta), strategy
        self.norms: dict[str, float] = {}  # moving averages; "__primary__" for g_P

    def _average(self, key: str, norm: float) -> float:
        old = self.norms.get(key)
        self.norms[key] = norm if old is None else self.beta * old + (1.0 - self.beta) * norm
        return self.norms[key]

    def _auxiliary_coefficients(self, coeffs, gram, primary, aux, tasks):
        # the Gram matrix comes divided by scale**2; the averages need true norms (sqrt first: scale**2 may overflow)
        scale = float(self.last_info.get("gram_scale", 1.0))
        _, primary_sq = self._primary_products(gram, primary)
        m_primary = self._average("__primary__", math.sqrt(max(primary_sq, 0.0)) * scale)
        scales = {}
        for a in aux:
            m_aux = self._average(tasks[a], math.sqrt(max(float(gram[a, a]), 0.0)) * scale)
            apply = (self.strategy == "both" or (self.strategy == "reduce" and m_aux > m_primary)
                     or (self.strategy == "enlarge" and m_aux < m_primary))  # fmt: skip
            if apply and m_aux > 0:
                coeffs[a, a] = self.relax * m_primary / m_aux + (1.0 - self.relax)
            scales[tasks[a]] = float(coeffs[a, a])
        self.last_info["auxiliary_scales"] = scales

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "norms": dict(self.norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.norms = {str(k): float(v) for k, v in state.get("norms", {}).items()}
