"""`MultitaskTrainer`'s checkpoints: the surgery state written first, the completion marker last,
rotation after it; resume only from a complete, intact checkpoint (a mixin of [`MultitaskTrainer`][hf_multitask.trainer.MultitaskTrainer])."""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .checkpoints import (
    SURGERY_STATE_NAME,
    CheckpointError,
    atomic_torch_save,
    latest_complete_checkpoint,
    load_surgery_state,
    verify_checkpoint,
    write_marker,
)
from .transformers_private import rotate_checkpoints

logger = logging.getLogger("hf_multitask.trainer")


class _CheckpointMixin(Trainer):
    """Crash-safe checkpoint writing and verified resume."""

    # ------------------------------------------------------------------ checkpoints
    def _multitask_state(self) -> dict[str, Any]:
        return {
            "aggregator": self.aggregator.state_dict(),
            "task_steps": dict(self.task_steps),
            "examples_seen": dict(self.examples_seen),
            "skipped_steps": self.skipped_steps,
            "loss_hook": self.loss_hook.state_dict() if hasattr(self.loss_hook, "state_dict") else None,
            "plan": json.dumps(self._plan_fingerprint()),
        }

    def _plan_fingerprint(self) -> dict[str, Any]:
        """What decides which examples each step holds: the tasks' training sizes and batch sizes,
        the schedule and its settings, accumulation, the number of ranks, the data seed and
        length grouping. A resumed run must have the same, or it would continue another plan.
        (The number of epochs may change: a resumed run may train longer.)"""
        args, data = self.args, self.train_dataset or {}
        sizes = (args.task_batch_sizes or {}) if isinstance(data, dict) else {}
        return {
            "task_sizes": {t: len(d) for t, d in data.items()} if isinstance(data, dict) else None,
            "batch_sizes": {t: int(sizes.get(t, args.per_device_train_batch_size)) for t in data} if isinstance(data, dict) else None,
            "schedule": args.schedule,
            "schedule_kwargs": args.schedule_kwargs,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": args.world_size,
            "data_seed": args.data_seed if args.data_seed is not None else args.seed,
            "length_grouping": args.length_grouping,
        }

    def _check_plan(self, checkpoint: str, state: dict[str, Any]) -> None:
        """Refuse to resume a checkpoint whose run planned its steps otherwise (checkpoints written
        before the plan was recorded are taken as they are, with a log line)."""
        if "plan" not in state:
            logger.warning("%s does not record its run's data and schedule: they are assumed unchanged", checkpoint)
            return
        saved, now = json.loads(state["plan"]), self._plan_fingerprint()
        changed = [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in now.items() if saved.get(key) != value]
        if changed:
            raise CheckpointError(
                f"{checkpoint} was written by a run with other data or schedule ({'; '.join(changed)}): resuming would "
                "continue another run's plan. Resume with the same data and settings, or start afresh (another output "
                "folder, or --overwrite_output_dir true)"
            )

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Write the checkpoint so that a kill at any moment leaves a complete one on disk.

        Order: the surgery state, then everything ``transformers`` saves (rotation held
        back), then the completion marker (see [`hf_multitask.checkpoints`][hf_multitask.checkpoints]), and only
        then the rotation of older checkpoints. Every rank writes files of its own (its RNG
        state, its optimizer shard), so the ranks meet after the main process has prepared the
        folder and again before it records the files' sizes in the marker: without the second
        meeting the marker could record a file another rank was still writing.
        """
        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            if os.path.isdir(folder):  # a partial leftover of a killed run, or a step written again after a resume
                shutil.rmtree(folder)
            os.makedirs(folder, exist_ok=True)
            atomic_torch_save(self._multitask_state(), os.path.join(folder, SURGERY_STATE_NAME))
        self.accelerator.wait_for_everyone()  # the folder is ready (a leftover removed) before any rank writes into it
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank's files are written before their sizes are recorded
        if self.args.should_save:
            write_marker(folder, self.state.global_step)
            rotate_checkpoints(run_dir, save_total_limit=limit, best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def resolve_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | None:
        """The checkpoint folder to resume from, verified complete and intact.

        ``True`` takes the newest complete checkpoint of ``output_dir`` (partial folders of a
        killed run are skipped, with a log line saying so). Raises [`CheckpointError`][hf_multitask.checkpoints.CheckpointError]
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
        (aggregator RNG and state, per-task step and example counters) with it. Counters start
        at zero for each call that does not resume; surgery buffers are built afresh (the model
        may be a new one from ``model_init``)."""
        checkpoint = self.resolve_checkpoint(resume_from_checkpoint)
        self._engine = None
        self._reset_counters()
        if checkpoint is not None:
            state = load_surgery_state(checkpoint)
            if state is None:
                logger.warning("%s has no %s: the surgery state and task counters start fresh (as asked)", checkpoint, SURGERY_STATE_NAME)
            else:
                self._check_plan(checkpoint, state)
                self.aggregator.load_state_dict(state["aggregator"])
                self.task_steps = dict(state["task_steps"])
                self.examples_seen = dict(state["examples_seen"])
                self.skipped_steps = int(state["skipped_steps"])
                if state.get("loss_hook") is not None and hasattr(self.loss_hook, "load_state_dict"):
                    self.loss_hook.load_state_dict(state["loss_hook"])
        return super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)
