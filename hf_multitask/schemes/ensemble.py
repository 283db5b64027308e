"""Ensembles of multitask checkpoints, evaluated and predicted like a single model."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..modeling import MultitaskModel, MultitaskOutput
from ..tasks import TaskSpec


class EnsembleModel(nn.Module):
    """Combine several [`MultitaskModel`][hf_multitask.modeling.MultitaskModel] s that share their tasks.

    Classification: averaged class probabilities (``vote="mean"``, default) or majority vote
    (``vote="majority"``, ties to the lowest class); the returned ``logits`` are log
    probabilities (or vote shares), so ``argmax`` gives the ensemble's class. Regression: the
    mean prediction. Works with [`hf_multitask.predict()`][hf_multitask.predict.predict] / [`hf_multitask.evaluate()`][hf_multitask.predict.evaluate].

    Every member gets the same inputs, so the members must encode every task alike: a task's
    pair encoding (cross, bi, cosine) must be the same in every member, else a ``ValueError``
    names the task (a cross-encoding member fed a bi-encoded pair would score the first
    sentence alone).
    """

    def __init__(self, models: list[MultitaskModel], vote: str = "mean") -> None:
        super().__init__()
        if not models:
            raise ValueError("An ensemble needs at least one model")
        if vote not in ("mean", "majority"):
            raise ValueError(f"vote must be 'mean' or 'majority', got {vote!r}")
        first = models[0].config.task_specs
        for m in models[1:]:  # the same tasks; how each encodes its pairs is checked next, by name
            if [replace(s, pair_encoding=None) for s in m.config.task_specs] != [replace(s, pair_encoding=None) for s in first]:
                raise ValueError("Every ensemble member must have the same tasks (names, kinds, labels)")
        for spec in first:
            encodings = [m.config.task_pair_encoding(m.config.get_task(spec.name)) for m in models]
            if len(set(encodings)) > 1:
                raise ValueError(
                    f"Ensemble members encode task {spec.name!r}'s pairs differently ({encodings}, by member): the inputs are "
                    "encoded once for every member, so they must agree (--pair_encoding / --task_pair_encodings)"
                )
        self.members = nn.ModuleList(models)
        self.vote = vote

    @classmethod
    def from_pretrained(cls, paths: list[str | os.PathLike[str]], vote: str = "mean", **kwargs: Any) -> EnsembleModel:
        return cls([MultitaskModel.from_pretrained(p, **kwargs) for p in paths], vote=vote)

    @property
    def task_names(self) -> list[str]:
        return self.members[0].task_names

    @property
    def config(self):
        return self.members[0].config

    def get_task(self, task: str) -> TaskSpec:
        """The [`TaskSpec`][hf_multitask.tasks.TaskSpec] of ``task`` (the members share their tasks)."""
        return self.config.get_task(task)

    def forward(self, task: str, labels: torch.Tensor | None = None, **inputs: Any) -> MultitaskOutput:
        spec = self.get_task(task)
        outs = [m(task=task, **inputs).logits.float() for m in self.members]
        if spec.task_type.logits_kind == "values":
            logits = torch.stack(outs).mean(0)
        elif self.vote == "mean":
            logits = torch.stack([o.softmax(-1) for o in outs]).mean(0).clamp_min(1e-12).log()
        else:
            votes = torch.stack([o.argmax(-1) for o in outs])  # (members, batch)
            shares = nn.functional.one_hot(votes, spec.num_labels).float().mean(0)
            logits = shares - 1e-6 * torch.arange(spec.num_labels, device=shares.device)  # ties -> lowest class
        loss = MultitaskModel.compute_task_loss(spec, logits, labels) if labels is not None else None
        return MultitaskOutput(loss=loss, logits=logits)
