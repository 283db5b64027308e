"""Task heads: linear / MLP classifiers and regressors, and the cosine pair head."""

from __future__ import annotations

import torch
from torch import nn


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

    Regression (``classifier=False``): ``y = low + (cos(u, v) + 1) / 2 * (high - low)`` (the
    task's ``label_range``; ``cos`` itself without one). Binary classification (``classifier=True``): the logit of the
    positive class is ``z = a * cos(u, v) + b`` with learnable ``a`` (init 5) and ``b``
    (init 0); logits are ``[0, z]`` so softmax gives ``sigmoid(z)``.
    """

    def __init__(self, label_range: tuple[float, float] | None = None, classifier: bool = False) -> None:
        super().__init__()
        self.classifier = bool(classifier)
        low, high = label_range if label_range is not None else (-1.0, 1.0)
        self.low, self.high = float(low), float(high)
        if self.classifier:
            self.scale = nn.Parameter(torch.empty(()))
            self.bias = nn.Parameter(torch.empty(()))

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cos = nn.functional.cosine_similarity(u.float(), v.float(), dim=-1, eps=1e-8)
        if not self.classifier:
            return (self.low + (cos + 1.0) * 0.5 * (self.high - self.low)).unsqueeze(-1)
        z = self.scale * cos + self.bias
        return torch.stack([torch.zeros_like(z), z], dim=-1)


def pair_features(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Siamese pair features ``[u, v, |u - v|, u * v]`` (Reimers & Gurevych 2019)."""
    return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)


class LSTMHead(nn.Module):
    """A bidirectional LSTM over the token states; its final states, concatenated with the
    first ([CLS]) token state, feed an MLP (``hidden_sizes``) / linear output layer.

    ``hidden_sizes[0]`` (default 128) is the LSTM width per direction.
    """

    def __init__(self, hidden: int, out_features: int, hidden_sizes: list[int], dropout: float) -> None:
        super().__init__()
        width = hidden_sizes[0] if hidden_sizes else 128
        self.lstm = nn.LSTM(hidden, width, batch_first=True, bidirectional=True)
        self.out = MLPHead(2 * width + hidden, out_features, list(hidden_sizes[1:]), dropout)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(states.float(), lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        final = torch.cat([h[-2], h[-1]], dim=-1)
        return self.out(torch.cat([final.to(states.dtype), states[:, 0]], dim=-1))


class AdjustmentMatrix(nn.Module):
    """A learned ``C x C`` matrix applied to a classifier's output probabilities (the SST
    adjustment of the published work): ``p' = softmax(z) A`` with ``A`` initialised to the
    identity; returns ``log p'`` so the usual cross-entropy applies (``log_softmax(log p') =
    log p'`` when the rows of A keep p' normalised; otherwise it renormalises)."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.matrix = nn.Parameter(torch.empty(num_labels, num_labels))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(-1) @ self.matrix
        return probs.clamp_min(1e-12).log()
