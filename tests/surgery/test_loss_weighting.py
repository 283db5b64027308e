"""Loss-weighting methods (RLW, UW, FAMO) and DB-MTL: formulas, invariances, the trainer step, state and resume."""

import pytest
import torch
from conftest import deterministic_model, toy_encoded, train_args

import hf_multitask as hm
from hf_multitask.surgery import DBMTL, FAMO, RLW, UncertaintyWeighting, get_aggregator


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
    assert get_aggregator("rlw").name == "rlw"


def test_loss_weightings_have_their_own_registry_and_one_flag_names_both_kinds():
    from hf_multitask.surgery import (
        AGGREGATORS,
        LOSS_WEIGHTINGS,
        Aggregator,
        LossWeighting,
        method_names,
        register_aggregator,
        register_loss_weighting,
    )

    assert sorted(LOSS_WEIGHTINGS) == ["famo", "rlw", "uw"] and not set(LOSS_WEIGHTINGS) & set(AGGREGATORS)
    assert set(method_names()) == set(AGGREGATORS) | set(LOSS_WEIGHTINGS)
    assert not isinstance(get_aggregator("famo"), Aggregator) and isinstance(get_aggregator("famo"), LossWeighting)
    with pytest.raises(ValueError, match="choose from") as err:
        get_aggregator("nope")
    assert "famo" in str(err.value) and "pcgrad" in str(err.value)
    with pytest.raises(TypeError, match="register_loss_weighting"):
        register_aggregator(RLW)

    class Clash(LossWeighting):
        name = "pcgrad"

    with pytest.raises(ValueError, match="already a registered aggregator"):
        register_loss_weighting(Clash)
    assert AGGREGATORS["pcgrad"].name == "pcgrad" and "pcgrad" not in LOSS_WEIGHTINGS


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
    draws = [fresh.step_weights(["sst", "quora", "sts"]).tolist() for _ in range(3)]
    assert torch.equal(trainer.aggregator.generator.get_state(), fresh.generator.get_state()), "3 steps, 3 draws"
    assert trainer.task_steps == {"sst": 3, "quora": 3, "sts": 3} and trainer.examples_seen["sst"] == 3 * 2 * 8
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert "loss/sst" in rows[0] and rows[0]["loss"] < rows[0]["loss/sst"] + rows[0]["loss/quora"] + rows[0]["loss/sts"]
    # each step's weights are logged as weight/{task} (logging_steps=1: one step per row)
    logged = [[r[f"weight/{t}"] for t in ("sst", "quora", "sts")] for r in rows]
    assert len(logged) == 3 and all(w == pytest.approx(d, rel=1e-12) for w, d in zip(logged, draws)), (logged, draws)


@pytest.mark.parametrize("method", ["rlw", "uw", "famo", "db_mtl"])
def test_resume_restores_the_method_state(tmp_path, tokenizer, method):
    full = _trainer(tmp_path / "full", tokenizer, max_steps=4, aggregator=method)
    full.train()
    _trainer(tmp_path / "part", tokenizer, max_steps=4, save_strategy="steps", save_steps=2, aggregator=method).train()
    resumed = _trainer(tmp_path / "part", tokenizer, max_steps=4, aggregator=method)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "out" / "checkpoint-2"))
    for (name, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), name


# --------------------------------------------------------------------------- UW
def test_uw_weights_are_exp_minus_s_and_s_moves_towards_log_loss():
    uw = UncertaintyWeighting(lr=0.1)
    uw.begin_step(["a", "b"])
    torch.testing.assert_close(
        uw.micro_weights(["a", "b"], torch.tensor([2.0, 0.5], dtype=torch.float64)), torch.ones(2, dtype=torch.float64)
    )
    for _ in range(400):
        uw.begin_step(["a", "b"])
        uw.observe(["a", "b"], torch.tensor([2.0, 0.5], dtype=torch.float64))
    # fixed point of dL/ds = 1 - exp(-s) L: s = log L, weights 1 / L
    torch.testing.assert_close(uw.param, torch.log(torch.tensor([2.0, 0.5], dtype=torch.float64)), atol=0.02, rtol=0)
    torch.testing.assert_close(uw.step_weights(["b", "a"]), torch.tensor([2.0, 0.5], dtype=torch.float64), rtol=0.03, atol=0)


