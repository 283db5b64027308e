"""MultitaskTrainer: surgery inside training_step, accumulation, AMP contracts, checkpoints, telemetry."""

import pytest
import torch
from conftest import deterministic_model, task_losses, toy_encoded, train_args

import hf_multitask as hm
from hf_multitask.surgery import get_aggregator


def make_trainer(tmp_path, tokenizer, model=None, **overrides):
    model = model or deterministic_model()
    data = toy_encoded(tokenizer, model)
    args = train_args(tmp_path / "out", logging_steps=1, **overrides)
    return hm.MultitaskTrainer(model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _step_batches(trainer, n):
    loader = trainer.get_train_dataloader()
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_sum_aggregator_equals_plain_summed_loss_backward(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, aggregator="sum")
    batch = _step_batches(trainer, 1)[0]
    reference = deterministic_model()
    total = sum(reference(task=t, **b).loss for t, b in batch.items())
    total.backward()
    trainer.model.train()
    trainer.accelerator.gradient_state._set_sync_gradients(True)
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.training_step(trainer.model, batch)
    assert float(loss) == pytest.approx(float(total.detach()), rel=1e-5)
    for (name, p), (_, q) in zip(trainer.model.named_parameters(), reference.named_parameters()):
        if q.grad is None:
            assert p.grad is None or torch.count_nonzero(p.grad) == 0, name
        else:
            assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), name


def test_pcgrad_step_matches_the_aggregator_on_per_task_gradients(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, aggregator="pcgrad")
    batch = _step_batches(trainer, 1)[0]
    reference = deterministic_model()
    shared = [p for n, p in reference.named_parameters() if not n.startswith("heads.")]
    rows, head_grads = [], {}
    for t, b in batch.items():
        loss = reference(task=t, **b).loss
        grads = torch.autograd.grad(loss, shared + list(reference.heads[t].parameters()), allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads[: len(shared)], shared)]))
        head_grads[t] = grads[len(shared) :]
    expected = get_aggregator("pcgrad", seed=0)(torch.stack(rows), tasks=list(batch))
    trainer.accelerator.gradient_state._set_sync_gradients(True)
    trainer.current_gradient_accumulation_steps = 1
    trainer.training_step(trainer.model, batch)
    got = torch.cat([p.grad.flatten() for n, p in trainer.model.named_parameters() if not n.startswith("heads.")])
    assert torch.allclose(got, expected, atol=1e-6)
    for t, grads in head_grads.items():
        for p, g in zip(trainer.model.heads[t].parameters(), grads):
            assert torch.allclose(p.grad, g, atol=1e-7), "heads keep their own task's gradient"


