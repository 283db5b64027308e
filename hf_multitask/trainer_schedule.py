"""`MultitaskTrainer`'s data side: the schedule's step loader and the epoch accounting the
Trainer cannot do for schedules whose epochs differ in length (a mixin of [`MultitaskTrainer`][hf_multitask.trainer.MultitaskTrainer])."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from .mixing import MultitaskStepSampler, make_train_dataloader
from .task_types import TaskType
from .transformers_private import initial_value

logger = logging.getLogger("hf_multitask.trainer")


class _ScheduleMixin(Trainer):
    """The train dataloader from the task schedule; exact epochs and resume position."""

    # what the schedule's name promises and the last training run did not get (Schedule.static_note), or None
    schedule_note: str | None = None

    def get_train_dataloader(self):
        if self.train_dataset is None:
            raise ValueError("MultitaskTrainer: training requires train_dataset={task: dataset}")
        sizes = {t: len(d) for t, d in self.train_dataset.items()}
        batch = self.args.per_device_train_batch_size
        batch_sizes = {t: int((self.args.task_batch_sizes or {}).get(t, batch)) for t in sizes}
        unknown = [t for t in (self.args.task_batch_sizes or {}) if t not in sizes]
        if unknown:
            raise KeyError(f"task_batch_sizes names task(s) {unknown} with no training data; tasks are {list(sizes)}")

        core = self.accelerator.unwrap_model(self.model) if self.model is not None else None
        types = {t: core.get_task(t).task_type if core is not None and hasattr(core, "get_task") else None for t in self.train_dataset}
        # each task type counts its examples' tokens (every choice of a multiple-choice example, both sides of a siamese pair)
        lengths = {t: (types[t] or TaskType()).lengths(d) for t, d in self.train_dataset.items()} if self.args.length_grouping else None

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
                sampler = build(sampler.epochs_for_updates(self.args.max_steps))
                if hasattr(sampler.schedule, "total_draws"):  # annealing over the steps ends where the run ends
                    sampler.schedule.total_draws = self.args.max_steps * self.args.gradient_accumulation_steps
        self._train_sampler = sampler
        # annealing in a one-epoch run, say: said, never silent
        self.schedule_note = sampler.schedule.static_note(sampler.num_epochs)
        if self.schedule_note is not None:
            logger.warning(
                "--schedule %s over %d epoch(s): %s. Train more epochs (--num_train_epochs or --schedule_epochs)%s, or name the "
                "schedule you get", self.args.schedule, sampler.num_epochs, self.schedule_note,
                ", or anneal over the steps with --schedule_kwargs '{\"anneal\": \"steps\"}'" if self.args.schedule == "annealed" else "",
            )  # fmt: skip
        args = self.args
        return make_train_dataloader(
            self.train_dataset,
            sampler,
            self._pad_token_id(),
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory and torch.cuda.is_available(),
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
        )

    def set_initial_training_values(self, args: TrainingArguments, dataloader: Any):
        """``Trainer.set_initial_training_values`` with the exact step count of schedules whose
        epochs differ in length (``staggered``): the Trainer plans every epoch as long as the
        longest, which cut training short and mis-planned the learning-rate schedule."""
        values = list(super().set_initial_training_values(args, dataloader))
        sampler = getattr(self, "_train_sampler", None)
        if sampler is None or not sampler.uneven:
            return tuple(values)
        updates = sampler.updates_per_epoch()
        total_batch = values[initial_value("total_train_batch_size")]
        if args.max_steps > 0:
            max_steps = args.max_steps
            epochs = sampler.epochs_for_updates(max_steps)
        else:
            epochs = max(1, math.ceil(args.num_train_epochs))
            max_steps = sum(updates[:epochs])
        values[initial_value("num_train_epochs")] = epochs
        values[initial_value("num_train_samples")] = max_steps * total_batch
        values[initial_value("max_steps")] = max_steps
        return tuple(values)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        # Private Trainer method (no public hook): on resume it locates the epoch and the batch
        # to continue from as global_step // steps-per-epoch, which is wrong when epochs differ
        # in length. Recompute both from the schedule's real epoch lengths.
        epochs_trained, steps_in_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        sampler = getattr(self, "_train_sampler", None)
        if resume_from_checkpoint is None or sampler is None or not sampler.uneven:
            return epochs_trained, steps_in_epoch
        done, epoch = self.state.global_step, 0
        for updates in sampler.updates_per_epoch(max(num_train_epochs, 1)):
            if done < updates:
                break
            done -= updates
            epoch += 1
        skip = 0 if self.args.ignore_data_skip else done * self.args.gradient_accumulation_steps
        return epoch, skip
