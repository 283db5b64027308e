"""`MultitaskTrainer`'s one-backward step: a loss weighting (RLW, UW, FAMO) trains on one weighted
sum of the task losses per micro-batch, with no per-task gradients (a mixin of
[`MultitaskTrainer`][hf_multitask.trainer.MultitaskTrainer]).

The summed and mean losses take this step too ([`SummedLoss`][hf_multitask.trainer_loss_weighting.SummedLoss]): their update is the
gradient of ``sum_i L_i`` (or its ``1/T``), which one backward gives without the ``(T, P)``
per-task buffer and Gram matrix the surgery engine would build and never use. Only a step that
records conflict telemetry (``telemetry_steps``) takes the per-task path, to measure the rows."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from .surgery import Mean
from .surgery.loss_weighting import LossWeighting

logger = logging.getLogger("hf_multitask.trainer")


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
        `hf_multitask.surgery.loss_weighting` for the call order).

        Under DDP each task's loss on a rank is also weighted by that rank's share of the task's
        examples in the micro-batch (``world * n_rank / n_all``, one all-reduce of the counts),
        so the mean over ranks is the pooled-batch gradient: a task missing on a rank, or with
        unequal counts, is not shrunk. One process: no such factor (the numerics are unchanged).
        A step whose gradients are not finite is skipped without a GradScaler (bf16, fp32,
        fp16 on the CPU), as on the per-task path."""
        core = self.accelerator.unwrap_model(model)
        accumulation = self._accumulation(inputs)
        unlabelled = self._without_labels(core, inputs)
        inputs = self._prepare_inputs(inputs) if inputs else inputs
        tasks = self._train_tasks()
        method = method or self.aggregator
        if self._lw_weights is None:
            method.begin_step(tasks)
            self._lw_weights = {}
            self._lw_local = {}
        losses: dict[str, torch.Tensor] = {}
        micro: dict[str, int] = {}
        for task, batch in inputs.items():
            if task not in tasks:
                raise KeyError(f"Batch for task {task!r}, which has no training data here; training tasks are {tasks}")
            if task in unlabelled:
                continue  # partial labels: no label of this task in the batch
            losses[task] = self._task_loss(core, task, batch)
            first = batch.get("input_ids")
            micro[task] = micro.get(task, 0) + (int(first.shape[0]) if first is not None else 1)
        names = list(losses)
        values = torch.stack([v.detach().double() for v in losses.values()]) if names else torch.zeros(0, dtype=torch.float64)
        shares: list[float] | None = None
        if self.args.world_size > 1:  # every rank takes part, with or without losses of its own
            local = torch.tensor([float(micro[t]) for t in names], dtype=torch.float64)
            pooled, totals = self._pool_over_ranks(tasks, names, values, local)
            if method.uses_losses:
                values = pooled
            shares = [self.args.world_size * n / totals[t] for n, t in zip(local.tolist(), names)]
            for t, n in totals.items():
                self._lw_counts[t] = self._lw_counts.get(t, 0) + int(n)
        else:
            for t, n in micro.items():
                self._lw_counts[t] = self._lw_counts.get(t, 0) + n
        for t, n in micro.items():
            self._lw_local[t] = self._lw_local.get(t, 0) + n
        if names:
            w = method.micro_weights(names, values).tolist()
            self._lw_weights.update(zip(names, w))
            if shares is None:
                total = sum(wi * losses[t] for wi, t in zip(w, names))
            else:
                total = sum(wi * si * losses[t] for wi, si, t in zip(w, shares, names))
            self.accelerator.backward(total / accumulation)
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        return self._finish_one_backward(core, tasks, method)

    def _finish_one_backward(self, core: nn.Module, tasks: list[str], method: LossWeighting) -> torch.Tensor:
        """The last micro-batch of a one-backward step: average the gradients over DDP ranks,
        apply ``mean``'s ``1/T``, skip a non-finite step, and do the step's bookkeeping."""
        if self.args.world_size > 1:  # the forwards ran on the unwrapped module: average the gradients ourselves
            params = [p for p in core.parameters() if p.requires_grad]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            held = torch.tensor([float(p.grad is not None) for p in params], device=self.args.device)
            flat = self.accelerator.reduce(torch.cat([g.reshape(-1).float() for g in grads] + [held]), reduction="mean")
            offset = 0
            for p, present in zip(params, flat[-len(params) :].tolist()):
                # a parameter no rank gave a gradient (an absent task's head) stays without one, as in one process
                p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype) if present > 0 else None
                offset += p.numel()
        if type(self.aggregator) is Mean and self._lw_weights:  # the mean loss: 1/T of the summed gradient, heads included
            share = 1.0 / len(self._lw_weights)
            for p in core.parameters():
                if p.grad is not None:
                    p.grad.mul_(share)
            self._lw_weights = dict.fromkeys(self._lw_weights, share)
        step_losses = self._check_finite_losses()
        finite = self._gradients_finite(core)
        names = list(step_losses)
        if method is self.aggregator:  # a weighting observes the step's losses pooled over the ranks
            values = torch.stack([step_losses[t].double() for t in names]) if names else torch.zeros(0, dtype=torch.float64)
            if self.args.world_size > 1:
                local = torch.tensor([float(self._lw_local[t]) for t in names], dtype=torch.float64)
                values = self._pool_over_ranks(tasks, names, values, local)[0]
            if names and finite and bool(torch.isfinite(values).all()):  # observed once the optimizer step is known to have happened
                self._pending_observe = (names, values)
        if finite:
            self._pending_step = dict(self._lw_counts)
        objective = torch.zeros((), device=self.args.device)
        for t, loss in step_losses.items():
            objective = objective + self._lw_weights[t] * loss
            self._task_loss_log.setdefault(t, []).append(loss)
            if method is self.aggregator:  # a weighting's own weights (sum and mean have none to report)
                self._task_weight_log.setdefault(t, []).append(self._lw_weights[t])
        self._lw_weights, self._lw_counts, self._lw_local = None, {}, {}
        self._step_losses, self._step_loss_batches = {}, {}
        return objective

    def _gradients_finite(self, core: nn.Module) -> bool:
        """Whether this step's gradients are finite; if not, and no GradScaler will skip the step,
        clear them so the optimizer leaves the weights alone (the step is counted as skipped).
        One max-norm over the gradients and one host sync per step; under DDP the gradients are
        the same on every rank, so every rank decides the same."""
        if getattr(self.accelerator, "scaler", None) is not None:
            return True  # the scaler sees the inf/NaN and skips the step itself
        grads = [p.grad for p in core.parameters() if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=float("inf"))).all()):
            return True
        for p in core.parameters():
            p.grad = None
        self.skipped_steps += 1
        logger.warning("Skipping step %d: non-finite gradients", self.state.global_step)
        return False

    def _pool_over_ranks(
        self, tasks: list[str], names: list[str], values: torch.Tensor, counts: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One all-reduce: each task's ``values`` (one per name) averaged over the DDP ranks
        weighted by ``counts`` (the pooled-batch mean for per-example means), and every task's
        count summed over the ranks (``{task: n}`` for the tasks some rank has)."""
        idx = [tasks.index(t) for t in names]
        buf = torch.zeros(2, len(tasks), dtype=torch.float64, device=self.args.device)
        buf[0, idx] = (values.double() * counts.double()).to(buf)
        buf[1, idx] = counts.double().to(buf)
        buf = self.accelerator.reduce(buf, reduction="sum").cpu()
        totals = {t: float(buf[1, i]) for i, t in enumerate(tasks) if buf[1, i] > 0}
        return buf[0, idx] / buf[1, idx], totals
