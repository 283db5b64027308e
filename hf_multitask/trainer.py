"""`MultitaskTrainer`: a `transformers.Trainer` whose training step performs gradient surgery.

Per optimizer step, for every task batch of every micro-batch: one forward, one
``torch.autograd.grad`` (no ``retain_graph``, no ``.grad`` juggling) whose shared-parameter
part lands in row ``t`` of a preallocated ``(T, P)`` fp32 buffer and whose head part lands in
the head section of the same flat buffer. On the last micro-batch of the accumulation window
the buffer is all-reduced once (DDP), the aggregator turns the active rows into one update,
and the update is written into ``.grad`` for the Trainer's clipping, unscaling and
``optimizer.step()``. Task heads get their own task's gradient untouched.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .checkpoints import (
    SURGERY_STATE_NAME,
    CheckpointError,
    atomic_torch_save,
    latest_complete_checkpoint,
    load_surgery_state,
    verify_checkpoint,
    write_marker,
)
from .mixing import SCHEDULE_NAMES, MultitaskStepSampler, make_train_dataloader
from .predict import evaluate as evaluate_tasks
from .surgery import AGGREGATORS, Aggregator, get_aggregator
from .telemetry import ConflictTelemetryCallback, conflict_metrics

logger = logging.getLogger(__name__)

__all__ = ["MultitaskTrainer", "MultitaskTrainingArguments"]


@dataclass
class MultitaskTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the multitask knobs.

    ``per_device_train_batch_size`` is the batch size of *each task* in a step.
    """

    aggregator: str = field(
        default="pcgrad", metadata={"help": "Gradient aggregator: sum, mean, pcgrad, weighted_pcgrad, gradvac, cagrad, aligned_mtl"}
    )
    aggregator_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the aggregator (dict or JSON string)"}
    )
    surgery_seed: int | None = field(default=None, metadata={"help": "Seed of the projection order (defaults to --seed)"})
    schedule: str = field(
        default="round_robin",
        metadata={"help": "Task schedule: round_robin, proportional, annealed, temperature, uniform, staggered, gradient_compromise"},
    )
    schedule_kwargs: dict | str | None = field(default=None, metadata={"help": "Keyword arguments of the schedule (dict or JSON string)"})
    schedule_epochs: int | None = field(
        default=None, metadata={"help": "E of the annealed schedules (default: num_train_epochs, or the epochs max_steps spans)"}
    )
    task_batch_sizes: dict | str | None = field(default=None, metadata={"help": "Per-task batch sizes (dict or JSON string)"})
    length_grouping: bool = field(default=True, metadata={"help": "Batch examples of similar length together (less padding, faster steps)"})
    telemetry_steps: int = field(default=0, metadata={"help": "Log gradient-conflict telemetry every N optimizer steps (0: off)"})
    resume_without_surgery_state: bool = field(
        default=False,
        metadata={"help": "Accept resuming from a checkpoint without multitask_state.pt (surgery state and task counters restart)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("aggregator_kwargs", "schedule_kwargs", "task_batch_sizes"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, json.loads(value) if value.strip() else None)
                except json.JSONDecodeError as err:
                    raise ValueError(f"--{name}: not valid JSON ({err}): {value!r}") from None
        if self.telemetry_steps < 0:
            raise ValueError(f"telemetry_steps must be >= 0, got {self.telemetry_steps}")
        # names are checked here, before any data or model is built
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"--aggregator: unknown aggregator {self.aggregator!r}; choose from {sorted(AGGREGATORS)}")
        try:
            get_aggregator(self.aggregator, **(self.aggregator_kwargs or {}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"--aggregator_kwargs {self.aggregator_kwargs} do not fit aggregator {self.aggregator!r}: {err}") from None
        if self.schedule not in SCHEDULE_NAMES:
            raise ValueError(f"--schedule: unknown schedule {self.schedule!r}; choose from {list(SCHEDULE_NAMES)}")
        # per-task sub-batches are nested dicts: never drop their columns
        self.remove_unused_columns = False


def example_lengths(dataset: datasets.Dataset) -> list[int]:
    """Token count of every example (both sides for siamese pairs)."""
    lengths = [len(x) for x in dataset["input_ids"]]
    if "input_ids_b" in dataset.column_names:
        lengths = [a + len(b) for a, b in zip(lengths, dataset["input_ids_b"])]
    return lengths


class _SurgeryBuffers:
    """The flat fp32 buffer ``[T x P_shared | P_heads | T counts]`` and views into it."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.tasks: list[str] = list(model.task_names)
        self.index = {t: i for i, t in enumerate(self.tasks)}
        self.shared = [p for p in model.shared_parameters() if p.requires_grad]
        self.heads = {t: [p for p in model.task_parameters(t) if p.requires_grad] for t in self.tasks}
        t_count = len(self.tasks)
        self.p_shared = sum(p.numel() for p in self.shared)
        p_heads = sum(p.numel() for ps in self.heads.values() for p in ps)
        self.flat = torch.zeros(t_count * self.p_shared + p_heads + t_count, dtype=torch.float32, device=device)
        self.matrix = self.flat[: t_count * self.p_shared].view(t_count, self.p_shared)
        head_flat = self.flat[t_count * self.p_shared : t_count * self.p_shared + p_heads]
        self.counts = self.flat[t_count * self.p_shared + p_heads :]
        self.update = torch.zeros(self.p_shared, dtype=torch.float32, device=device)
        # a row is "fresh" at the start of an optimizer step: its first gradient is copied in,
        # later micro-batches add, so the buffer never needs a separate zeroing pass
        self.fresh = [True] * t_count
        self.row_views = {t: self._views(self.matrix[self.index[t]], self.shared) for t in self.tasks}
        self.update_views = self._views(self.update, self.shared)
        self.head_views: dict[str, list[torch.Tensor]] = {}
        offset = 0
        for t in self.tasks:
            n = sum(p.numel() for p in self.heads[t])
            self.head_views[t] = self._views(head_flat[offset : offset + n], self.heads[t])
            offset += n

    @staticmethod
    def _views(flat: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
        views, offset = [], 0
        for p in params:
            views.append(flat[offset : offset + p.numel()].view(p.shape))
            offset += p.numel()
        return views

    def nbytes(self) -> int:
        return self.flat.numel() * 4 + self.update.numel() * 4


class _AfterOptimizerStep(TrainerCallback):
    def __init__(self, trainer: MultitaskTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.optimizer_step_done()


class MultitaskTrainer(Trainer):
    """A `Trainer` for :class:`~hf_multitask.MultitaskModel` with gradient surgery.

    Args:
        model: A :class:`~hf_multitask.MultitaskModel` (or anything with ``task_names``,
            ``shared_parameters()``, ``task_parameters(task)`` and ``forward(task=..., **batch)``
            returning ``loss``).
        args: :class:`MultitaskTrainingArguments`.
        train_dataset: ``{task: encoded dataset}`` (see :func:`~hf_multitask.encode_task`).
        eval_dataset: ``{task: encoded dataset}`` with labels; evaluation reports each task's
            metric, ``{task}_score`` and ``overall``.
        aggregator: An :class:`~hf_multitask.surgery.Aggregator` instance; by default built
            from ``args.aggregator`` / ``args.aggregator_kwargs``.
        loss_hook: Optional ``hook(model, task, batch, output) -> loss`` that replaces each task's
            loss before its gradient is taken (e.g. :class:`~hf_multitask.schemes.SmartRegularizer`);
            an ``update_ema(model)`` method on it is called after every optimizer step.
        Other keyword arguments go to ``transformers.Trainer``.

    Mixed precision: bf16 autocast (no scaler; a step whose gradients are not finite is
    skipped); fp16 with a GradScaler: per-task gradients stay loss-scaled (every aggregator
    is positively homogeneous), the Trainer unscales the result once, and inf/NaN reach
    ``.grad`` so the scaler skips the step. Gradient accumulation: per-task gradients add up
    over micro-batches and surgery runs once per optimizer step. DDP: the model's forward is
    called on the unwrapped module, and the flat buffer is all-reduced once per step.
    """

    def __init__(
        self,
        model: nn.Module,
        args: MultitaskTrainingArguments,
        train_dataset: dict[str, datasets.Dataset] | None = None,
        eval_dataset: dict[str, datasets.Dataset] | None = None,
        aggregator: Aggregator | None = None,
        loss_hook: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, MultitaskTrainingArguments):
            raise TypeError("MultitaskTrainer needs MultitaskTrainingArguments")
        for name, value in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if value is not None:
                if not isinstance(value, dict):
                    raise TypeError(f"{name} must be a dict {{task: dataset}}, got {type(value).__name__}")
                unknown = [t for t in value if t not in model.task_names]
                if unknown:
                    raise KeyError(f"{name} names unknown task(s) {unknown}; the model knows {model.task_names}")
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
        seed = args.seed if args.surgery_seed is None else args.surgery_seed
        self.aggregator = (
            aggregator if aggregator is not None else get_aggregator(args.aggregator, seed=seed, **(args.aggregator_kwargs or {}))
        )
        self.telemetry: ConflictTelemetryCallback | None = None
        if args.telemetry_steps > 0:
            self.telemetry = ConflictTelemetryCallback(args.telemetry_steps)
            self.add_callback(self.telemetry)
        self.loss_hook = loss_hook
        if getattr(loss_hook, "update_ema", None) is not None:
            self.add_callback(_AfterOptimizerStep(self))
        self._buffers: _SurgeryBuffers | None = None
        self.last_predictions: dict[str, Any] = {}
        self.task_steps: dict[str, int] = {t: 0 for t in model.task_names}
        self.examples_seen: dict[str, int] = {t: 0 for t in model.task_names}
        self.skipped_steps = 0

    # ------------------------------------------------------------------ data
    def _pad_token_id(self) -> int:
        pad = getattr(self.processing_class, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.model.config.encoder_config, "pad_token_id", None)
        return int(pad or 0)

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("MultitaskTrainer: training requires train_dataset={task: dataset}")
        sizes = {t: len(d) for t, d in self.train_dataset.items()}
        batch = self.args.per_device_train_batch_size
        batch_sizes = {t: int((self.args.task_batch_sizes or {}).get(t, batch)) for t in sizes}
        unknown = [t for t in (self.args.task_batch_sizes or {}) if t not in sizes]
        if unknown:
            raise KeyError(f"task_batch_sizes names task(s) {unknown} with no training data; tasks are {list(sizes)}")

        lengths = {t: example_lengths(d) for t, d in self.train_dataset.items()} if self.args.length_grouping else None

        def build(num_epochs: int) -> MultitaskStepSampler:
            return MultitaskStepSampler(
                sizes,
                batch_sizes,
                schedule=self.args.schedule,
                schedule_kwargs=self.args.schedule_kwargs,
                num_epochs=num_epochs,
                seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
                rank=self.args.process_index,
                world_size=self.args.world_size,
                lengths=lengths,
                accumulation=self.args.gradient_accumulation_steps,
            )

        if self.args.schedule_epochs is not None:
            sampler = build(self.args.schedule_epochs)
        else:
            sampler = build(max(1, math.ceil(self.args.num_train_epochs)))
            if self.args.max_steps > 0:
                micro_steps = self.args.max_steps * self.args.gradient_accumulation_steps
                sampler = build(max(1, math.ceil(micro_steps / len(sampler))))
        return make_train_dataloader(self.train_dataset, sampler, self._pad_token_id(), num_workers=self.args.dataloader_num_workers)

    # ------------------------------------------------------------------ the step
    def _get_buffers(self, core: nn.Module) -> _SurgeryBuffers:
        if self._buffers is None:
            self._buffers = _SurgeryBuffers(core, self.args.device)
        return self._buffers

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        model.train()
        core = self.accelerator.unwrap_model(model)
        buffers = self._get_buffers(core)
        inputs = self._prepare_inputs(inputs)
        scaler = getattr(self.accelerator, "scaler", None)
        accumulation = max(1, int(getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)))
        total = torch.zeros((), device=self.args.device)
        for task, batch in inputs.items():
            if task not in buffers.index:
                raise KeyError(f"Batch for unknown task {task!r}; the model knows {buffers.tasks}")
            weight = batch.get("loss_weight")
            batch = {k: v for k, v in batch.items() if k not in ("task", "loss_weight")}
            with self.accelerator.autocast():
                output = core(task=task, **batch)
                loss = output.loss
                if self.loss_hook is not None and loss is not None:
                    loss = self.loss_hook(core, task, batch, output)
            if loss is None:
                raise ValueError(f"Task {task!r}: the batch has no labels, so there is no loss to train on")
            if scaler is None and not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Task {task!r} gave a non-finite loss ({loss.item()}) at step {self.state.global_step}: "
                    "check the learning rate, the labels and the data"
                )
            scaled = loss / accumulation if weight is None else loss * weight / accumulation
            if scaler is not None:
                scaled = scaler.scale(scaled)
            params = buffers.shared + buffers.heads[task]
            grads = torch.autograd.grad(scaled, params, allow_unused=True)
            row = buffers.index[task]
            targets = buffers.row_views[task] + buffers.head_views[task]
            pairs = [(v, g.float() if g.dtype != torch.float32 else g) for v, g in zip(targets, grads) if g is not None]
            if buffers.fresh[row]:
                unused = [v for v, g in zip(targets, grads) if g is None]
                if unused:
                    torch._foreach_zero_(unused)
                if pairs:
                    torch._foreach_copy_([v for v, _ in pairs], [g for _, g in pairs])
                buffers.fresh[row] = False
            elif pairs:
                torch._foreach_add_([v for v, _ in pairs], [g for _, g in pairs])
            first = batch.get("input_ids")
            buffers.counts[row] += float(first.shape[0]) if first is not None else 1.0
            total += loss.detach().float()
        if self.accelerator.sync_gradients:
            self._apply_surgery(core, buffers, scaler)
        return total / accumulation

    def optimizer_step_done(self) -> None:
        """Called after each optimizer step (EMA teachers of loss hooks follow the model)."""
        update = getattr(self.loss_hook, "update_ema", None)
        if update is not None:
            update(self.accelerator.unwrap_model(self.model))

    def _apply_surgery(self, core: nn.Module, buffers: _SurgeryBuffers, scaler: Any) -> None:
        if self.args.world_size > 1:
            reduced = self.accelerator.reduce(buffers.flat, reduction="mean")
            if reduced.data_ptr() != buffers.flat.data_ptr():
                buffers.flat.copy_(reduced)
            buffers.counts.mul_(self.args.world_size)
        active = [i for i in range(len(buffers.tasks)) if buffers.counts[i] > 0]
        if not active:
            raise RuntimeError("An optimizer step with no task batches")
        names = [buffers.tasks[i] for i in active]
        if active[-1] - active[0] + 1 == len(active):
            rows = buffers.matrix[active[0] : active[-1] + 1]  # a view (one-task steps included): no copy
        else:
            rows = buffers.matrix[active]
        self.aggregator(rows, counts=buffers.counts[active].double().cpu(), tasks=names, out=buffers.update)
        finite = bool(torch.isfinite(self.aggregator.last_info["gram"]).all())
        if not finite and scaler is None:
            self.skipped_steps += 1
            logger.warning("Skipping step %d: non-finite gradients (tasks %s)", self.state.global_step, names)
            for p in buffers.shared + [p for ps in buffers.heads.values() for p in ps]:
                p.grad = None
        else:
            for p, view in zip(buffers.shared, buffers.update_views):
                p.grad = view if p.dtype == torch.float32 else view.to(p.dtype)
            for t in names:
                for p, view in zip(buffers.heads[t], buffers.head_views[t]):
                    p.grad = view.clone() if p.dtype == torch.float32 else view.to(p.dtype)
            for t, i in zip(names, active):
                self.task_steps[t] += 1
                self.examples_seen[t] += int(round(float(buffers.counts[i])))
        step = self.state.global_step + 1
        if self.telemetry is not None and self.telemetry.is_due(step):
            grad_scale = float(scaler.get_scale()) if scaler is not None else 1.0
            self.telemetry.record(step, conflict_metrics(self.aggregator.last_info, grad_scale))
        # rows of tasks absent from a step keep stale values: they are never read, since a
        # row only counts when its task's sample count (zeroed here) is positive
        buffers.counts.zero_()
        buffers.fresh = [True] * len(buffers.tasks)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.telemetry is not None and not any(k.startswith("eval_") for k in logs):
            logs = {**logs, **self.telemetry.pop_pending()}
        super().log(logs, *args, **kwargs)

    # ------------------------------------------------------------------ evaluation
    def evaluate(
        self, eval_dataset: dict[str, datasets.Dataset] | None = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Each task's metric, ``{task}_score`` and ``overall`` on the evaluation sets.

        The predictions behind them stay in ``self.last_predictions`` (``{task: TaskPredictions}``).
        """
        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        if not data:
            raise ValueError("MultitaskTrainer.evaluate needs eval_dataset={task: dataset}")
        core = self.accelerator.unwrap_model(self.model)
        self.last_predictions = {}
        results = evaluate_tasks(
            core,
            data,
            pad_token_id=self._pad_token_id(),
            batch_size=self.args.per_device_eval_batch_size,
            progress=not self.args.disable_tqdm,
            predictions=self.last_predictions,
        )
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in results.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def _multitask_state(self) -> dict[str, Any]:
        return {
            "aggregator": self.aggregator.state_dict(),
            "task_steps": dict(self.task_steps),
            "examples_seen": dict(self.examples_seen),
            "skipped_steps": self.skipped_steps,
            "loss_hook": self.loss_hook.state_dict() if hasattr(self.loss_hook, "state_dict") else None,
        }

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Write the checkpoint so that a kill at any moment leaves a complete one on disk.

        Order: the surgery state, then everything ``transformers`` saves (rotation held
        back), then the completion marker (see :mod:`hf_multitask.checkpoints`), and only
        then the rotation of older checkpoints.
        """
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            if os.path.isdir(folder):  # a partial leftover of a killed run, or a step written again after a resume
                shutil.rmtree(folder)
            os.makedirs(folder, exist_ok=True)
            atomic_torch_save(self._multitask_state(), os.path.join(folder, SURGERY_STATE_NAME))
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            write_marker(folder, self.state.global_step)
            rotate_checkpoints(run_dir, save_total_limit=limit, best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def resolve_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """The checkpoint folder to resume from, verified complete and intact.

        ``True`` takes the newest complete checkpoint of ``output_dir`` (partial folders of a
        killed run are skipped, with a log line saying so). Raises :class:`CheckpointError`
        for a partial, truncated or surgery-state-less checkpoint (the last one is accepted
        with ``resume_without_surgery_state``).
        """
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        if resume_from_checkpoint is True:
            found, skipped = latest_complete_checkpoint(self.args.output_dir)
            partial = f"; incomplete folders skipped: {[p.name for p in skipped]}" if skipped else ""
            if found is None:
                raise CheckpointError(f"resume_from_checkpoint=True: no complete checkpoint in {self.args.output_dir}{partial}")
            logger.warning("Resuming from %s, the newest complete checkpoint%s", found, partial)
            resume_from_checkpoint = str(found)
        verify_checkpoint(resume_from_checkpoint, require_surgery_state=not self.args.resume_without_surgery_state)
        return str(resume_from_checkpoint)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any):
        """``Trainer.train``; resuming verifies the checkpoint first and restores the surgery state
        (aggregator RNG and state, per-task step and example counters) with it."""
        checkpoint = self.resolve_checkpoint(resume_from_checkpoint)
        if checkpoint is not None:
            state = load_surgery_state(checkpoint)
            if state is None:
                logger.warning("%s has no %s: the surgery state and task counters start fresh (as asked)", checkpoint, SURGERY_STATE_NAME)
            else:
                self.aggregator.load_state_dict(state["aggregator"])
                self.task_steps = dict(state["task_steps"])
                self.examples_seen = dict(state["examples_seen"])
                self.skipped_steps = int(state["skipped_steps"])
                if state.get("loss_hook") is not None and hasattr(self.loss_hook, "load_state_dict"):
                    self.loss_hook.load_state_dict(state["loss_hook"])
        return super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)


def surgery_overhead_bytes(trainer: MultitaskTrainer) -> int:
    """Bytes held by the surgery buffers (``(T + 1) x P x 4`` plus heads)."""
    return 0 if trainer._buffers is None else trainer._buffers.nbytes()
