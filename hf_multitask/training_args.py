"""`MultitaskTrainingArguments`: `transformers.TrainingArguments` plus the multitask knobs.

Every field is honoured by [`MultitaskTrainer`][hf_multitask.trainer.MultitaskTrainer] or refused with a message
that names it: here, when the arguments are built, where the arguments alone tell; otherwise
when the trainer is built (settings that depend on the model or the launch, e.g. DeepSpeed,
FSDP1 or ``n_gpu > 1``). Names of aggregators and schedules are
checked against their registries (`hf_multitask.surgery.AGGREGATORS` and
`LOSS_WEIGHTINGS`, `hf_multitask.mixing.SCHEDULES`) before any data is read or model built.

| field | what |
|---|---|
| ``aggregator``, ``aggregator_kwargs`` | the gradient method (surgery or loss weighting) and its options |
| ``surgery_seed`` | seed of the methods' own randomness (projection order); default ``seed`` |
| ``schedule``, ``schedule_kwargs``, ``schedule_epochs`` | which tasks make up each step |
| ``task_batch_sizes`` | per-task batch sizes (``per_device_train_batch_size`` is each task's otherwise) |
| ``length_grouping`` | batch examples of similar length together |
| ``telemetry_steps`` | gradient-conflict telemetry every N optimizer steps |
| ``ddp_surgery`` | how DDP reduces the per-task rows: ``all_reduce`` or ``reduce_scatter`` |
| ``resume_without_surgery_state`` | accept a checkpoint without ``multitask_state.pt`` |
| ``head_learning_rate``, ``layer_lr_decay`` | learning rates of the task-owned parameters and of the encoder's layers |
| ``primary_tasks`` | the tasks whose score is ``overall``; the primary-aware aggregators serve them |
| ``distillation_gold_weight``, ``distillation_temperature`` | distillation from teachers: the gold label's share of the target (teacher annealing by default) and the teacher's softmax temperature |

Evaluation honours ``bf16_full_eval`` and ``fp16_full_eval`` (it runs under bf16 / fp16 autocast;
the weights stay fp32) and ``per_device_eval_batch_size``. ``eval_accumulation_steps`` needs no
work of its own: every evaluation batch's outputs move to the CPU as soon as it is done (the
tightest setting), whatever its value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from .mixing import SCHEDULES
from .precision import check_bf16_flag
from .surgery import get_aggregator, method_class, method_names

__all__ = ["MultitaskTrainingArguments", "aggregator_kwargs"]

# TrainingArguments that cannot work with per-task surgery steps: refused when the arguments are built
_REFUSED_FIELDS = {
    "auto_find_batch_size": (
        False,
        "each task's batch size comes from per_device_train_batch_size / task_batch_sizes, and a retried step would "
        "reuse half-filled surgery rows; pick the batch sizes yourself",
    ),
    "label_smoothing_factor": (0.0, "each task's head computes its own loss; label smoothing is not implemented there"),
}


def json_flag(value: Any, flag: str) -> Any:
    """A flag that takes JSON on the command line (``--schedule_kwargs '{"ratios": "0:3:1"}'``):
    a string is parsed (an empty one is None), anything else (a YAML config's mapping, a value
    set in Python) is kept; invalid JSON is a ``ValueError`` naming the flag."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value) if value.strip() else None
    except json.JSONDecodeError as err:
        raise ValueError(f"--{flag}: not valid JSON ({err}): {value!r}") from None


