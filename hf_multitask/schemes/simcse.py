"""Unsupervised SimCSE (Gao et al. 2021) pre-finetuning of the shared encoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


def simcse_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """InfoNCE with in-batch negatives: ``-log exp(sim(z1_i, z2_i)/t) / sum_j exp(sim(z1_i, z2_j)/t)``,
    sim the cosine similarity. ``z1`` and ``z2`` are two dropout views of the same sentences."""
    sim = nn.functional.cosine_similarity(z1.float()[:, None, :], z2.float()[None, :, :], dim=-1) / temperature
    return nn.functional.cross_entropy(sim, torch.arange(len(z1), device=z1.device))


def simcse_pretrain(
    model: Any,
    sentences: Sequence[str],
    tokenizer: Any,
    *,
    steps: int = 100,
    batch_size: int = 32,
    learning_rate: float = 3e-5,
    temperature: float = 0.05,
    max_length: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Unsupervised SimCSE on ``sentences``: each sentence is encoded twice with dropout on (the
    only augmentation) and the two views are pulled together against in-batch negatives.

    Trains ``model.encoder`` (the heads are untouched) with AdamW for ``steps`` steps and
    returns the loss of every step. ``sentences`` can be any text file's lines or the task
    datasets' own sentences.
    """
    if len(sentences) < 2:
        raise ValueError("SimCSE needs at least two sentences (in-batch negatives)")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    params = [p for p in model.shared_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    was_training = model.training
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="SimCSE", disable=not progress):
        idx = torch.randperm(len(sentences), generator=gen)[:batch_size].tolist()  # no repeats: no false negatives
        batch = tokenizer([sentences[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        z1 = model.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        z2 = model.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        loss = simcse_loss(z1, z2, temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.train(was_training)
    return losses
