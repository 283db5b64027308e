"""Task heads: linear / MLP classifiers and regressors, and the cosine pair head."""

from __future__ import annotations

import torch
from torch import nn

from .tasks import TaskSpec


class MLPHead(nn.Module):
    """``Dropout -> Linear -> GELU`` per hidden size, then ``Dropout -> Linear(out)``.

    With no hidden sizes this is a linear head (with input dropout).
    """

    def __init__(self, in_features: int, out_features: int, hidden_sizes: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden_sizes:
            layers += [nn.Dropout(dropout), nn.Linear(width, h), nn.GELU()]
            width = h
        layers += [nn.Dropout(dropout), nn.Linear(width, out_features)]
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class CosineHead(nn.Module):
    """Siamese cosine-similarity head.

    Regression: ``y = low + (cos(u, v) + 1) / 2 * (high - low)`` (the task's label range;
    ``cos`` itself when the task has no range). Binary classification: the logit of the
    positive class is ``z = a * cos(u, v) + b`` with learnable ``a`` (init 5) and ``b``
    (init 0); logits are ``[0, z]`` so softmax gives ``sigmoid(z)``.
    """

    def __init__(self, spec: TaskSpec) -> None:
        super().__init__()
        self.kind = spec.kind
        low, high = spec.label_range if spec.label_range is not None else (-1.0, 1.0)
        self.low, self.high = float(low), float(high)
        if spec.kind == "classification":
            self.scale = nn.Parameter(torch.empty(()))
            self.bias = nn.Parameter(torch.empty(()))

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cos = nn.functional.cosine_similarity(u.float(), v.float(), dim=-1, eps=1e-8)
        if self.kind == "regression":
            return (self.low + (cos + 1.0) * 0.5 * (self.high - self.low)).unsqueeze(-1)
        z = self.scale * cos + self.bias
        return torch.stack([torch.zeros_like(z), z], dim=-1)


def pair_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Siamese pair features ``[u, v, |u - v|, u * v]`` (Reimers & Gurevych 2019)."""
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
