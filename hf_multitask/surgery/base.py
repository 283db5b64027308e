"""Shared machinery of gradient aggregators: the Gram matrix and the weighted sum of rows.

Every aggregator maps a ``(T, P)`` matrix of per-task gradients of the shared parameters to
one ``(P,)`` update. The projection methods never touch the big matrix beyond two passes:
``G = grads @ grads.T`` (T x T, fp32 accumulation) and the final ``weights @ grads``. Their
whole logic runs on the small Gram matrix in float64, which keeps surgery near free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["Aggregator", "accumulation_eps", "gram_matrix", "gram_with_factor", "projected_norms", "scaled_gram"]

_SAFE_MAX = 1e15
_SAFE_MIN = 1e-15


def scaled_gram(grads: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(G, s)`` with ``grads @ grads.T == s**2 * G``, ``G`` in float64.

    Dot products accumulate in fp32 (``grads`` is cast if it is half precision) or in float64
    for float64 gradients. When the entries are so large that the products overflow, or so
    small that they underflow, the rows are first divided by their largest entry ``s``: every
    aggregator here is positively homogeneous, so its weights do not change. ``s`` is kept
    as a number, never squared, so float64 entries up to the largest finite float work.
    Non-finite gradients give a non-finite ``G``.
    """
    g = grads if grads.dtype in (torch.float32, torch.float64) else grads.float()
    gram = (g @ g.T).double()
    if g.numel() == 0:  # no shared parameters (e.g. only per-task adapters train)
        return gram, 1.0
    finite = bool(torch.isfinite(gram).all())
    if finite:
        diag = gram.diagonal()
        ill = bool(((diag < _SAFE_MIN**2) | (diag > _SAFE_MAX**2)).any())
    if not finite or ill:
        scale = g.abs().amax()
        if not torch.isfinite(scale):
            return gram, 1.0  # inf/NaN in the gradients: let them propagate
        if scale > 0:
            scaled = g / scale
            return (scaled @ scaled.T).double(), float(scale)
    return gram, 1.0


