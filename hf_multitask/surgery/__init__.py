"""Multitask methods, two kinds in two registries:

- gradient aggregators ("gradient surgery", `AGGREGATORS`): a callable ``agg(grads,
  counts=None, tasks=None)`` mapping the ``(T, P)`` matrix of per-task gradients of the shared
  parameters to one ``(P,)`` update, its weights a function of the Gram matrix;
- loss weightings (`LOSS_WEIGHTINGS`, `loss_weighting`): weights of the task
  losses, one backward, no per-task gradients.

The trainer's ``aggregator`` flag names either; ``get_aggregator(name, **kwargs)`` builds it.

| name | method |
|---|---|
| ``sum`` | plain summed-loss multitask |
| ``mean`` | mean of the task gradients |
| ``pcgrad`` | PCGrad (Yu et al. 2020) |
| ``weighted_pcgrad`` | sample-weighted PCGrad: PCGrad on each task's per-sample mean gradient (summed-loss rows scaled by 1/n_i; the trainer's mean-loss rows need no scaling) |
| ``pooled_pcgrad`` | PCGrad on rows weighted by each task's share of the step's samples (n_i / mean n): one pooled batch |
| ``gradvac`` | Gradient Vaccine (Wang et al. 2021) |
| ``cagrad`` | CAGrad (Liu et al. 2021) |
| ``aligned_mtl`` | Aligned-MTL (Senushkin et al. 2023) |
| ``upgrad`` | UPGrad (Quinton & Rey 2024) |
| ``db_mtl`` | DB-MTL (Lin et al. 2023): log losses, gradient-magnitude balancing of moving averages |
| ``rlw`` | random loss weighting (Lin et al. 2022), a loss weighting: no per-task gradients |
| ``uw`` | uncertainty weighting (Kendall et al. 2018), a loss weighting |
| ``famo`` | FAMO (Liu et al. 2023), a loss weighting: O(1) memory |
| ``gradsim`` | primary tasks: auxiliaries used only where their cosine with the primary is > 0 (Du et al. 2018; ``weighted=True`` scales by the cosine) |
| ``pcgrad_primary`` | primary tasks: a conflicting auxiliary is projected onto the primary's normal plane, the primary never changed |
| ``metabalance`` | primary tasks: auxiliary gradient norms relaxed toward the primary's (He et al. 2022) |
"""

from __future__ import annotations

from typing import Any

from ..registry import Registry, RegistryError
from .aligned_mtl import AlignedMTL
from .base import Aggregator, gram_matrix, projected_norms
from .cagrad import CAGrad
from .dbmtl import DBMTL
from .gradvac import GradVac
from .loss_weighting import FAMO, RLW, LossWeighting, UncertaintyWeighting
from .pcgrad import PCGrad, PooledPCGrad, WeightedPCGrad, pcgrad_coefficients
from .primary import GradSimGating, MetaBalance, PrimaryPCGrad
from .simple import Mean, Sum
from .upgrad import UPGrad

AGGREGATORS: Registry[type[Aggregator]] = Registry(
    "aggregator",
    {
        cls.name: cls
        for cls in (
            Sum,
            Mean,
            PCGrad,
            WeightedPCGrad,
            PooledPCGrad,
            GradVac,
            CAGrad,
            AlignedMTL,
            UPGrad,
            DBMTL,
            GradSimGating,
            PrimaryPCGrad,
            MetaBalance,
        )
    },
)


LOSS_WEIGHTINGS: Registry[type[LossWeighting]] = Registry("loss weighting", {cls.name: cls for cls in (RLW, UncertaintyWeighting, FAMO)})


def method_names() -> list[str]:
    """Every name the trainer's ``aggregator`` flag takes: the gradient aggregators and the loss weightings."""
    return sorted([*AGGREGATORS, *LOSS_WEIGHTINGS])


def method_class(name: str) -> type[Aggregator] | type[LossWeighting]:
    """The aggregator or loss weighting registered as ``name`` (a `RegistryError`,
    also a ``ValueError``, lists them all otherwise)."""
    for registry in (AGGREGATORS, LOSS_WEIGHTINGS):
        if name in registry:
            return registry[name]
    raise RegistryError(f"Unknown aggregator {name!r}; choose from {method_names()}")


def get_aggregator(name: str, **kwargs: Any) -> Aggregator | LossWeighting:
    """Build the method the ``aggregator`` flag names: a gradient [`Aggregator`][hf_multitask.surgery.base.Aggregator] or a
    [`LossWeighting`][hf_multitask.surgery.loss_weighting.LossWeighting] (see the module docstring for the list)."""
    return method_class(name)(**kwargs)


def _refuse_taken(name: str, other: Registry) -> None:
    """One flag names both kinds: a name is in one registry at most."""
    if name in other:
        raise ValueError(f"{name!r} is already a registered {other.kind}: the aggregator flag names one method")


def register_aggregator(cls: type[Aggregator]) -> type[Aggregator]:
    """Register a custom [`Aggregator`][hf_multitask.surgery.base.Aggregator] subclass under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Aggregator)):
        raise TypeError("register_aggregator takes an Aggregator subclass (a LossWeighting: register_loss_weighting)")
    _refuse_taken(cls.name, LOSS_WEIGHTINGS)
    return AGGREGATORS.register(cls.name, cls)


def register_loss_weighting(cls: type[LossWeighting]) -> type[LossWeighting]:
    """Register a custom [`LossWeighting`][hf_multitask.surgery.loss_weighting.LossWeighting] subclass under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, LossWeighting)):
        raise TypeError("register_loss_weighting takes a LossWeighting subclass")
    _refuse_taken(cls.name, AGGREGATORS)
    return LOSS_WEIGHTINGS.register(cls.name, cls)


__all__ = [
    "AGGREGATORS",
    "LOSS_WEIGHTINGS",
    "Aggregator",
    "AlignedMTL",
    "CAGrad",
    "DBMTL",
    "FAMO",
    "GradVac",
    "LossWeighting",
    "Mean",
    "PCGrad",
    "RLW",
    "Sum",
    "UPGrad",
    "UncertaintyWeighting",
    "WeightedPCGrad",
    "PooledPCGrad",
    "GradSimGating",
    "PrimaryPCGrad",
    "MetaBalance",
    "get_aggregator",
    "gram_matrix",
    "pcgrad_coefficients",
    "projected_norms",
    "method_class",
    "method_names",
    "register_aggregator",
    "register_loss_weighting",
]
