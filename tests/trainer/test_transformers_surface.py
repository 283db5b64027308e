"""Pins the private transformers surface MultitaskTrainer uses (hf_multitask.transformers_private):
a release that renames, reorders or stops calling one fails here, loudly, instead of mis-resuming."""

import inspect

import pytest
import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments, trainer_utils

from hf_multitask.transformers_private import (
    INITIAL_TRAINING_VALUES,
    PRIVATE_MODEL_METHODS,
    PRIVATE_TRAINER_ATTRIBUTES,
    PRIVATE_TRAINER_METHODS,
)


@pytest.mark.parametrize("name", sorted(PRIVATE_TRAINER_METHODS))
def test_private_trainer_methods_keep_their_signatures(name):
    assert hasattr(Trainer, name), f"transformers.Trainer.{name} is gone"
    assert tuple(inspect.signature(getattr(Trainer, name)).parameters) == PRIVATE_TRAINER_METHODS[name]


def test_the_training_loop_still_calls_what_we_override():
    source = inspect.getsource(Trainer)
    for call in (
        "self._track_num_input_tokens(",
        "self._init_training_state(",
        "self.set_initial_training_values(",
        "self._save_checkpoint(",
    ):
        assert call in source, f"Trainer no longer calls {call}"
    for attribute in PRIVATE_TRAINER_ATTRIBUTES:
        assert f"self.{attribute} =" in source, f"Trainer no longer sets {attribute}"
    assert "_prepare_inputs(" in inspect.getsource(Trainer.training_step)


def test_set_initial_training_values_returns_the_tuple_in_the_order_we_edit(tmp_path):
    """Semantics, not source text: 2 epochs of a 10-batch loader, batch 4, accumulation 2."""
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             use_cpu=True, report_to=[])  # fmt: skip
    trainer = Trainer(model=torch.nn.Linear(2, 2), args=args)
    dataloader = type("Loader", (), {"__len__": lambda self: 10, "dataset": list(range(40))})()
    values = trainer.set_initial_training_values(args, dataloader)
    named = dict(zip(INITIAL_TRAINING_VALUES, values))
    assert len(values) == len(INITIAL_TRAINING_VALUES)
    assert named["num_train_epochs"] == 2 and named["num_update_steps_per_epoch"] == 5 and named["max_steps"] == 10
    assert named["total_train_batch_size"] == 8 and named["steps_in_epoch"] == 10 and named["num_train_samples"] == 80


def test_rotate_checkpoints_keeps_the_keywords_we_pass():
    params = inspect.signature(trainer_utils.rotate_checkpoints).parameters
    assert {"save_total_limit", "best_model_checkpoint", "use_mtime"} <= set(params)


@pytest.mark.parametrize("name", sorted(PRIVATE_MODEL_METHODS))
def test_private_model_methods_keep_their_signatures_and_are_called(name):
    assert hasattr(PreTrainedModel, name), f"transformers.PreTrainedModel.{name} is gone"
    assert tuple(inspect.signature(getattr(PreTrainedModel, name)).parameters) == PRIVATE_MODEL_METHODS[name]
    # activation checkpointing reaches it (what MultitaskModel's override relies on to route recomputed layers)
    entry = getattr(PreTrainedModel, "_activation_checkpointing_enable", PreTrainedModel.gradient_checkpointing_enable)
    assert f"self.{name}(" in inspect.getsource(entry)
