"""Per-parameter learning rates: a higher rate for task-owned parameters and layer-wise decay.

Layer-wise learning-rate decay (Howard & Ruder 2018; Clark et al. 2020) trains the encoder's
lower layers more gently than its top: with ``L`` layers, layer ``i`` (0-based) trains at
``lr * decay**(L - i)``, the embeddings at ``lr * decay**(L + 1)``, everything else shared (a
pooler, a shared LoRA outside the layers) at ``lr``. Task-owned parameters (heads, PALs,
per-task LoRA) train at ``head_lr`` when it is given.
"""

from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["learning_rate_factors", "split_param_groups"]

_LAYER = re.compile(r"\.layers?\.(\d+)\.")


def learning_rate_factors(model: nn.Module, lr: float, head_lr: float | None, decay: float) -> dict[int, float]:
    """``{id(param): factor of lr}`` for every trainable parameter of a ``MultitaskModel``."""
    layers = int(getattr(model.config.encoder_config, "num_hidden_layers", 0) or 0)
    owned = {id(p) for t in model.task_names for p in model.task_parameters(t)}
    factors = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in owned:
            factors[id(p)] = (head_lr / lr) if head_lr is not None else 1.0
            continue
        factor = 1.0
        if decay != 1.0 and name.startswith("encoder."):
            match = _LAYER.search(name)
            if match is not None:
                factor = decay ** (layers - int(match.group(1)))
            elif "embeddings" in name:
                factor = decay ** (layers + 1)
        factors[id(p)] = factor
    return factors


def split_param_groups(optimizer: torch.optim.Optimizer, factors: dict[int, float]) -> None:
    """Split every group of a freshly built optimizer by learning-rate factor (each new group
    keeps its group's other settings, e.g. weight decay). Must run before the first step and
    before the scheduler is created (it records each group's initial rate)."""
    if optimizer.state:
        raise RuntimeError("split_param_groups needs an optimizer that has not stepped yet")
    base, scaled = [], []
    for group in optimizer.param_groups:
        by_factor: dict[float, list] = {}
        for p in group["params"]:
            by_factor.setdefault(factors.get(id(p), 1.0), []).append(p)
        for factor, params in sorted(by_factor.items()):
            (base if factor == 1.0 else scaled).append({**group, "params": params, "lr": group["lr"] * factor})
    # the Trainer logs the first group's rate as learning_rate: put a group at the base rate first
    # (an empty one when every parameter is scaled, e.g. layer decay with no pooler; optimizers step over it)
    if not base and optimizer.param_groups:
        base = [{**optimizer.param_groups[0], "params": []}]
    optimizer.param_groups = base + scaled