def test_uw_first_update_is_one_adam_step_on_the_papers_gradient():
    uw = UncertaintyWeighting(lr=0.01)
    uw.begin_step(["a", "b"])
    uw.observe(["a", "b"], torch.tensor([3.0, 0.2], dtype=torch.float64))
    # Adam's first step moves every coordinate by lr * sign(grad); grad = 1 - L at s = 0
    torch.testing.assert_close(uw.param, torch.tensor([0.01, -0.01], dtype=torch.float64), atol=1e-9, rtol=0)


# --------------------------------------------------------------------------- FAMO
def test_famo_loss_weights_follow_the_formula_and_ignore_the_loss_scale():
    famo = FAMO()
    famo.begin_step(["a", "b", "c"])
    famo.param = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    w = famo.micro_weights(["a", "b", "c"], losses)
    z = torch.softmax(famo.param, 0)
    d = losses + famo.eps
    expected = (z / d) / (z / d).sum()
    torch.testing.assert_close(w, expected)
    assert abs(float(w.sum()) - 1) < 1e-12
    torch.testing.assert_close(famo.micro_weights(["a", "b", "c"], 10 * losses), w, rtol=1e-7, atol=0)
    # the weighted gradient equals the gradient of sum_i z_i log L_i / c
    x = losses.clone().requires_grad_()
    (z * x.log()).sum().div((z / losses).sum()).backward()
    torch.testing.assert_close(x.grad, w, rtol=1e-6, atol=0)


