"""LP-FT (Kumar et al. 2022): linear probing (heads only, encoder frozen), then full fine-tuning."""

from __future__ import annotations

from typing import Any

import datasets

from ..trainer import MultitaskTrainer, MultitaskTrainingArguments


def linear_probe(
    model: Any, train_dataset: dict[str, datasets.Dataset], args: MultitaskTrainingArguments, **trainer_kwargs: Any
) -> dict[str, int]:
    """Phase one of LP-FT: train only the task heads (the encoder is frozen) with ``args``
    (its own learning rate and length, e.g. lr 1e-3), then unfreeze everything so phase two
    — ordinary fine-tuning — can start. Returns the parameter counts of the probing phase."""
    counts = model.set_trainable("heads")
    try:
        MultitaskTrainer(model=model, args=args, train_dataset=train_dataset, **trainer_kwargs).train()
    finally:
        model.set_trainable("all")
    return counts
