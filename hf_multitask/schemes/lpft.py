"""LP-FT (Kumar et al. 2022): linear probing (heads only, encoder frozen), then full fine-tuning."""

from __future__ import annotations

import logging
from typing import Any

import datasets

from ..trainer import MultitaskTrainer, MultitaskTrainingArguments

logger = logging.getLogger(__name__)


def linear_probe(
    model: Any, train_dataset: dict[str, datasets.Dataset], args: MultitaskTrainingArguments, **trainer_kwargs: Any
) -> dict[str, int]:
    """Phase one of LP-FT: train only the task heads (the encoder is frozen) with ``args``
    (its own learning rate and length, e.g. lr 1e-3), then give every parameter back the
    ``requires_grad`` it had before, so phase two — fine-tuning — trains what the model trained
    before the probe (everything, or only what ``set_trainable`` chose: LoRA, PALs, heads).
    Tasks whose heads have no parameters (the cosine pair head) are left out of the probe.
    Returns the parameter counts of the probing phase."""
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    counts = model.set_trainable("heads")
    try:
        # a task whose head has no parameters (the cosine pair head) has nothing to probe
        probed = {t: d for t, d in train_dataset.items() if any(p.requires_grad for p in model.task_parameters(t))}
        skipped = sorted(set(train_dataset) - set(probed))
        if skipped:
            logger.info("linear probing: tasks %s have parameter-free heads and are left out of the probing phase", skipped)
        if probed:
            MultitaskTrainer(model=model, args=args, train_dataset=probed, **trainer_kwargs).train()
    finally:
        for name, p in model.named_parameters():
            p.requires_grad = before[name]
    return counts