def test_famo_one_task_micro_batches_keep_their_weights():
    """Under accumulation with one task per micro-batch, c uses the latest loss of the others."""
    famo = FAMO()
    famo.begin_step(["a", "b"])
    famo.param = torch.tensor([0.5, -0.5], dtype=torch.float64)
    both = famo.micro_weights(["a", "b"], torch.tensor([1.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(famo.micro_weights(["b"], torch.tensor([4.0], dtype=torch.float64)), both[1:])
    torch.testing.assert_close(famo.micro_weights(["a"], torch.tensor([1.0], dtype=torch.float64)), both[:1])


def test_famo_logits_move_towards_the_task_that_improves_least():
    famo = FAMO(lr=0.025, gamma=0.0)
    famo.begin_step(["fast", "slow"])
    famo.observe(["fast", "slow"], torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert torch.equal(famo.param, torch.zeros(2, dtype=torch.float64)), "no previous step yet: no update"
    famo.observe(["fast", "slow"], torch.tensor([0.5, 0.99], dtype=torch.float64))
    # delta = (log 2, -log 0.99); J^T delta at z = (1/2, 1/2) is (delta - mean(delta)) / 2; Adam moves by lr * sign
    torch.testing.assert_close(famo.param, torch.tensor([-0.025, 0.025], dtype=torch.float64), atol=1e-7, rtol=0)
    w = famo.step_weights(["fast", "slow"])
    assert w[1] > w[0]


def test_famo_refuses_losses_below_the_bound():
    with pytest.raises(ValueError, match="min_loss"):
        FAMO(min_loss=1.0).micro_weights(["a"], torch.tensor([0.5], dtype=torch.float64))


def test_famo_trainer_step_is_the_gradient_of_the_weighted_loss(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, aggregator="famo")
    trainer.aggregator.begin_step(["sst", "quora", "sts"])
    trainer.aggregator.param = torch.tensor([0.4, -0.1, 0.2], dtype=torch.float64)
    batch = next(iter(trainer.get_train_dataloader()))
    reference = deterministic_model()
    trainer.training_step(trainer.model, {t: dict(b) for t, b in batch.items()})
    assert trainer._engine is None, "no (T, P) buffer for FAMO"
    losses = {t: reference(task=t, **b).loss for t, b in batch.items()}
    z = torch.softmax(torch.tensor([0.4, -0.1, 0.2], dtype=torch.float64), 0)
    d = torch.stack([losses[t].detach().double() for t in ("sst", "quora", "sts")]) + 1e-8
    w = (z / d) / (z / d).sum()
    sum(float(wi) * losses[t] for wi, t in zip(w, ("sst", "quora", "sts"))).backward()
    for (name, p), (_, q) in zip(trainer.model.named_parameters(), reference.named_parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("method", ["uw", "famo"])
def test_steps_the_scaler_skips_leave_the_method_state_alone(tmp_path, tokenizer, monkeypatch, method):
    """An fp16 overflow makes the GradScaler skip the optimizer step: the model did not move, so
    FAMO must not read a rate of improvement from it, nor UW take its log-variance step."""
    trainer = _trainer(tmp_path, tokenizer, aggregator=method, max_steps=3)
    monkeypatch.setattr(type(trainer.accelerator), "optimizer_step_was_skipped", property(lambda self: True))
    trainer.train()
    state = trainer.aggregator.state_dict()
    assert torch.equal(state["param"], torch.zeros(3, dtype=torch.float64)), "the logits / log-variances stayed at their start"
    assert trainer.skipped_steps == 3
    monkeypatch.undo()
    moved = _trainer(tmp_path / "b", tokenizer, aggregator=method, max_steps=3)
    moved.train()
    assert not torch.equal(moved.aggregator.state_dict()["param"], torch.zeros(3, dtype=torch.float64)), "steps taken: the state moves"


def _three_steps(method):
    """``method`` after three optimizer steps on tasks x and y (its state has moved)."""
    for losses in ([1.0, 2.0], [0.8, 1.9], [0.7, 1.5]):
        method.begin_step(["x", "y"])
        method.micro_weights(["x", "y"], torch.tensor(losses, dtype=torch.float64))
        method.observe(["x", "y"], torch.tensor(losses, dtype=torch.float64))
    return method


@pytest.mark.parametrize("method", [UncertaintyWeighting, FAMO])
def test_state_dict_round_trip(method):
    a = _three_steps(method(seed=1))
    b = method(seed=5)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.begin_step(["x", "y"])
        m.observe(["x", "y"], torch.tensor([0.5, 1.4], dtype=torch.float64))
    assert torch.equal(a.param, b.param) and torch.equal(a.step_weights(["x", "y"]), b.step_weights(["x", "y"]))


@pytest.mark.parametrize("method", [UncertaintyWeighting, FAMO])
def test_a_checkpoint_of_the_earlier_hand_written_adam_resumes_the_same_moments(method):
    a = _three_steps(method(seed=1))
    state = a.state_dict()
    moments = state["opt"]["state"][0]
    state["opt"] = {"m": moments["exp_avg"], "v": moments["exp_avg_sq"], "t": int(moments["step"])}  # the old layout
    b = method(seed=5)
    b.load_state_dict(state)
    for m in (a, b):
        m.begin_step(["x", "y"])
        m.observe(["x", "y"], torch.tensor([0.5, 1.4], dtype=torch.float64))
    assert torch.equal(a.param, b.param)


@pytest.mark.parametrize("method", ["rlw", "uw", "famo"])
def test_loss_weightings_train_every_task(tmp_path, tokenizer, method):
    from conftest import train_and_measure

    _, before, after = train_and_measure(deterministic_model(), tokenizer, tmp_path, aggregator=method, max_steps=12, learning_rate=3e-3)
    for task in before:
        assert after[task] < before[task], (method, task, before[task], after[task])


# --------------------------------------------------------------------------- DB-MTL
def test_dbmtl_scales_every_moving_average_to_the_largest_norm():
    g = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    agg = DBMTL()
    d = agg(g, tasks=["a", "b"])
    # first step: the averages are the gradients; alpha = (1, 3 / sqrt 2)
    torch.testing.assert_close(d, g[0] + (3 / 2**0.5) * g[1])
    g2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    d2 = agg(g2, tasks=["a", "b"])
    avg = 0.9 * g + 0.1 * g2
    norms = avg.norm(dim=1)
    torch.testing.assert_close(d2, (norms.max() / norms) @ avg)


def test_dbmtl_is_scale_free_per_task_and_transforms_losses_to_logs():
    g = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    a = DBMTL()(g, tasks=list("abc"))
    b = DBMTL()(g * torch.tensor([[1.0], [100.0], [0.01]]), tasks=list("abc"))
    torch.testing.assert_close(a / a.norm(), b / b.norm(), rtol=1e-5, atol=1e-6)
    # with the step's losses, each row becomes the gradient of log L_i: divided by L_i
    agg = DBMTL()
    agg.set_step_losses(list("abc"), [2.0, 0.5, 4.0])
    c = agg(g, tasks=list("abc"))
    torch.testing.assert_close(c, DBMTL()(g / torch.tensor([[2.0], [0.5], [4.0]]), tasks=list("abc")), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        agg.loss_weights(agg.last_info["weights"]), agg.last_info["weights"] / torch.tensor([2.0, 0.5, 4.0], dtype=torch.float64)
    )


def test_dbmtl_absent_tasks_keep_their_average_and_state_round_trips():
    agg = DBMTL(beta=0.5)
    agg(torch.ones(2, 4), tasks=["a", "b"])
    agg(torch.zeros(1, 4), tasks=["b"])
    assert torch.equal(agg.averages, torch.tensor([[1.0] * 4, [0.5] * 4]))
    other = DBMTL(beta=0.5)
    other.load_state_dict(agg.state_dict())
    g = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(agg(g, tasks=["b", "a"]), other(g, tasks=["b", "a"]))


def test_dbmtl_trainer_backpropagates_log_losses(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, aggregator="db_mtl")
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.training_step(trainer.model, {t: dict(b) for t, b in batch.items()})
    reference = deterministic_model()
    shared = list(reference.shared_parameters())
    rows = []
    for t, b in batch.items():
        grads = torch.autograd.grad(torch.log(reference(task=t, **b).loss), shared, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(shared, grads)]))
    expected = DBMTL()(torch.stack(rows), tasks=list(batch))
    got = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in trainer.model.shared_parameters()])
    # fp32 rows built in another order, then scaled by ratios of their norms (sums over every shared parameter):
    # measured up to 0.40 of a tolerance 10x tighter (avx2 kernels; 0.32 avx512, 0.27 default)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_sharded_engines_refuse_dbmtl():
    from hf_multitask.surgery.engine import _refuse_full_vectors

    with pytest.raises(ValueError, match="db_mtl"):
        _refuse_full_vectors(DBMTL(), "FSDP2")


def test_dbmtl_trains_the_heads_when_no_shared_parameter_trains(tmp_path, tokenizer):
    # issue 54: with an empty shared Gram every weight was 0 and the heads' gradients were multiplied by it
    trainer = _trainer(tmp_path, tokenizer, aggregator="db_mtl")
    trainer.model.set_trainable("heads")
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.training_step(trainer.model, {t: dict(b) for t, b in batch.items()})
    reference = deterministic_model()
    for task, b in batch.items():
        head = list(reference.heads[task].parameters())
        want = torch.autograd.grad(torch.log(reference(task=task, **b).loss), head)  # weight 1 on the gradient of log L
        got = [p.grad for p in trainer.model.heads[task].parameters()]
        assert all(g is not None and float(g.abs().max()) > 0 for g in got), task
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    assert DBMTL().weights(torch.zeros(2, 2), None, ["a", "b"]).tolist() == [1.0, 1.0]
