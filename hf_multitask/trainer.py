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

import logging
from typing import Any

import datasets
import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from .encoding import TEACHER_COLUMN
from .fsdp import fsdp2_wrap_classes, gather_full_model
from .lr_groups import learning_rate_factors, split_param_groups
from .mixing import WINDOW_KEY
from .surgery import Aggregator, LossWeighting, Mean, Sum, get_aggregator
from .surgery.engine import GradientEngine, ReplicatedEngine, ShardedEngine, ddp_collectives, trainable_signature
from .tasks import member_tasks, metric_groups
from .telemetry import ConflictTelemetryCallback, conflict_metrics
from .trainer_checkpoints import _CheckpointMixin
from .trainer_evaluation import _EvaluationMixin
from .trainer_loss_weighting import SummedLoss, _LossWeightingMixin
from .trainer_schedule import _ScheduleMixin
from .training_args import MultitaskTrainingArguments, aggregator_kwargs

logger = logging.getLogger(__name__)

__all__ = ["MultitaskTrainer", "MultitaskTrainingArguments"]


class _AfterOptimizerStep(TrainerCallback):
    def __init__(self, trainer: MultitaskTrainer) -> None:
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.optimizer_step_done()


class MultitaskTrainer(_LossWeightingMixin, _ScheduleMixin, _EvaluationMixin, _CheckpointMixin, Trainer):
    """A `Trainer` for [`MultitaskModel`][hf_multitask.modeling.MultitaskModel] with gradient surgery.

    Args:
        model: A [`MultitaskModel`][hf_multitask.modeling.MultitaskModel] (or anything with ``task_names``,
            ``shared_parameters()``, ``task_parameters(task)`` and ``forward(task=..., **batch)``
            returning ``loss``); or ``None`` with ``model_init`` (hyperparameter search).
        args: [`MultitaskTrainingArguments`][hf_multitask.training_args.MultitaskTrainingArguments].
        train_dataset: ``{task: encoded dataset}`` (see [`encode_task()`][hf_multitask.encoding.encode_task]).
        eval_dataset: ``{task: encoded dataset}`` with labels; evaluation reports each task's
            metric and loss, ``{task}_score``, ``overall`` and ``loss`` (the summed task losses).
        aggregator: An [`Aggregator`][hf_multitask.surgery.base.Aggregator] instance; by default built
            from ``args.aggregator`` / ``args.aggregator_kwargs``.
        loss_hook: Optional ``hook(model, task, batch, output) -> loss`` that replaces each task's
            loss before its gradient is taken (e.g. [`SmartRegularizer`][hf_multitask.schemes.smart.SmartRegularizer]);
            an ``update_ema(model)`` method on it is called after every optimizer step, and its
            ``state_dict()`` / ``load_state_dict()`` (if any) go into checkpoints.
        **kwargs: Go to ``transformers.Trainer`` (``compute_loss_func`` is refused: the task
            heads compute the losses; use ``loss_hook``).

    Mixed precision: bf16 autocast (no scaler; a step whose gradients are not finite is
    skipped); fp16 with a GradScaler: per-task gradients stay loss-scaled (every aggregator
    is positively homogeneous), the Trainer unscales the result once, and inf/NaN reach
    ``.grad`` so the scaler skips the step (and the step is not counted). Gradient
    accumulation: per-task gradients add up over micro-batches and surgery runs once per
    optimizer step. DDP: the model's forward is called on the unwrapped module, and the flat
    buffer is all-reduced once per step, each task's rows weighted by its sample counts.
    FSDP2: the sharded engine (see `hf_multitask.surgery.engine`). DeepSpeed, FSDP version 1
    and ``nn.DataParallel`` are refused with a clear error.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: MultitaskTrainingArguments | None = None,
        train_dataset: dict[str, datasets.Dataset] | None = None,
        eval_dataset: dict[str, datasets.Dataset] | None = None,
        aggregator: Aggregator | LossWeighting | None = None,
        loss_hook: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, MultitaskTrainingArguments):
            raise TypeError("MultitaskTrainer needs MultitaskTrainingArguments")
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError(
                "compute_loss_func is not supported by MultitaskTrainer: each task's head computes its loss; "
                "pass loss_hook=fn(model, task, batch, output) -> loss to change it"
            )
        for name, value in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict {{task: dataset}}, got {type(value).__name__}")
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)
        self._refuse_parallelism()
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None) if self._fsdp2() else None
        if plugin is not None:
            fsdp2_wrap_classes(plugin, self.model)
        for name, value in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            unknown = [t for t in (value or {}) if t not in self.model.task_names]
            if unknown:
                raise KeyError(f"{name} names unknown task(s) {unknown}; the model knows {self.model.task_names}")
        specs = [self.model.get_task(t) for t in self.model.task_names]
        groups = metric_groups(specs)
        unknown = [t for t in args.primary_tasks or [] if t not in self.model.task_names and t not in groups]
        if unknown:
            known = self.model.task_names + [f"{g} (group)" for g in groups]
            raise ValueError(f"--primary_tasks names unknown task(s) {unknown}; the model knows {known}")
        seed = args.seed if args.surgery_seed is None else args.surgery_seed
        self.aggregator = aggregator if aggregator is not None else get_aggregator(args.aggregator, seed=seed, **aggregator_kwargs(args))
        if getattr(self.aggregator, "uses_primary", False):
            # a primary metric group is served through its member tasks' gradients
            self.aggregator.primary = member_tasks(self.aggregator.primary, specs)
            unknown = [t for t in self.aggregator.primary if t not in self.model.task_names]
            if unknown:  # a step holds no row of an unknown name: the method would sum every row, silently
                raise ValueError(f"aggregator {self.aggregator.name!r}: primary task(s) {unknown} are not the model's tasks "
                                 f"{self.model.task_names}")  # fmt: skip
        if (
            args.activation_checkpointing
            and (args.activation_checkpointing_kwargs or {}).get("use_reentrant")
            and not isinstance(self.aggregator, LossWeighting)
        ):
            raise ValueError(
                f"--activation_checkpointing_kwargs use_reentrant=True does not work with aggregator {self.aggregator.name!r}: "
                "its per-task gradients come from torch.autograd.grad, which torch's reentrant checkpointing refuses. "
                "Leave use_reentrant out (the default is False: same memory saving, same update)"
            )
        # sum and mean need no per-task gradient: one backward of the summed loss, except on telemetry steps (one
        # process, or DDP for sum; the sharded engine's FSDP2 path keeps the per-task step). Chosen by the exact class:
        # a subclass may weight the rows its own way, which only the per-task path applies
        kind = type(self.aggregator)
        self._summed = (SummedLoss(0) if kind in (Sum, Mean) and not self._fsdp2()
                        and not (kind is Mean and args.world_size > 1) else None)  # fmt: skip
        self.telemetry: ConflictTelemetryCallback | None = None
        if args.telemetry_steps > 0:
            self.telemetry = ConflictTelemetryCallback(args.telemetry_steps)
            self.add_callback(self.telemetry)
        self.loss_hook = loss_hook
        self.add_callback(_AfterOptimizerStep(self))
        self._engine: GradientEngine | None = None
        self.last_predictions: dict[str, Any] = {}
        self._evaluations = {}  # weights digest -> (metrics, predictions): evaluations reused by evaluate()
        self._reset_counters()

    def _refuse_parallelism(self) -> None:
        """Set-ups whose gradients the per-task ``autograd.grad`` path cannot collect correctly."""
        if getattr(self, "is_deepspeed_enabled", False):
            raise ValueError(
                "MultitaskTrainer does not support DeepSpeed: the engine only updates weights through its own backward, "
                "which per-task gradient surgery bypasses, so training would silently not learn. Use DDP "
                "(accelerate launch --multi_gpu, or torchrun) on one machine or several."
            )
        if getattr(self, "is_fsdp_enabled", False) and not self._fsdp2():
            raise ValueError(
                "MultitaskTrainer does not support FSDP version 1: its flattened parameters hide the per-task gradients. "
                "Use FSDP2 (accelerate's fsdp_version: 2; the sharded surgery engine) or DDP."
            )
        if self.args.fsdp and not getattr(self, "is_fsdp_enabled", False):
            raise ValueError(
                f"--fsdp {self.args.fsdp!r} was given but accelerate did not enable FSDP (it does not on CPU, or without a "
                "distributed launch): training would silently run without sharding. Drop --fsdp, or launch FSDP2 on GPUs."
            )
        if self.args.n_gpu > 1:
            raise ValueError(
                f"{self.args.n_gpu} GPUs in one process would run nn.DataParallel, whose per-task gradients stay on one "
                "GPU. Launch one process per GPU instead: accelerate launch --multi_gpu, or torchrun --nproc_per_node."
            )

    def gathered_model(self) -> nn.Module | None:
        """The trained model with full weights, to save or evaluate outside the trainer.

        Without FSDP2 this is the unwrapped model itself. Under FSDP2 its parameters are shards;
        this all-gathers them (call it on every rank) and returns a plain CPU copy on the main
        process, ``None`` on the others.
        """
        core = self.accelerator.unwrap_model(self.model)
        if not self._fsdp2():
            return core
        return gather_full_model(core, self.accelerator.is_main_process)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; under FSDP2 the full weights are gathered and saved with
        ``save_pretrained`` whatever the plugin's ``state_dict_type`` (transformers writes nothing
        here for ``SHARDED_STATE_DICT``), so the folder always loads with ``from_pretrained``.
        Checkpoints keep accelerate's sharded layout for resuming."""
        if not self._fsdp2() or _internal_call:
            return super().save_model(output_dir, _internal_call=_internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        full = self.gathered_model()
        if full is not None and self.args.should_save:
            full.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _fsdp2(self) -> bool:
        plugin = getattr(getattr(self.accelerator, "state", None), "fsdp_plugin", None)
        return bool(getattr(self, "is_fsdp_enabled", False)) and getattr(plugin, "fsdp_version", 1) == 2

    def _reset_counters(self) -> None:
        names = list(self.model.task_names) if self.model is not None else []
        self.task_steps: dict[str, int] = {t: 0 for t in names}
        self.examples_seen: dict[str, int] = {t: 0 for t in names}
        self.skipped_steps = 0
        self._pending_step: dict[str, int] | None = None  # counts of the step awaiting optimizer.step()
        self._pending_observe: tuple[list[str], torch.Tensor] | None = None  # a loss weighting's step losses, likewise
        self._task_loss_log: dict[str, list[float]] = {}
        self._task_weight_log: dict[str, list[float]] = {}  # loss weightings: each step's w_i, logged as weight/{task}
        self._step_losses: dict[str, torch.Tensor] = {}
        self._step_loss_batches: dict[str, int] = {}
        self._lw_weights: dict[str, float] | None = None  # loss-weighting methods: this step's weights
        self._lw_counts: dict[str, int] = {}  # examples per task in the step, all ranks
        self._lw_local: dict[str, int] = {}  # the same on this rank

    # ------------------------------------------------------------------ data
    def _pad_token_id(self) -> int:
        pad = getattr(self.processing_class, "pad_token_id", None)
        if pad is None:
            pad = getattr(self.model.config.encoder_config, "pad_token_id", None)
        return int(pad or 0)

    def _train_tasks(self) -> list[str]:
        names = self.model.task_names
        return [t for t in names if t in (self.train_dataset or {})] or list(names)

    # ------------------------------------------------------------------ the step
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The stock optimizer, its groups split by learning rate when ``head_learning_rate`` or
        ``layer_lr_decay`` asks for it (see `hf_multitask.lr_groups`)."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        args = self.args
        if fresh and (args.head_learning_rate is not None or args.layer_lr_decay != 1.0):
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise ValueError(
                    f"--head_learning_rate / --layer_lr_decay need a torch.optim.Optimizer; --optim {args.optim} built {type(optimizer).__name__}"
                )
            core = self.accelerator.unwrap_model(self.model if model is None else model)
            split_param_groups(optimizer, learning_rate_factors(core, args.learning_rate, args.head_learning_rate, args.layer_lr_decay))
        return optimizer

    def _get_engine(self, core: nn.Module) -> GradientEngine:
        """The gradient engine for this launch: sharded under FSDP2, replicated otherwise (DDP
        reduces with an all-reduce or, with ``ddp_surgery="reduce_scatter"``, a reduce-scatter).
        Rebuilt when the trainable parameters change."""
        if self._engine is None or self._engine.signature != trainable_signature(core):
            tasks = self._train_tasks()
            if self._fsdp2():
                collectives = ddp_collectives()
                self._engine = ShardedEngine(core, tasks, all_reduce=collectives[0])
            elif self.args.world_size > 1:
                self._engine = ReplicatedEngine(core, tasks, self.args.device, reduce=ddp_collectives(), mode=self.args.ddp_surgery)
            else:
                self._engine = ReplicatedEngine(core, tasks, self.args.device)
        return self._engine

    def _accumulation(self, inputs: dict[str, Any]) -> int:
        """Micro-batches the losses of this window are divided by (pops the padding marker)."""
        window = inputs.pop(WINDOW_KEY, None)  # real micro-batches of a padded last window (uneven epochs)
        accumulation = int(window) if window else int(getattr(self, "current_gradient_accumulation_steps", 0) or 0)
        return max(1, accumulation or self.args.gradient_accumulation_steps)

    @staticmethod
    def _without_labels(core: nn.Module, inputs: dict[str, Any]) -> set[str]:
        """Partial labels: the tasks whose batch holds only the type's missing-label marker.
        Called on the collated host tensors, before ``_prepare_inputs`` moves them: the check
        costs no device synchronisation per task batch."""
        if not hasattr(core, "get_task"):
            return set()
        empty = set()
        for task, batch in inputs.items():
            labels = batch.get("labels") if isinstance(batch, dict) else None
            if labels is not None:
                spec = core.get_task(task)
                if not spec.task_type.has_labels(spec, labels):
                    empty.add(task)
        return empty

    def _task_loss(self, core: nn.Module, task: str, batch: dict[str, Any]) -> torch.Tensor:
        """One task batch's loss (with the schedule's loss weight and the loss hook), and its bookkeeping."""
        weight, teacher = batch.get("loss_weight"), batch.get(TEACHER_COLUMN)
        batch = {k: v for k, v in batch.items() if k not in ("task", "loss_weight", TEACHER_COLUMN)}
        with self.accelerator.autocast():
            if teacher is None or batch.get("labels") is None:
                output = core(task=task, **batch)
            else:  # distillation: the task's type mixes gold and teacher (hf_multitask.distillation)
                labels = batch.pop("labels")
                output = core(task=task, **batch)
                spec = core.get_task(task)
                output.loss = spec.task_type.distillation_loss(spec, output.logits, labels, teacher, self.gold_weight(),
                                                               self.args.distillation_temperature)  # fmt: skip
                batch["labels"] = labels
            loss = output.loss
            if self.loss_hook is not None and loss is not None:
                loss = self.loss_hook(core, task, batch, output)
        if loss is None:
            raise ValueError(f"Task {task!r}: the batch has no labels, so there is no loss to train on")
        if weight is not None:
            loss = loss * weight
        detached = loss.detach().float()
        self._step_losses[task] = self._step_losses[task] + detached if task in self._step_losses else detached
        self._step_loss_batches[task] = self._step_loss_batches.get(task, 0) + 1
        return loss

    def gold_weight(self) -> float:
        """Distillation's gold weight lambda for the current optimizer step: the fixed
        ``distillation_gold_weight``, or teacher annealing (Clark et al. 2019, BAM!), lambda =
        t / (T - 1) at step t of T (0 at the first step, 1 at the last; a run of one step is
        its last: 1)."""
        if self.args.distillation_gold_weight is not None:
            return float(self.args.distillation_gold_weight)
        if self.state.max_steps <= 1:
            return 1.0
        return min(1.0, self.state.global_step / (self.state.max_steps - 1))

    def _check_finite_losses(self) -> dict[str, torch.Tensor]:
        losses = {t: self._step_losses[t] / self._step_loss_batches[t] for t in self._step_losses}
        if getattr(self.accelerator, "scaler", None) is None and losses:
            stacked = torch.stack(list(losses.values()))
            if not bool(torch.isfinite(stacked).all()):  # one host sync per step, not one per task batch
                bad = next(t for t, v in losses.items() if not bool(torch.isfinite(v)))
                raise FloatingPointError(
                    f"Task {bad!r} gave a non-finite loss ({float(losses[bad])}) at step {self.state.global_step}: "
                    "check the learning rate, the labels and the data"
                )
        return losses

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()  # schedule-free optimizers
        return self._method_step(model, inputs)

    def _method_step(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """The step strategy: one weighted backward (a loss weighting; sum and mean unless the
        step records telemetry), or per-task gradients and surgery."""
        if isinstance(self.aggregator, LossWeighting):
            return self._loss_weighting_step(model, inputs)
        if self._summed is not None and not (self.telemetry is not None and self.telemetry.is_due(self.state.global_step + 1)):
            return self._loss_weighting_step(model, inputs, self._summed)
        return self._surgery_step(model, inputs)

    def _surgery_step(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """A gradient [`Aggregator`][hf_multitask.surgery.base.Aggregator]: each task's gradient row into
        the engine; on the last micro-batch of the step, the surgery ([`_apply_surgery()`][hf_multitask.trainer.MultitaskTrainer._apply_surgery])."""
        core = self.accelerator.unwrap_model(model)
        engine = self._get_engine(core)
        accumulation = self._accumulation(inputs)
        unlabelled = self._without_labels(core, inputs)
        inputs = self._prepare_inputs(inputs) if inputs else inputs
        scaler = getattr(self.accelerator, "scaler", None)
        for task, batch in inputs.items():
            if task not in engine.index:
                raise KeyError(f"Batch for task {task!r}, which has no training data here; training tasks are {engine.tasks}")
            if task in unlabelled:
                continue  # partial labels: no label of this task in the batch, so no gradient row
            loss = self._task_loss(core, task, batch)
            scaled = loss / accumulation
            if scaler is not None:
                scaled = scaler.scale(scaled)
            first = batch.get("input_ids")
            engine.add(task, scaled, int(first.shape[0]) if first is not None else 1)
        if self.accelerator.sync_gradients:
            return self._apply_surgery(engine, scaler)
        return torch.zeros((), device=self.args.device)

    def optimizer_step_done(self) -> None:
        """After each optimizer step: count the step and let a loss weighting observe its losses
        (unless the GradScaler skipped the step: FAMO's rates of improvement and UW's log-variances
        must follow steps the model took), and let loss hooks with an EMA teacher follow the model."""
        skipped = self.accelerator.optimizer_step_was_skipped
        observed, self._pending_observe = self._pending_observe, None
        if observed is not None and not skipped:
            self.aggregator.observe(*observed)
        pending, self._pending_step = self._pending_step, None
        if pending is not None:
            if skipped:
                self.skipped_steps += 1
            else:
                for t, n in pending.items():
                    self.task_steps[t] = self.task_steps.get(t, 0) + 1
                    self.examples_seen[t] = self.examples_seen.get(t, 0) + n
        update = getattr(self.loss_hook, "update_ema", None)
        if update is not None:
            update(self.accelerator.unwrap_model(self.model))

    def _apply_surgery(self, engine: GradientEngine, scaler: Any) -> torch.Tensor:
        losses = self._check_finite_losses()
        if self.aggregator.uses_step_losses:  # e.g. DB-MTL's log transform
            names = [t for t in engine.tasks if t in losses]
            values = torch.stack([losses[t].double() for t in names]) if names else torch.zeros(0, dtype=torch.float64)
            counts = torch.tensor([engine.host_counts[engine.index[t]] for t in names], dtype=torch.float64)
            if self.args.world_size > 1:
                values = self._pool_over_ranks(self._train_tasks(), names, values, counts)[0]
            self.aggregator.set_step_losses(names, values.tolist())
        step = engine.finish(self.aggregator, scaler_active=scaler is not None)
        if not step.finite and scaler is None:
            self.skipped_steps += 1
            logger.warning("Skipping step %d: non-finite gradients (tasks %s)", self.state.global_step, step.tasks)
        else:
            self._pending_step = {t: int(round(n)) for t, n in zip(step.tasks, step.counts)}
        due = self.state.global_step + 1
        if self.telemetry is not None and self.telemetry.is_due(due):
            grad_scale = float(scaler.get_scale()) if scaler is not None else 1.0
            self.telemetry.record(due, conflict_metrics(step.info, grad_scale))
        # what is optimised: sum_i loss_weight_i * L_i (L_i: task i's mean loss over the step's micro-batches)
        objective = torch.zeros((), device=self.args.device)
        for t, w in zip(step.tasks, step.loss_weights):
            if t in losses:
                objective = objective + w * losses[t]
                self._task_loss_log.setdefault(t, []).append(losses[t])
        self._step_losses, self._step_loss_batches = {}, {}
        return objective

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if not any(k.startswith("eval_") for k in logs):
            if self.telemetry is not None:
                logs = {**logs, **self.telemetry.pop_pending()}
            if "loss" in logs and self._task_loss_log:
                means = {t: float(torch.stack(v).mean()) for t, v in self._task_loss_log.items()}  # one sync per log
                logs = {**logs, **{f"loss/{t}": m for t, m in means.items()}}
                self._task_loss_log = {}
            if "loss" in logs and self._task_weight_log:
                logs = {**logs, **{f"weight/{t}": sum(v) / len(v) for t, v in self._task_weight_log.items()}}
                self._task_weight_log = {}
        super().log(logs, *args, **kwargs)