@pytest.mark.parametrize("aggregator", ["pcgrad", "gradvac"])
def test_gradient_accumulation_equals_one_big_batch(tmp_path, tokenizer, aggregator):
    """SGD without clipping: the step is the gradient times the rate, so a micro-batch loss divided by the
    wrong count fails here (under AdamW and clipping, which ignore a gradient's scale, it did not). The
    two runs sum the examples' gradients in another order: AdamW turned that rounding into weight
    differences of 0.9e-6 (avx2 kernels; 0.7e-6 avx512, 0.4e-6 default) at a tolerance of 1e-6; SGD keeps
    them under 2e-7 on all three."""
    settings = dict(aggregator=aggregator, optim="sgd", max_grad_norm=0.0, learning_rate=0.1, max_steps=2)
    big = make_trainer(tmp_path / "a", tokenizer, per_device_train_batch_size=8, **settings)
    big.train()
    small = make_trainer(tmp_path / "b", tokenizer, per_device_train_batch_size=4, gradient_accumulation_steps=2, **settings)
    small.train()
    for (name, p), (_, q) in zip(big.model.named_parameters(), small.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


@pytest.mark.parametrize("aggregator", ["sum", "mean", "pcgrad", "weighted_pcgrad", "gradvac", "cagrad", "aligned_mtl"])
def test_training_lowers_every_task_loss(tmp_path, tokenizer, aggregator):
    trainer = make_trainer(tmp_path, tokenizer, aggregator=aggregator, max_steps=40, learning_rate=3e-3)
    model, data = trainer.model, trainer.train_dataset
    before = task_losses(model, data, tokenizer.pad_token_id)
    trainer.train()
    after = task_losses(model, data, tokenizer.pad_token_id)
    for t in before:
        assert after[t] < before[t], (aggregator, t, before[t], after[t])


def test_bf16_autocast_training_runs_on_cpu(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, aggregator="pcgrad", bf16=True, max_steps=10, learning_rate=3e-3)
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_fp16_scaler_contract_scaled_grads_and_overflow_skip(tmp_path, tokenizer):
    """fp16 on CPU runs without a scaler, so drive the scaler path with GradScaler('cpu') directly."""
    plain = make_trainer(tmp_path / "a", tokenizer, aggregator="pcgrad")
    scaled = make_trainer(tmp_path / "b", tokenizer, aggregator="pcgrad")
    batch = _step_batches(plain, 1)[0]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaled.accelerator.scaler = scaler
    for tr in (plain, scaled):
        tr.accelerator.gradient_state._set_sync_gradients(True)
        tr.current_gradient_accumulation_steps = 1
        tr.training_step(tr.model, batch)
    for (name, p), (_, q) in zip(plain.model.named_parameters(), scaled.model.named_parameters()):
        if p.grad is not None:
            assert torch.allclose(q.grad, 1024.0 * p.grad, rtol=1e-4, atol=1e-6), name
    # an overflow reaches .grad as inf, so the scaler skips the optimizer step
    opt = torch.optim.SGD(scaled.model.parameters(), lr=0.1)
    first = next(p for n, p in scaled.model.named_parameters() if not n.startswith("heads."))
    first.grad[0].fill_(float("inf"))
    before = _params(scaled.model)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < 1024.0
    after = _params(scaled.model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_overflowing_step_keeps_inf_for_the_scaler(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, aggregator="pcgrad")
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    batch = _step_batches(trainer, 1)[0]
    trainer.accelerator.gradient_state._set_sync_gradients(True)
    trainer.current_gradient_accumulation_steps = 1
    with torch.no_grad():
        trainer.model.heads["sts"].net[-1].weight.mul_(1e30)
    trainer.training_step(trainer.model, batch)
    grads = torch.cat([p.grad.flatten() for n, p in trainer.model.named_parameters() if not n.startswith("heads.")])
    assert not torch.isfinite(grads).all()


def test_nan_loss_is_a_clear_error(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer)
    with torch.no_grad():
        trainer.model.heads["quora"].net[-1].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="Task 'quora' gave a non-finite loss"):
        trainer.train()


def test_unknown_task_in_datasets_is_rejected(tmp_path, tokenizer):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model)
    data["mnli"] = data.pop("sst")
    args = hm.MultitaskTrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(KeyError, match="unknown task"):
        hm.MultitaskTrainer(model=model, args=args, train_dataset=data)


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path, tokenizer):
    full = make_trainer(tmp_path / "full", tokenizer, aggregator="gradvac", max_steps=6)
    full.train()
    first = make_trainer(tmp_path / "part", tokenizer, aggregator="gradvac", max_steps=6, save_strategy="steps", save_steps=3)
    first.train()
    ckpt = tmp_path / "part" / "out" / "checkpoint-3"
    assert (ckpt / "multitask_state.pt").is_file()
    resumed = make_trainer(tmp_path / "part", tokenizer, aggregator="gradvac", max_steps=6, save_strategy="steps", save_steps=3)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.aggregator.targets == pytest.approx(full.aggregator.targets)
    assert resumed.task_steps == full.task_steps == {"sst": 6, "quora": 6, "sts": 6}
    for (name, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_telemetry_reaches_the_logs_and_plots(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, aggregator="gradvac", max_steps=6, telemetry_steps=2)
    trainer.train()
    rows = [r for r in trainer.state.log_history if "conflict/rate" in r]
    assert [r["step"] for r in rows] == [1, 2, 4, 6]
    row = rows[-1]
    for key in ("conflict/cos_sst_quora", "conflict/grad_norm_sts", "conflict/removed_sst", "conflict/gradvac_target_sst_quora"):
        assert key in row, key
    assert -1.0 <= row["conflict/cos_sst_quora"] <= 1.0 and row["conflict/grad_norm_sts"] > 0
    png = hm.plot_conflicts(trainer.state.log_history, tmp_path / "conflicts.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fp16_flag_trains_on_cpu(tmp_path, tokenizer):
    """On CPU accelerate runs fp16 autocast without a GradScaler: the no-scaler path must hold."""
    trainer = make_trainer(tmp_path, tokenizer, aggregator="pcgrad", fp16=True, max_steps=8, learning_rate=3e-3)
    assert trainer.accelerator.mixed_precision == "fp16"
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 8 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_activation_checkpointing_gives_the_same_surgery_step(tmp_path, tokenizer):
    """Checkpointed layers recompute their forward inside each task's autograd.grad call; the
    per-task gradients, and so the PCGrad update, must not change."""
    weights, calls = {}, {}
    for checkpointing in (False, True):
        model = deterministic_model()
        data = toy_encoded(tokenizer, model, n=32)
        count = [0]
        model.encoder.encoder.layer[0].attention.register_forward_hook(lambda *_, c=count: c.__setitem__(0, c[0] + 1))
        args = train_args(tmp_path / str(checkpointing), aggregator="pcgrad", max_steps=2, activation_checkpointing=checkpointing)
        hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer).train()
        weights[checkpointing], calls[checkpointing] = model.state_dict(), count[0]
    assert calls[True] == 2 * calls[False], "checkpointing was not active (each layer forward must run again in backward)"
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("aggregator", ["sum", "pcgrad"])
def test_reentrant_activation_checkpointing_is_refused_where_gradients_are_per_task(aggregator, tmp_path, tokenizer):
    """torch's reentrant checkpoint cannot serve torch.autograd.grad, which the surgery engine
    uses for every task: refused when the trainer is built, not at the first step."""
    model = deterministic_model()
    args = train_args(
        tmp_path, aggregator=aggregator, activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": True}
    )
    with pytest.raises(ValueError, match=r"--activation_checkpointing_kwargs.*use_reentrant.*" + aggregator):
        hm.MultitaskTrainer(model=model, args=args, train_dataset=toy_encoded(tokenizer, model, n=8), processing_class=tokenizer)


def test_reentrant_activation_checkpointing_works_for_loss_weightings(tmp_path, tokenizer):
    """FAMO and the other loss weightings take one backward of the weighted loss, which reentrant
    checkpointing supports: the run equals the one without checkpointing."""
    weights = {}
    for checkpointing in (False, True):
        model = deterministic_model()
        extra = {"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": True}} if checkpointing else {}
        args = train_args(tmp_path / str(checkpointing), aggregator="famo", max_steps=2, **extra)
        hm.MultitaskTrainer(model=model, args=args, train_dataset=toy_encoded(tokenizer, model, n=32), processing_class=tokenizer).train()
        weights[checkpointing] = model.state_dict()
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=0, atol=1e-6, msg=name)