@dataclass
class MultitaskTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the multitask knobs.

    ``per_device_train_batch_size`` is the batch size of *each task* in a step.
    """

    aggregator: str = field(
        default="pcgrad",
        metadata={"help": f"Gradient method (surgery or loss weighting), one of the registries': {', '.join(method_names())}"},
    )
    aggregator_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the aggregator (dict or JSON string)"}
    )
    surgery_seed: int | None = field(default=None, metadata={"help": "Seed of the projection order (defaults to --seed)"})
    schedule: str = field(
        default="round_robin",
        metadata={"help": f"Task schedule, one of the registry's: {', '.join(SCHEDULES.names())}"},
    )
    schedule_kwargs: dict | str | None = field(default=None, metadata={"help": "Keyword arguments of the schedule (dict or JSON string)"})
    schedule_epochs: int | None = field(
        default=None, metadata={"help": "E of the annealed schedules (default: num_train_epochs, or the epochs max_steps spans)"}
    )
    task_batch_sizes: dict | str | None = field(default=None, metadata={"help": "Per-task batch sizes (dict or JSON string)"})
    length_grouping: bool = field(default=True, metadata={"help": "Batch examples of similar length together (less padding, faster steps)"})
    telemetry_steps: int = field(default=0, metadata={"help": "Log gradient-conflict telemetry every N optimizer steps (0: off)"})
    ddp_surgery: str = field(
        default="all_reduce",
        metadata={"help": "DDP: all_reduce the (T, P) task rows, or reduce_scatter them and all-gather the update ((T+1)P on the wire)"},
    )
    resume_without_surgery_state: bool = field(
        default=False,
        metadata={"help": "Accept resuming from a checkpoint without multitask_state.pt (surgery state and task counters restart)"},
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the task-owned parameters (heads, PALs, per-task LoRA); default --learning_rate"},
    )
    primary_tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "The tasks you care about; the others are auxiliary. Their mean validation score is 'overall' (best "
            "checkpoint, early stopping, model card; the mean over all tasks stays as overall_all), and the primary-aware "
            "aggregators (gradsim, pcgrad_primary, metabalance) serve them"
        },  # fmt: skip
    )
    layer_lr_decay: float = field(
        default=1.0,
        metadata={
            "help": "Layer-wise learning-rate decay of the encoder: layer i of L trains at lr * decay**(L - i), "
            "the embeddings at lr * decay**(L + 1); 1 turns it off"
        },  # fmt: skip
    )
    distillation_gold_weight: float | None = field(
        default=None,
        metadata={
            "help": "Distillation (training data with a teacher column, see hf_multitask.distillation): the gold label's weight "
            "lambda in the target lambda * gold + (1 - lambda) * teacher. Default: teacher annealing, lambda rising linearly "
            "from 0 at the first optimizer step to 1 at the last"
        },  # fmt: skip
    )
    distillation_temperature: float = field(
        default=1.0, metadata={"help": "Distillation: temperature T of the teacher's softmax (classes, tags, choices); 1: none"}
    )

    def __post_init__(self) -> None:
        if self.bf16 or self.bf16_full_eval:
            # on a machine without an accelerator --bf16 means CPU autocast (transformers would stop with "Your setup
            # doesn't support bf16/gpu"); a GPU without bf16 is refused by name, never left for the CPU
            if check_bf16_flag("--bf16" if self.bf16 else "--bf16_full_eval", self.use_cpu):
                self.use_cpu = True
        super().__post_init__()
        if self.distillation_gold_weight is not None and not 0.0 <= self.distillation_gold_weight <= 1.0:
            raise ValueError(f"--distillation_gold_weight must be in [0, 1], got {self.distillation_gold_weight}")
        if not self.distillation_temperature > 0:
            raise ValueError(f"--distillation_temperature must be positive, got {self.distillation_temperature}")
        for name in ("aggregator_kwargs", "schedule_kwargs", "task_batch_sizes"):
            setattr(self, name, json_flag(getattr(self, name), name))
        if self.telemetry_steps < 0:
            raise ValueError(f"telemetry_steps must be >= 0, got {self.telemetry_steps}")
        # names are checked here, before any data or model is built
        if self.aggregator not in method_names():
            raise ValueError(f"--aggregator: unknown aggregator {self.aggregator!r}; choose from {method_names()}")
        if isinstance(self.primary_tasks, str):
            self.primary_tasks = [self.primary_tasks]
        if self.primary_tasks is not None and (not self.primary_tasks or len(set(self.primary_tasks)) != len(self.primary_tasks)):
            raise ValueError(f"--primary_tasks must name distinct tasks, got {self.primary_tasks}")
        if method_class(self.aggregator).uses_primary and not self.primary_tasks:
            raise ValueError(f"--aggregator {self.aggregator} serves primary tasks: name them with --primary_tasks")
        try:
            get_aggregator(self.aggregator, **aggregator_kwargs(self))
        except (TypeError, ValueError) as err:
            raise ValueError(f"--aggregator_kwargs {self.aggregator_kwargs} do not fit aggregator {self.aggregator!r}: {err}") from None
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule: unknown schedule {self.schedule!r}; choose from {SCHEDULES.names()}")
        if not 0 < self.layer_lr_decay <= 1:
            raise ValueError(f"--layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        if self.head_learning_rate is not None and not self.head_learning_rate > 0:
            raise ValueError(f"--head_learning_rate must be positive, got {self.head_learning_rate}")
        if self.ddp_surgery not in ("all_reduce", "reduce_scatter"):
            raise ValueError(f"--ddp_surgery must be all_reduce or reduce_scatter, got {self.ddp_surgery!r}")
        for name, (default, why) in _REFUSED_FIELDS.items():
            if getattr(self, name) != default:
                raise ValueError(f"--{name} is not supported by MultitaskTrainer: {why}")
        if self.train_sampling_strategy != "random":
            raise ValueError(
                f"--train_sampling_strategy {self.train_sampling_strategy!r} is not supported by MultitaskTrainer: the "
                "task schedule decides the batches (--schedule); length grouping is --length_grouping"
            )
        if (
            self.aggregator in ("weighted_pcgrad", "pooled_pcgrad")
            and self.gradient_accumulation_steps > 1
            and self.schedule != "round_robin"
        ):
            raise ValueError(
                f"--aggregator {self.aggregator} with --gradient_accumulation_steps > 1 needs --schedule round_robin: its rows "
                "must be each task's per-sample mean gradient over the step, which holds only when every task is in every micro-batch"
            )
        # per-task sub-batches are nested dicts: never drop their columns
        self.remove_unused_columns = False


def aggregator_kwargs(args: MultitaskTrainingArguments) -> dict[str, Any]:
    """The aggregator's keyword arguments: ``aggregator_kwargs``, plus ``primary`` from
    ``primary_tasks`` for the primary-aware methods."""
    kwargs = dict(args.aggregator_kwargs or {})
    if method_class(args.aggregator).uses_primary and args.primary_tasks:
        kwargs.setdefault("primary", list(args.primary_tasks))
    return kwargs
