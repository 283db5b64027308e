"""Loss-weighting methods (RLW): one backward of the weighted loss sum, no per-task gradient buffer."""

import torch
from conftest import deterministic_model, toy_encoded, train_args

import hf_multitask as hm
from hf_multitask.surgery import RLW, get_aggregator


def _trainer(tmp_path, tokenizer, **overrides):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=32)
    settings = {"aggregator": "rlw", "length_grouping": False, **overrides}
    return hm.MultitaskTrainer(model=model, args=train_args(tmp_path / "out", **settings), train_dataset=data, processing_class=tokenizer)


def test_rlw_weights_are_a_seeded_softmax_of_normals():
    a, b = RLW(seed=3), RLW(seed=3)
    w = a.step_weights(["x", "y", "z"])
    gen = torch.Generator().manual_seed(3)
    torch.testing.assert_close(w, torch.softmax(torch.randn(3, generator=gen, dtype=torch.float64), 0))
    assert torch.equal(w, b.step_weights(["x", "y", "z"])) and abs(float(w.sum()) - 1) < 1e-12
    assert not torch.equal(a.step_weights(["x", "y", "z"]), w), "a new draw every step"
    assert not RLW.needs_gradients and get_aggregator("rlw").name == "rlw"


def test_rlw_step_is_the_gradient_of_the_weighted_loss_and_allocates_no_buffer(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    reference = deterministic_model()
    trainer.training_step(trainer.model, {t: dict(b) for t, b in batch.items()})
    assert trainer._engine is None, "no (T, P) buffer for a loss weighting"
    w = RLW(seed=0).step_weights(list(batch))
    total = sum(float(wi) * reference(task=t, **b).loss for wi, (t, b) in zip(w, batch.items()))
    total.backward()
    for (name, p), (_, q) in zip(trainer.model.named_parameters(), reference.named_parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


def test_rlw_draws_once_per_optimizer_step_and_trains(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, gradient_accumulation_steps=2, max_steps=3, logging_steps=1)
    trainer.train()
    fresh = RLW(seed=0)
    for _ in range(3):
        fresh.step_weights(["sst", "quora", "sts"])
    assert torch.equal(trainer.aggregator.generator.get_state(), fresh.generator.get_state()), "3 steps, 3 draws"
    assert trainer.task_steps == {"sst": 3, "quora": 3, "sts": 3} and trainer.examples_seen["sst"] == 3 * 2 * 8
    row = next(r for r in trainer.state.log_history if "loss" in r)
    assert "loss/sst" in row and row["loss"] < row["loss/sst"] + row["loss/quora"] + row["loss/sts"]


def test_rlw_resume_restores_the_weight_sequence(tmp_path, tokenizer):
    full = _trainer(tmp_path / "full", tokenizer, max_steps=4)
    full.train()
    _trainer(tmp_path / "part", tokenizer, max_steps=4, save_strategy="steps", save_steps=2).train()
    resumed = _trainer(tmp_path / "part", tokenizer, max_steps=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "out" / "checkpoint-2"))
    for (name, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), name
