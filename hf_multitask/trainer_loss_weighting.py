"""`MultitaskTrainer`'s one-backward step: a loss weighting (RLW, UW, FAMO) trains on one weighted
sum of the task losses per micro-batch, with no per-task gradients (a mixin of
[`MultitaskTrainer`][hf_multitask.trainer.MultitaskTrainer]).

The summed and mean losses take this step too ([`SummedLoss`][hf_multitask.trainer_loss_weighting.SummedLoss]): their update is the
gradient of ``sum_i L_i`` (or its ``1/T``), which one backward gives without the ``(T, P)``
per-task buffer and Gram matrix the surgery engine would build and never use. Only a step that
records conflict telemetry (``telemetry_steps``) takes the per-task path, to measure the rows."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .surgery import Mean
from .surgery.loss_weighting import LossWeighting


class SummedLoss(LossWeighting):
    """``sum`` and ``mean`` as a loss weighting: every task's loss has weight 1 (``mean``'s
    ``1/T``, T the tasks of the whole optimizer step, is applied to the step's gradient once
    the step's tasks are known). No state, no randomness."""

    name = "summed_loss"

    def step_weights(self, tasks):
        return torch.ones(len(tasks), dtype=torch.float64)


class _LossWeightingMixin(Trainer):
    """The step of the methods that weight losses instead of gradients."""

    def _loss_weighting_step(self, model: nn.Module, inputs: dict[str, Any], method: LossWeighting | None = None) -> torch.Tensor:
        """A [`LossWeighting`][hf_multitask.surgery.loss_weighting.LossWeighting]: one backward of ``sum_i w_i L_i``
        per micro-batch, no per-task gradient buffer. The method sees the losses averaged over
        DDP ranks, so its weights and state are the same on every rank (see
        `hf_multitask.surgery.loss_weighting` for the call order)."""
        core = self.accelerator.unwrap_model(model)
        accumulation = self._accumulation(inputs)
        unlabelled = self._without_labels(core, inputs)
        inputs = self._prepare_inputs(inputs) if inputs else inputs
        tasks = self._train_tasks()
        method = method or self.aggregator
        if self._lw_weights is None:
            method.begin_step(tasks)
            self._lw_weights = {}
        losses: dict[str, torch.Tensor] = {}
        for task, batch in inputs.items():
            if task not in tasks:
                raise KeyError(f"Batch for task {task!r}, which has no training data here; training tasks are {tasks}")
            if task in unlabelled:
                continue  # partial labels: no label of this task in the batch
            losses[task] = self._task_loss(core, task, batch)
            first = batch.get("input_ids")
            self._lw_counts[task] = self._lw_counts.get(task, 0) + (int(first.shape[0]) if first is not None else 1)
        if losses:
            names = list(losses)
            values = torch.stack([v.detach().double() for v in losses.values()])
            if method.uses_losses:
                values = self._mean_over_ranks(tasks, names, values)
            w = method.micro_weights(names, values).tolist()
            self._lw_weights.update(zip(names, w))
            total = sum(wi * losses[t] for wi, t in zip(w, names))
            self.accelerator.backward(total / accumulation)
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        if self.args.world_size > 1:  # the forwards ran on the unwrapped module: average the gradients ourselves
            params = [p for p in core.parameters() if p.requires_grad]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = self.accelerator.reduce(torch.cat([g.reshape(-1).float() for g in grads]), reduction="mean")
            offset = 0
            for p in params:
                p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype)
                offset += p.numel()
        if isinstance(self.aggregator, Mean) and self._lw_weights:  # the mean loss: 1/T of the summed gradient, heads included
            share = 1.0 / len(self._lw_weights)
            for p in core.parameters():
                if p.grad is not None:
                    p.grad.mul_(share)
            self._lw_weights = dict.fromkeys(self._lw_weights, share)
        step_losses = self._check_finite_losses()
        names = list(step_losses)
        if names:
            values = torch.stack([step_losses[t].double() for t in names])
            if self.args.world_size > 1:
                values = self._mean_over_ranks(tasks, names, values)
            if method is self.aggregator and bool(
                torch.isfinite(values).all()
            ):  # observed once the optimizer step is known to have happened
                self._pending_observe = (names, values)
        counts = {t: n * self.args.world_size for t, n in self._lw_counts.items()}
        self._pending_step = counts
        objective = torch.zeros((), device=self.args.device)
        for t, loss in step_losses.items():
            objective = objective + self._lw_weights[t] * loss
            self._task_loss_log.setdefault(t, []).append(loss)
            if method is self.aggregator:  # a weighting's own weights (sum and mean have none to report)
                self._task_weight_log.setdefault(t, []).append(self._lw_weights[t])
        self._lw_weights, self._lw_counts = None, {}
        self._step_losses, self._step_loss_batches = {}, {}
        return objective

    def _mean_over_ranks(
        self, tasks: list[str], names: list[str], values: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-task mean of ``values`` over the DDP ranks (weighted by ``weights``, e.g. sample
        counts; 1 per rank that has the task when None). The identity in one process."""
        if self.args.world_size <= 1:
            return values
        idx = [tasks.index(t) for t in names]
        w = torch.ones(len(names), dtype=torch.float64) if weights is None else weights.double()
        buf = torch.zeros(2, len(tasks), dtype=torch.float64, device=self.args.device)
        buf[0, idx] = (values.double() * w).to(buf)
        buf[1, idx] = w.to(buf)
        buf = self.accelerator.reduce(buf, reduction="sum")
        return (buf[0, idx] / buf[1, idx]).cpu()
