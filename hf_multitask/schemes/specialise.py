"""Per-task head pretraining and two-step specialisation."""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import nn

from ..routed import RoutedMultitaskModel
from ..trainer import MultitaskTrainer, MultitaskTrainingArguments


def pretrain_heads(
    model: Any,
    train: dict[str, datasets.Dataset],
    validation: dict[str, datasets.Dataset],
    args: MultitaskTrainingArguments,
    **trainer_kwargs: Any,
) -> dict[str, float]:
    """Frozen-encoder head training, run separately for every task.

    For each task a copy of ``model`` trains only that task's head on that task alone, is
    evaluated every ``args.eval_steps`` steps (or epoch, per ``args.eval_strategy``), and the
    head with the best validation score of its own task is loaded back into ``model``. Returns
    each task's best score. The encoder is never changed.
    """
    best: dict[str, float] = {}
    for task in train:
        copy_model = copy.deepcopy(model)
        copy_model.set_trainable("heads")
        for name, p in copy_model.heads.named_parameters():
            p.requires_grad = name.startswith(f"{task}.")
        task_args = replace(
            args,
            output_dir=str(Path(args.output_dir) / f"heads-{task}"),
            load_best_model_at_end=True,
            metric_for_best_model=f"{task}_score",
            greater_is_better=True,
            save_strategy=args.eval_strategy,
            save_steps=args.eval_steps,
            save_total_limit=1,
        )
        trainer = MultitaskTrainer(
            model=copy_model, args=task_args, train_dataset={task: train[task]}, eval_dataset={task: validation[task]}, **trainer_kwargs
        )
        trainer.train()
        best[task] = float(trainer.state.best_metric)
        model.heads[task].load_state_dict(copy_model.heads[task].state_dict())
    return best


def reset_head(head: nn.Module) -> None:
    """Fresh parameters for a head (also on models loaded from a checkpoint)."""
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif hasattr(module, "scale") and isinstance(module.scale, nn.Parameter):
            with torch.no_grad():
                module.scale.fill_(5.0)
                module.bias.zero_()


def specialise(
    model: Any,
    train: dict[str, datasets.Dataset],
    args: MultitaskTrainingArguments,
    *,
    tasks: list[str] | None = None,
    fresh_heads: bool = False,
    save_dir: str | os.PathLike[str] | None = None,
    **trainer_kwargs: Any,
) -> dict[str, Any]:
    """Two-step specialisation: after multitask training, one copy of the model per task
    fine-tuned on that task alone (its head kept or, with ``fresh_heads``, re-initialised).
    Each copy trains the parameters ``model`` trains: the whole model, or only what
    ``set_trainable`` chose (LoRA, PALs, heads). ``model`` itself is not changed.

    Returns ``{task: specialised model}``. With ``save_dir``, each is saved to
    ``save_dir/{task}``, and all of them together as one
    :class:`~hf_multitask.RoutedMultitaskModel` in ``save_dir/routed`` (tasks left out of
    ``tasks`` route to ``model``); every folder loads with ``AutoModel.from_pretrained``.
    Build the routed model in memory with :func:`route`.
    """
    names = tasks or list(train)
    unknown = [t for t in names if t not in train]
    if unknown:
        raise KeyError(f"specialise: no training data for task(s) {unknown}; have {list(train)}")
    out = {}
    for task in names:
        special = copy.deepcopy(model)  # requires_grad comes along: a LoRA, PAL or heads-only run stays one
        if fresh_heads:
            reset_head(special.heads[task])
        task_args = replace(args, output_dir=str(Path(args.output_dir) / f"specialise-{task}"))
        MultitaskTrainer(model=special, args=task_args, train_dataset={task: train[task]}, **trainer_kwargs).train()
        if save_dir is not None:
            special.save_pretrained(Path(save_dir) / task)
        out[task] = special
    if save_dir is not None:
        route(out, model).save_pretrained(Path(save_dir) / "routed")
    return out


def route(specialised: dict[str, Any], multitask: Any | None = None) -> Any:
    """One :class:`~hf_multitask.RoutedMultitaskModel` from :func:`specialise`'s models; tasks
    without a specialised model run ``multitask`` (stored only if some task needs it)."""
    return RoutedMultitaskModel.from_models(specialised, multitask)