def test_the_model_comes_aligned_with_its_tokenizer_so_the_trainer_changes_no_config(tmp_path, tokenizer):
    """The config takes the encoder's special token ids: the Trainer, which aligns the config with
    its tokenizer (and warns "The tokenizer has new PAD/BOS/EOS tokens ..." when it must), finds
    nothing to change, before or after training."""
    model = deterministic_model()
    assert model.config.pad_token_id == model.config.encoder_config.pad_token_id == tokenizer.pad_token_id
    before = model.config.to_dict()
    make_trainer(tmp_path, tokenizer, model=model, max_steps=1).train()
    after = model.config.to_dict()
    # (training sets use_cache=False, which is not a token)
    assert {k: v for k, v in after.items() if k != "use_cache"} == before
    loaded = hm.MultitaskConfig.from_dict(before)
    assert loaded.pad_token_id == tokenizer.pad_token_id, "a saved config keeps it"


@pytest.mark.parametrize("aggregator", ["sum", "mean"])
@pytest.mark.parametrize("schedule, accumulation", [("round_robin", 1), ("annealed", 3)])
def test_sum_and_mean_take_one_backward_and_end_with_the_weights_of_the_per_task_path(tmp_path, tokenizer, aggregator, schedule,
                                                                                        accumulation):  # fmt: skip
    """Issue 44: the summed and mean losses need no per-task gradient, so they train with one backward of
    the summed loss (no surgery buffer is ever built) and end where the per-task path ends (that path still
    runs on telemetry steps; every step here, in the reference run)."""
    settings = dict(aggregator=aggregator, schedule=schedule, gradient_accumulation_steps=accumulation, max_steps=4)
    fast = make_trainer(tmp_path / "fast", tokenizer, **settings)
    fast.train()
    assert fast._engine is None, "the one-backward path built the per-task buffer"
    per_task = make_trainer(tmp_path / "rows", tokenizer, telemetry_steps=1, **settings)
    per_task.train()
    assert per_task._engine is not None
    for (name, p), (_, q) in zip(fast.model.named_parameters(), per_task.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)

    def losses(trainer):
        return [{k: v for k, v in r.items() if k.startswith("loss")} for r in trainer.state.log_history if "loss" in r]

    logged, expected = losses(fast), losses(per_task)
    assert [sorted(r) for r in logged] == [sorted(r) for r in expected] and len(logged) == 4
    assert [r[k] for r in logged for k in sorted(r)] == pytest.approx([r[k] for r in expected for k in sorted(r)], rel=1e-5)
    assert fast.task_steps == per_task.task_steps and fast.examples_seen == per_task.examples_seen
    assert not any(k.startswith("weight/") for r in fast.state.log_history for k in r)


