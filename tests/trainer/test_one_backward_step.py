"""The one-backward step of sum, mean and the loss weightings (issue 51): which methods take it, and
non-finite gradients on it. Its DDP pooling is in ``test_ddp.py``."""

import pytest
import torch
from conftest import deterministic_model, toy_encoded, train_args

import hf_multitask as hm
from hf_multitask.surgery import Sum


class _PoisonAtStep:
    """A loss hook that adds ``sqrt(|w - w.detach()|)`` over ``parameter`` (of the model) at optimizer
    step ``step``: the loss is unchanged and finite, the gradient of ``w`` is NaN (d sqrt(x) at 0)."""

    def __init__(self, parameter: str, step: int) -> None:
        self.parameter, self.step, self.trainer = parameter, step, None

    def __call__(self, model, task, batch, output):
        if self.trainer.state.global_step != self.step:
            return output.loss
        w = dict(model.named_parameters())[self.parameter]
        return output.loss + torch.sqrt((w - w.detach()).abs()).sum()


def _trainer(tmp_path, tokenizer, hook=None, **overrides):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model)
    args = train_args(tmp_path / "out", logging_steps=1, **overrides)
    trainer = hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, loss_hook=hook)
    if hook is not None:
        hook.trainer = trainer
    return trainer


@pytest.mark.parametrize(
    "aggregator, telemetry_steps, parameter",
    [
        ("sum", 0, "encoder.embeddings.word_embeddings.weight"),  # the one-backward path
        ("mean", 0, "encoder.embeddings.word_embeddings.weight"),
        ("uw", 0, "encoder.embeddings.word_embeddings.weight"),  # a loss weighting: the same step
        ("sum", 1, "encoder.embeddings.word_embeddings.weight"),  # the per-task path
        ("pcgrad", 0, "heads.sst.net.1.weight"),  # a NaN in one head's gradient only (the shared Gram stays finite)
    ],
)
def test_a_step_with_non_finite_gradients_is_skipped_and_training_goes_on(tmp_path, tokenizer, aggregator, telemetry_steps, parameter):
    """Issue 51: a finite loss whose gradient is NaN (no GradScaler: fp32 here, bf16 alike) skips that
    optimizer step and nothing else: no NaN reaches the weights, the other steps train, the step is
    counted as skipped and its examples are not counted as seen."""
    hook = _PoisonAtStep(parameter, step=1)
    trainer = _trainer(tmp_path, tokenizer, hook, aggregator=aggregator, telemetry_steps=telemetry_steps, max_steps=3)
    assert parameter in dict(trainer.model.named_parameters())
    assert (trainer._summed is not None) == (aggregator in ("sum", "mean")), "the step strategy under test"
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    params = dict(trainer.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values()), "NaN reached the weights"
    assert trainer.skipped_steps == 1
    assert trainer.task_steps == {"sst": 2, "quora": 2, "sts": 2}
    assert not torch.equal(before[parameter], params[parameter]), "the finite steps trained"


def test_sum_and_mean_one_backward_skips_exactly_the_non_finite_step(tmp_path, tokenizer):
    """The skipped step leaves the weights as they were: a run poisoned at its last step ends with the
    weights of the same run stopped one step earlier (and the optimizer steps before it untouched)."""
    poisoned = _trainer(tmp_path / "a", tokenizer, _PoisonAtStep("encoder.embeddings.word_embeddings.weight", step=2),
                        aggregator="sum", max_steps=3, lr_scheduler_type="constant")  # fmt: skip
    poisoned.train()
    clean = _trainer(tmp_path / "b", tokenizer, aggregator="sum", max_steps=2, lr_scheduler_type="constant")
    clean.train()
    assert poisoned.skipped_steps == 1 and clean.skipped_steps == 0
    for (name, p), (_, q) in zip(poisoned.model.named_parameters(), clean.model.named_parameters()):
        assert torch.equal(p, q), name


class _HalfSum(Sum):
    """A subclass of Sum with its own weighting: every task's gradient at half weight."""

    name = "half_sum"

    def weights(self, gram, counts, tasks):
        return torch.full((gram.shape[0],), 0.5, dtype=torch.float64)


def test_a_subclass_of_sum_with_its_own_weights_is_trained_with_them(tmp_path, tokenizer):
    """Issue 51: the one-backward path is chosen for sum and mean by their exact class; a subclass
    that weights the rows its own way goes through the per-task path and trains with its weights
    (with SGD and no clipping, half weights give exactly half the plain sum's first update)."""
    settings = dict(optim="sgd", max_grad_norm=0.0, max_steps=1, learning_rate=0.1, lr_scheduler_type="constant")
    model = deterministic_model()
    half = hm.MultitaskTrainer(model=model, args=train_args(tmp_path / "half", aggregator="sum", **settings),
                               train_dataset=toy_encoded(tokenizer, model), processing_class=tokenizer, aggregator=_HalfSum())  # fmt: skip
    full = _trainer(tmp_path / "full", tokenizer, aggregator="sum", **settings)
    start = {n: p.detach().clone() for n, p in full.model.named_parameters()}
    half.train()
    full.train()
    shared = "encoder.embeddings.word_embeddings.weight"
    step_half = dict(half.model.named_parameters())[shared] - start[shared]
    step_full = dict(full.model.named_parameters())[shared] - start[shared]
    assert step_full.abs().max() > 1e-4
    torch.testing.assert_close(step_half, 0.5 * step_full, rtol=1e-4, atol=1e-7)
    assert half._summed is None and full._summed is not None, "a Sum subclass takes the per-task path, sum itself one backward"
