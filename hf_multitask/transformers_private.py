"""The private ``transformers`` surface [`MultitaskTrainer`][hf_multitask.trainer.MultitaskTrainer] relies on, in one place.

Each is used only where ``Trainer`` offers no public hook, and ``tests/trainer/test_transformers_surface.py``
pins every one (names, signatures, the order of the tuple we edit), so a transformers release
that moves one fails CI loudly instead of mis-resuming silently.

| private API | what we do with it | why there is no public way |
|---|---|---|
| ``Trainer.set_initial_training_values`` (public name, private tuple) | correct epochs and ``max_steps`` for schedules whose epochs differ in length | the Trainer assumes equal epochs |
| ``Trainer._init_training_state`` | on resume, the epoch and batch to continue from for uneven epochs | same |
| ``Trainer._track_num_input_tokens`` | count tokens of nested per-task batches | it reads a flat batch |
| ``Trainer._prepare_inputs`` | move nested per-task batches to the device | the only device-placement hook |
| ``Trainer._get_output_dir``, ``Trainer._save_checkpoint`` | write the surgery state first and the completion marker last, rotation after it | checkpoint writing has no hook between files |
| ``transformers.trainer_utils.rotate_checkpoints`` | rotate only after the marker is written | not exported at the top level |
| ``Trainer.current_gradient_accumulation_steps`` | the accumulation window of the current step | set by the training loop, not an argument |
| ``PreTrainedModel._set_gradient_checkpointing`` | ``MultitaskModel`` wraps the checkpoint function it hands the layers, so a recomputed layer runs its task's PALs / LoRA | the checkpoint function is chosen inside ``activation_checkpointing_enable`` |
"""

from __future__ import annotations

from transformers.trainer_utils import rotate_checkpoints

__all__ = [
    "INITIAL_TRAINING_VALUES",
    "PRIVATE_MODEL_METHODS",
    "PRIVATE_TRAINER_ATTRIBUTES",
    "PRIVATE_TRAINER_METHODS",
    "initial_value",
    "rotate_checkpoints",
]

# the tuple Trainer.set_initial_training_values returns, in its order
INITIAL_TRAINING_VALUES = ("num_train_epochs", "num_update_steps_per_epoch", "num_examples", "num_train_samples", "total_train_batch_size",
                           "steps_in_epoch", "max_steps")  # fmt: skip

# private methods MultitaskTrainer overrides or calls: name -> parameter names
PRIVATE_TRAINER_METHODS = {
    "_init_training_state": ("self", "max_steps", "num_update_steps_per_epoch", "num_train_epochs", "resume_from_checkpoint", "trial"),
    "_track_num_input_tokens": ("self", "inputs"),
    "_prepare_inputs": ("self", "inputs"),
    "_get_output_dir": ("self", "trial"),
    "_save_checkpoint": ("self", "model", "trial"),
}
PRIVATE_TRAINER_ATTRIBUTES = ("current_gradient_accumulation_steps",)
# private methods of PreTrainedModel that MultitaskModel overrides: name -> parameter names
PRIVATE_MODEL_METHODS = {"_set_gradient_checkpointing": ("self", "enable", "gradient_checkpointing_func", "every_n_layers")}


def initial_value(name: str) -> int:
    """The position of ``name`` in [`INITIAL_TRAINING_VALUES`][hf_multitask.transformers_private.INITIAL_TRAINING_VALUES]."""
    return INITIAL_TRAINING_VALUES.index(name)