def test_telemetry_steps_still_take_the_per_task_path_under_sum(tmp_path, tokenizer, monkeypatch):
    trainer = make_trainer(tmp_path, tokenizer, aggregator="sum", telemetry_steps=3, max_steps=4)
    surgery_steps = []
    original = type(trainer)._surgery_step

    def spy(self, model, inputs):
        surgery_steps.append(self.state.global_step + 1)
        return original(self, model, inputs)

    monkeypatch.setattr(type(trainer), "_surgery_step", spy)
    trainer.train()
    assert surgery_steps == [1, 3]
    assert [h["step"] for h in trainer.telemetry.history] == [1, 3]


def test_the_evaluation_after_training_reuses_the_kept_checkpoints_and_rescores_changed_weights(tmp_path, tokenizer, monkeypatch):
    """Issue 44: the best checkpoint was scored when it was saved; evaluating it again after training
    reuses that evaluation (metrics and predictions), and weights changed since are scored afresh."""
    from hf_multitask import trainer_evaluation

    calls = []
    real = trainer_evaluation.evaluate_tasks
    monkeypatch.setattr(trainer_evaluation, "evaluate_tasks", lambda *a, **k: calls.append(1) or real(*a, **k))
    trainer = make_trainer(tmp_path, tokenizer, aggregator="sum", max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                           save_steps=2, load_best_model_at_end=True, metric_for_best_model="overall", learning_rate=3e-3)  # fmt: skip
    trainer.train()
    assert len(calls) == 3, "one evaluation per eval step"
    evals = [r for r in trainer.state.log_history if "eval_overall" in r]
    best = next(r for r in evals if r["step"] == int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1]))
    final = trainer.evaluate()
    assert len(calls) == 3, "the kept checkpoint's weights were scored already"
    assert {k: v for k, v in final.items() if k != "epoch"} == {k: v for k, v in best.items() if k.startswith("eval_")}
    assert set(trainer.last_predictions) == {"sst", "quora", "sts"}
    # The weights change after the last evaluation, in a way that must change the SST loss: raise the
    # logit of a class no SST example has by 3. Every example's loss grows by log(1 + p(e^3 - 1)), p that
    # class's probability. (The same shift on every logit would leave the softmax, and so the loss, as it
    # was: the difference would be rounding, present on one CPU and not on another.)
    labels = set(trainer.eval_dataset["sst"]["labels"])
    unused = next(c for c in range(trainer.model.get_task("sst").num_labels) if c not in labels)
    with torch.no_grad():
        trainer.model.heads["sst"].net[-1].bias[unused] += 3.0
    fresh = trainer.evaluate()
    assert len(calls) == 4, "changed weights are scored afresh"
    # measured: the loss rises by 1.39 (1.43 to 2.82); a reused evaluation would leave it where it was
    assert fresh["eval_sst_loss"] > final["eval_sst_loss"] + 0.5, (fresh["eval_sst_loss"], final["eval_sst_loss"])
    assert fresh["eval_sst_loss"] == pytest.approx(task_losses(trainer.model, {"sst": trainer.eval_dataset["sst"]})["sst"], rel=1e-5)
    assert trainer.evaluate({"sst": trainer.eval_dataset["sst"]}) and len(calls) == 5, "other evaluation sets are always scored"


def test_an_evaluation_is_reused_only_for_the_same_sets_and_metric_settings(tmp_path, tokenizer, monkeypatch):
    """Issue 51: reuse keyed on the weights alone returned the old sets' metrics after
    ``trainer.eval_dataset`` was reassigned, and a stale ``overall`` after the primary tasks changed."""
    from hf_multitask import trainer_evaluation

    calls = []
    real = trainer_evaluation.evaluate_tasks
    monkeypatch.setattr(trainer_evaluation, "evaluate_tasks", lambda *a, **k: calls.append(sorted(a[1])) or real(*a, **k))
    trainer = make_trainer(tmp_path, tokenizer, aggregator="sum")
    first = trainer.evaluate()
    assert trainer.evaluate() == first and len(calls) == 1, "the same weights on the same sets: reused"
    trainer.eval_dataset = {"sst": trainer.eval_dataset["sst"].select(range(8))}
    small = trainer.evaluate()
    assert calls[-1] == ["sst"] and len(calls) == 2, "other evaluation sets are scored"
    assert not any(k.startswith(("eval_quora", "eval_sts")) for k in small)
    assert small["eval_sst_loss"] != first["eval_sst_loss"]
    trainer.eval_dataset = {"sst": trainer.eval_dataset["sst"], "sts": make_trainer(tmp_path, tokenizer).eval_dataset["sts"]}
    both = trainer.evaluate()
    assert len(calls) == 3 and both["eval_overall"] != small["eval_overall"]
    trainer.args.primary_tasks = ["sts"]
    primary = trainer.evaluate()
    assert len(calls) == 4, "other primary tasks: scored again"
    assert primary["eval_overall"] == pytest.approx(both["eval_sts_score"]) and primary["eval_overall"] != both["eval_overall"]