def gram_with_factor(grads: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(G, f)`` with ``grads @ grads.T == f * G`` (``f = s**2`` of [`scaled_gram()`][hf_multitask.surgery.base.scaled_gram]; it may be
    ``inf`` in float arithmetic for entries beyond 1e154, which never raises)."""
    gram, scale = scaled_gram(grads)
    return gram, float(torch.tensor(scale, dtype=torch.float64) ** 2)


def accumulation_eps(grads: torch.Tensor) -> float:
    """Machine epsilon of the precision the Gram matrix of ``grads`` is accumulated in."""
    return torch.finfo(torch.float64 if grads.dtype == torch.float64 else torch.float32).eps


def gram_matrix(grads: torch.Tensor) -> torch.Tensor:
    """``grads @ grads.T`` in float64, up to a positive global factor (see `gram_with_factor()`)."""
    return gram_with_factor(grads)[0]


def projected_norms(gram: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """``||g_i - sum_k C[i, k] g_k||`` for every row i, from the Gram matrix alone."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    diff = eye - coeffs
    sq = torch.einsum("ik,kl,il->i", diff, gram, diff)
    return sq.clamp_min(0).sqrt()


class SeededMethod:
    """What every multitask method has: a ``name``, a seeded generator for its own randomness
    (projection order, RLW's draws; every DDP rank draws the same) and a state that checkpoints."""

    name = "base"
    # True for a method that serves primary tasks: the trainer passes primary=args.primary_tasks
    uses_primary = False

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(int(seed))

    def state_dict(self) -> dict[str, Any]:
        """The method's state (its generator; subclasses add theirs), saved with every checkpoint."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what [`state_dict()`][hf_multitask.surgery.base.SeededMethod.state_dict] returned (on resume)."""
        self.generator.set_state(state["generator"])


class Aggregator(SeededMethod):
    """Base class: subclasses implement [`weights()`][hf_multitask.surgery.base.Aggregator.weights] on the Gram matrix.

    Calling an aggregator ``agg(grads, counts=None, tasks=None, out=None)`` returns the
    ``(P,)`` update ``w @ grads`` with ``w = agg.weights(G, counts, tasks)`` (written into
    ``out`` when given). ``counts`` holds the
    number of samples of each row's task in the step; ``tasks`` names the rows (stateful
    methods such as GradVac key their state by task name).

    After each call ``last_info`` holds telemetry: the Gram matrix (``gram``, with
    ``grads @ grads.T = gram_scale**2 * gram``; ``gram_eps`` is the epsilon of the precision it
    was accumulated in), the weights and, for
    methods that modify each task's gradient, ``coeffs`` (row i of the modified gradients
    is ``coeffs[i] @ grads``) and ``removed`` (``||g_i - g_i'||`` per task).
    """

    # True for a method that needs the full gradient vectors, not just the Gram matrix: the
    # sharded engines (FSDP2, DDP reduce-scatter) refuse it. None of the built-in methods does.
    needs_full_vectors = False
    # True for a method that wants the step's task losses before it aggregates (DB-MTL): the
    # trainer then calls set_step_losses with them (averaged over DDP ranks) before each update
    uses_step_losses = False

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.last_info: dict[str, Any] = {}

    def weights(self, gram: torch.Tensor, counts: torch.Tensor | None, tasks: Sequence[str]) -> torch.Tensor:
        """The method's rule: float64 weights ``w`` (one per row) of the update ``w @ grads``.

        Args:
            gram: The ``(T, T)`` Gram matrix ``G = grads @ grads.T`` of the step's task rows (float64).
            counts: Each row's number of samples, or None.
            tasks: The rows' task names, in order.
        """
        raise NotImplementedError

    def __call__(
        self,
        grads: torch.Tensor,
        counts: torch.Tensor | Sequence[float] | None = None,
        tasks: Sequence[str] | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if grads.ndim != 2:
            raise ValueError(f"expected a (tasks, params) matrix, got shape {tuple(grads.shape)}")
        gram, scale = scaled_gram(grads)
        w = self.weights_from_gram(gram, counts, tasks, scale=scale, eps=accumulation_eps(grads))
        w = w.to(device=grads.device, dtype=grads.dtype)
        return w @ grads if out is None else torch.mv(grads.t(), w, out=out)

    def weights_from_gram(
        self,
        gram: torch.Tensor,
        counts: torch.Tensor | Sequence[float] | None = None,
        tasks: Sequence[str] | None = None,
        *,
        scale: float = 1.0,
        eps: float | None = None,
    ) -> torch.Tensor:
        """The update weights ``w`` (``d = w @ grads``) from the Gram matrix alone.

        This is what a gradient engine calls when it holds the rows itself (sharded across
        ranks, each computing a partial Gram matrix): ``gram`` is ``grads @ grads.T / scale**2``
        (any positive ``scale``, since every aggregator is positively homogeneous), ``eps`` the
        machine epsilon of the precision the gradients were accumulated in (float32 if None).
        Non-finite Gram matrices give weights of one, so inf/NaN reach the update (the fp16
        GradScaler then skips the step). Sets ``last_info``.
        """
        gram = gram.double()
        t = gram.shape[0]
        tasks = [str(i) for i in range(t)] if tasks is None else list(tasks)
        if len(tasks) != t:
            raise ValueError(f"{len(tasks)} task names for {t} gradient rows")
        if counts is not None:
            counts = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
            if counts.numel() != t or bool((counts <= 0).any()):
                raise ValueError(f"counts must be {t} positive numbers, got {counts.tolist()}")
        factor = float(torch.tensor(scale, dtype=torch.float64) ** 2)
        eps = torch.finfo(torch.float32).eps if eps is None else float(eps)
        self.last_info = {"gram": gram, "gram_scale": float(scale), "gram_factor": factor, "gram_eps": eps, "tasks": tasks}
        if not torch.isfinite(gram).all():
            # inf/NaN gradients (fp16 overflow): keep them so the GradScaler skips the step
            w = torch.ones(t, dtype=torch.float64)
        else:
            w = self.weights(gram, counts, tasks)
        self.last_info["weights"] = w
        return w

    def set_step_losses(self, tasks: Sequence[str], losses: Sequence[float]) -> None:
        """The step's mean task losses (only called when ``uses_step_losses``)."""

    def loss_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """The factor each task's loss carries in this method's objective, given the update
        weights of the last call (``d = weights @ grads``). Task-owned parameters (heads,
        per-task adapters) get their task's gradient times this factor, so the encoder and the
        heads follow one objective. Default: the update weights themselves (for ``mean`` 1/T,
        for ``cagrad`` and ``aligned_mtl`` the coefficient of each ``g_i`` in ``d``);
        projection methods override it with the weights before projection (1 for PCGrad)."""
        return weights

    def _permutation(self, n: int) -> list[int]:
        return torch.randperm(n, generator=self.generator).tolist()
