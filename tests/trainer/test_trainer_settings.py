"""MultitaskTrainer honours every TrainingArguments field the docs' "Trainer features" table (docs/guides/training.md)
claims, and refuses the others at construction with a message that names the setting."""

import math

import pytest
import torch
from conftest import REPO, deterministic_model, toy_encoded, train_args
from transformers import Trainer

import hf_multitask as hm
from hf_multitask.surgery import get_aggregator


def _trainer(tmp_path, tokenizer, model=None, data=None, **overrides):
    model = model or deterministic_model()
    data = data or toy_encoded(tokenizer, model, n=32)
    settings = {"logging_steps": 1, "length_grouping": False, **overrides}
    return hm.MultitaskTrainer(model=model, args=train_args(tmp_path / "out", **settings), train_dataset=data, eval_dataset=data,
                               processing_class=tokenizer)  # fmt: skip


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _lrs(trainer):
    return [r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r]


def _trained(tmp_path, tokenizer, **overrides):
    trainer = _trainer(tmp_path, tokenizer, **overrides)
    trainer.train()
    return trainer


# ---------------------------------------------------------------- supported fields: each has its effect
def _check_learning_rate(tmp_path, tokenizer):
    # One SGD step from the same weights on the same batch: each parameter moves by -lr x the same gradient.
    # A parameter whose step at 1e-5 is under 1e-4 of its norm is left out: the rounding of the stored fp32
    # weights (up to 6e-8 of them) would be a sizeable part of that step (the query weights moved by 1e-9,
    # about one ulp, and gave ratios of 190 to 320). Over more steps the ratio also follows the trajectory.
    small = _trained(tmp_path / "a", tokenizer, learning_rate=1e-5, optim="sgd", max_grad_norm=0.0, max_steps=1)
    large = _trained(tmp_path / "b", tokenizer, learning_rate=1e-3, optim="sgd", max_grad_norm=0.0, max_steps=1)
    start = _params(deterministic_model())
    delta = {n: (p - start[n]).norm() for n, p in _params(small.model).items()}
    ratio = {n: float((p - start[n]).norm() / delta[n]) for n, p in _params(large.model).items() if delta[n] > 1e-4 * start[n].norm()}
    assert len(ratio) > 20, sorted(ratio)
    # measured: 99.9992 to 100.0020 (avx512, avx2 and default kernels alike)
    assert all(r == pytest.approx(100, rel=1e-3) for r in ratio.values()), ("SGD moves 100x further at 100x the learning rate", ratio)


def _check_lr_scheduler_type(tmp_path, tokenizer):
    assert set(_lrs(_trained(tmp_path, tokenizer, lr_scheduler_type="constant"))) == {1e-3}
    linear = _lrs(_trained(tmp_path / "l", tokenizer, lr_scheduler_type="linear"))
    assert linear == sorted(linear, reverse=True) and linear[-1] < linear[0]


def _check_warmup_steps(tmp_path, tokenizer):
    lrs = _lrs(_trained(tmp_path, tokenizer, warmup_steps=2, lr_scheduler_type="constant_with_warmup"))
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1e-3)
    # a float below 1 is a ratio of the run (transformers 5 folded warmup_ratio into warmup_steps): 0.5 of 4 steps is 2
    ratio = _lrs(_trained(tmp_path / "ratio", tokenizer, warmup_steps=0.5, lr_scheduler_type="constant_with_warmup"))
    assert ratio == pytest.approx(lrs)
    longer = _lrs(_trained(tmp_path / "longer", tokenizer, warmup_steps=0.75, lr_scheduler_type="constant_with_warmup"))
    assert longer[2] < longer[3] == pytest.approx(1e-3)


def _check_weight_decay(tmp_path, tokenizer):
    plain = _params(_trained(tmp_path / "a", tokenizer, weight_decay=0.0).model)
    decayed = _params(_trained(tmp_path / "b", tokenizer, weight_decay=0.5).model)
    name = "encoder.encoder.layer.0.attention.self.query.weight"
    assert decayed[name].norm() < plain[name].norm()


def _check_max_grad_norm(tmp_path, tokenizer):
    clipped = _trained(tmp_path, tokenizer, max_grad_norm=1e-3, optim="sgd", learning_rate=1.0)
    start = _params(deterministic_model())
    total = math.sqrt(sum(float((p - start[n]).norm() ** 2) for n, p in _params(clipped.model).items()))
    assert total <= 4 * 1e-3 * 1.0 + 1e-6, "4 SGD steps of a clipped (norm 1e-3) gradient at lr 1"


def _check_gradient_accumulation_steps(tmp_path, tokenizer):
    trainer = _trained(tmp_path, tokenizer, gradient_accumulation_steps=2)
    assert trainer.state.global_step == 4 and trainer.examples_seen == {"sst": 64, "quora": 64, "sts": 64}


def _check_per_device_train_batch_size(tmp_path, tokenizer):
    assert _trained(tmp_path, tokenizer, per_device_train_batch_size=3).examples_seen["sst"] == 12


def _check_max_steps(tmp_path, tokenizer):
    assert _trained(tmp_path, tokenizer, max_steps=3).state.global_step == 3


def _check_num_train_epochs(tmp_path, tokenizer):
    trainer = _trained(tmp_path, tokenizer, max_steps=-1, num_train_epochs=2)
    assert trainer.state.global_step == 2 * 4 and trainer.state.epoch == pytest.approx(2)


def _check_seed(tmp_path, tokenizer):
    a, b = _trained(tmp_path / "a", tokenizer, seed=1), _trained(tmp_path / "b", tokenizer, seed=2)
    assert any(not torch.equal(p, _params(b.model)[n]) for n, p in _params(a.model).items())


def _check_logging_steps(tmp_path, tokenizer):
    trainer = _trained(tmp_path, tokenizer, logging_steps=2)
    assert [r["step"] for r in trainer.state.log_history if "loss" in r] == [2, 4]


def _check_save_strategy(tmp_path, tokenizer):
    _trained(tmp_path, tokenizer, save_strategy="steps", save_steps=2, save_total_limit=1)
    assert [p.name for p in (tmp_path / "out").glob("checkpoint-*")] == ["checkpoint-4"]


def _check_eval_strategy(tmp_path, tokenizer):
    trainer = _trained(tmp_path, tokenizer, eval_strategy="steps", eval_steps=2)
    assert [r["step"] for r in trainer.state.log_history if "eval_overall" in r] == [2, 4]


def _check_load_best_model_at_end(tmp_path, tokenizer):
    # the default metric is the evaluation loss, which evaluation now reports
    trainer = _trained(tmp_path, tokenizer, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
                       load_best_model_at_end=True)  # fmt: skip
    assert trainer.state.best_metric == min(r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r)


def _check_optim(tmp_path, tokenizer):
    assert type(_trained(tmp_path, tokenizer, optim="sgd").optimizer.optimizer).__name__ == "SGD"


def _check_bf16(tmp_path, tokenizer):
    trainer = _trained(tmp_path, tokenizer, bf16=True)
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.state.global_step == 4


def _check_activation_checkpointing(tmp_path, tokenizer):
    trainer = _trained(tmp_path, tokenizer, activation_checkpointing=True)
    assert trainer.model.encoder.is_activation_checkpointing


def _check_dataloader_settings(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, dataloader_num_workers=1, dataloader_persistent_workers=True, dataloader_prefetch_factor=3)
    loader = trainer.get_train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers and loader.prefetch_factor == 3
    trainer.train()
    assert trainer.state.global_step == 4


def _check_dataloader_drop_last(tmp_path, tokenizer):
    # every batch is full (a task's examples cycle, 64 is no multiple of 5), so drop_last has nothing to drop either way
    for drop in (True, False):
        trainer = _trained(tmp_path / str(drop), tokenizer, dataloader_drop_last=drop, per_device_train_batch_size=5)
        assert trainer.examples_seen == {t: 4 * 5 for t in ("sst", "quora", "sts")}, drop
        assert all(b["input_ids"].shape[0] == 5 for step in _steps(trainer, 6) for b in step.values()), drop


def _steps(trainer, n):
    it = iter(trainer.get_train_dataloader())
    return [next(it) for _ in range(n)]


def _check_dataloader_pin_memory(tmp_path, tokenizer, monkeypatch):
    # asked of the DataLoader only where there is a GPU to copy to (pinning on a CPU-only machine warns and does nothing)
    from hf_multitask import trainer_schedule

    asked, real = [], trainer_schedule.make_train_dataloader
    monkeypatch.setattr(trainer_schedule, "make_train_dataloader", lambda *a, **k: asked.append(k["pin_memory"]) or real(*a, **k))
    for flag, cuda in ((True, False), (True, True), (False, True)):
        trainer = _trainer(tmp_path, tokenizer, dataloader_pin_memory=flag, use_cpu=False)  # built on this machine's device
        with monkeypatch.context() as patch:
            patch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
            trainer.get_train_dataloader()
    assert asked == [False, True, False]
    assert not train_args(tmp_path, dataloader_pin_memory=True, use_cpu=True).dataloader_pin_memory, "use_cpu turns it off"


def _check_include_num_input_tokens_seen(tmp_path, tokenizer, caplog):
    trainer = _trained(tmp_path, tokenizer, include_num_input_tokens_seen="all")
    assert trainer.state.num_input_tokens_seen > 4 * 3 * 8
    assert "Tried to track the number of tokens seen" not in caplog.text
    assert trainer.state.total_flos > 0


SUPPORTED = {
    "learning_rate": _check_learning_rate,
    "lr_scheduler_type": _check_lr_scheduler_type,
    "warmup_steps": _check_warmup_steps,
    "weight_decay": _check_weight_decay,
    "max_grad_norm": _check_max_grad_norm,
    "gradient_accumulation_steps": _check_gradient_accumulation_steps,
    "per_device_train_batch_size": _check_per_device_train_batch_size,
    "max_steps": _check_max_steps,
    "num_train_epochs": _check_num_train_epochs,
    "seed": _check_seed,
    "logging_steps": _check_logging_steps,
    "save_strategy": _check_save_strategy,
    "eval_strategy": _check_eval_strategy,
    "load_best_model_at_end": _check_load_best_model_at_end,
    "optim": _check_optim,
    "bf16": _check_bf16,
    "activation_checkpointing": _check_activation_checkpointing,
    "dataloader_num_workers": _check_dataloader_settings,
    "dataloader_drop_last": _check_dataloader_drop_last,
    "dataloader_pin_memory": _check_dataloader_pin_memory,
    "include_num_input_tokens_seen": _check_include_num_input_tokens_seen,
}


@pytest.mark.parametrize("field", sorted(SUPPORTED))
def test_supported_training_argument_has_its_effect(field, tmp_path, tokenizer, caplog, monkeypatch):
    check = SUPPORTED[field]
    extra = {"caplog": caplog, "monkeypatch": monkeypatch}
    check(tmp_path, tokenizer, *(extra[name] for name in check.__code__.co_varnames[2 : check.__code__.co_argcount]))


def test_readme_trainer_features_table_matches_the_tests():

    readme = (REPO / "docs" / "guides" / "training.md").read_text()
    table = readme[readme.index("## Trainer features") :]
    table = table[: table.index("\n\n", table.index("|---"))]
    supported = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `") and "| supported" in line}
    refused = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `") and "| refused" in line}
    assert supported == set(SUPPORTED) | {"dataloader_persistent_workers", "dataloader_prefetch_factor"}
    assert refused == set(REFUSED_ARGS) | {"compute_loss_func", "deepspeed", "fsdp", "n_gpu > 1"}


# ---------------------------------------------------------------- refused fields: at construction, named
REFUSED_ARGS = {
    "auto_find_batch_size": True,
    "label_smoothing_factor": 0.1,
    "train_sampling_strategy": "group_by_length",
}


@pytest.mark.parametrize("field", sorted(REFUSED_ARGS))
def test_refused_training_argument_is_named_at_construction(field, tmp_path):
    with pytest.raises(ValueError, match=f"--{field}"):
        train_args(tmp_path, **{field: REFUSED_ARGS[field]})


def test_compute_loss_func_is_refused(tmp_path, tokenizer):
    model = deterministic_model()
    with pytest.raises(ValueError, match="compute_loss_func is not supported"):
        hm.MultitaskTrainer(
            model=model, args=train_args(tmp_path), train_dataset=toy_encoded(tokenizer, model), compute_loss_func=lambda *a: 0
        )


@pytest.mark.parametrize(
    "flag, message", [("is_deepspeed_enabled", "does not support DeepSpeed"), ("is_fsdp_enabled", "does not support FSDP")]
)
def test_deepspeed_and_fsdp_are_refused(flag, message, tmp_path, tokenizer, monkeypatch):
    original = Trainer.create_accelerator_and_postprocess

    def as_if(self):
        original(self)
        setattr(self, flag, True)  # what accelerate reports under a DeepSpeed / FSDP launch config

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", as_if)
    with pytest.raises(ValueError, match=message):
        _trainer(tmp_path, tokenizer)


def test_several_gpus_in_one_process_are_refused(tmp_path, tokenizer):
    args = train_args(tmp_path)
    args._n_gpu = 2  # what TrainingArguments reports on a 2-GPU machine without a distributed launch
    model = deterministic_model()
    with pytest.raises(ValueError, match="2 GPUs in one process would run nn.DataParallel"):
        hm.MultitaskTrainer(model=model, args=args, train_dataset=toy_encoded(tokenizer, model))


def test_weighted_pcgrad_with_sampled_accumulation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="weighted_pcgrad with --gradient_accumulation_steps > 1 needs --schedule round_robin"):
        train_args(tmp_path, aggregator="weighted_pcgrad", gradient_accumulation_steps=2, schedule="proportional")


# ---------------------------------------------------------------- schedules with epochs of different lengths
STAGES = {"stages": [{"tasks": ["quora"], "epochs": 2}, {"schedule": "round_robin", "steps_per_epoch": 2}]}


def _staggered(tmp_path, tokenizer, **overrides):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=64)
    return _trainer(tmp_path, tokenizer, model=model, data=data, schedule="staggered", schedule_kwargs=STAGES, per_device_train_batch_size=8,
                    lr_scheduler_type="linear", **overrides)  # fmt: skip


def test_staggered_max_steps_runs_every_step_and_the_lr_reaches_zero(tmp_path, tokenizer):
    trainer = _staggered(tmp_path, tokenizer, max_steps=30)  # epochs of 8, 8, 2, 2, 2, ... steps
    trainer.train()
    assert trainer.state.global_step == 30
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0
    assert trainer.task_steps == {"quora": 30, "sst": 14, "sts": 14}


def test_staggered_epochs_plan_the_exact_steps_and_windows_stay_in_their_epoch(tmp_path, tokenizer):
    trainer = _staggered(tmp_path, tokenizer, max_steps=-1, num_train_epochs=4, gradient_accumulation_steps=3)
    trainer.train()
    # epochs of 8, 8, 2, 2 micro-steps: 3 + 3 + 1 + 1 optimizer steps; the 2-step epochs end their window alone
    assert trainer.state.global_step == 8 and trainer.state.max_steps == 8
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0
    assert trainer.task_steps == {"quora": 8, "sst": 2, "sts": 2}
    assert trainer.examples_seen == {"quora": 8 * 8 * 2 + 2 * 8 * 2, "sst": 2 * 8 * 2, "sts": 2 * 8 * 2}


def test_staggered_resume_mid_short_epoch_reproduces_the_run(tmp_path, tokenizer):
    full = _staggered(tmp_path / "full", tokenizer, max_steps=-1, num_train_epochs=4)
    full.train()
    part = _staggered(tmp_path / "part", tokenizer, max_steps=-1, num_train_epochs=4, save_strategy="steps", save_steps=19)
    part.train()
    resumed = _staggered(tmp_path / "part", tokenizer, max_steps=-1, num_train_epochs=4)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "out" / "checkpoint-19"))
    assert resumed.state.global_step == 20 and resumed.task_steps == full.task_steps
    for name, p in _params(full.model).items():
        assert torch.equal(p, _params(resumed.model)[name]), name


# ---------------------------------------------------------------- objective, heads, bookkeeping
def test_heads_follow_their_tasks_weight_in_the_objective(tmp_path, tokenizer):
    """Under ``mean`` the encoder gets (1/T) sum g_i; each head must get (1/T) of its own loss gradient too."""
    trainer = _trainer(tmp_path, tokenizer, aggregator="mean")
    batch = next(iter(trainer.get_train_dataloader()))
    reference = deterministic_model()
    trainer.training_step(trainer.model, {t: dict(b) for t, b in batch.items()})
    for task, b in batch.items():
        loss = reference(task=task, **b).loss
        head = list(reference.heads[task].parameters())
        expected = torch.autograd.grad(loss, head)
        for p, g in zip(trainer.model.heads[task].parameters(), expected):
            torch.testing.assert_close(p.grad, g / 3, rtol=1e-5, atol=1e-7)


def test_logged_loss_is_the_optimised_objective_with_per_task_losses(tmp_path, tokenizer):
    trainer = _trained(tmp_path, tokenizer, aggregator="mean", max_steps=1)
    row = next(r for r in trainer.state.log_history if "loss" in r)
    tasks = [row[f"loss/{t}"] for t in ("sst", "quora", "sts")]
    assert row["loss"] == pytest.approx(sum(tasks) / 3, rel=1e-4), "mean: the logged loss is the mean, not the sum"


def test_steps_the_scaler_skips_are_not_counted(tmp_path, tokenizer, monkeypatch):
    trainer = _trainer(tmp_path, tokenizer)
    trainer._pending_step = {"sst": 8, "quora": 8}
    monkeypatch.setattr(type(trainer.accelerator), "optimizer_step_was_skipped", property(lambda self: True))
    trainer.optimizer_step_done()
    assert trainer.skipped_steps == 1 and trainer.task_steps == {"sst": 0, "quora": 0, "sts": 0}


def test_buffers_hold_only_the_training_tasks_and_follow_the_trainable_set(tmp_path, tokenizer):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=32)
    trainer = _trainer(tmp_path, tokenizer, model=model, data={"sst": data["sst"]})
    trainer.train()
    assert trainer._engine.tasks == ["sst"] and trainer._engine.matrix.shape[0] == 1
    model.set_trainable("heads")
    trainer.train()
    assert trainer._engine.p_shared == 0, "rebuilt for the new trainable set"


@pytest.mark.parametrize("aggregator", ["weighted_pcgrad", "pooled_pcgrad"])
@pytest.mark.parametrize(
    ("one", "micro", "accumulation"),
    [({"sst": 12, "quora": 4, "sts": 8}, {"sst": 6, "quora": 2, "sts": 4}, 2),
     ({"sst": 24, "quora": 12, "sts": 6}, {"sst": 8, "quora": 4, "sts": 2}, 3)],  # sst: one batch of 24 or three of 8
)  # fmt: skip
def test_sample_weighted_pcgrad_step_does_not_depend_on_how_the_samples_were_batched(tmp_path, tokenizer, aggregator, one, micro,
                                                                                     accumulation):  # fmt: skip
    def step(**overrides):
        trainer = _trainer(tmp_path, tokenizer, aggregator=aggregator, optim="sgd", max_grad_norm=0.0, learning_rate=0.1, max_steps=1,
                           **overrides)  # fmt: skip
        trainer.train()
        return _params(trainer.model)

    one_batch = step(task_batch_sizes=one, gradient_accumulation_steps=1)
    micro_batches = step(task_batch_sizes=micro, gradient_accumulation_steps=accumulation)
    for name, p in one_batch.items():
        torch.testing.assert_close(micro_batches[name], p, rtol=1e-4, atol=1e-6, msg=name)


def test_weighted_pcgrad_trains_exactly_like_pcgrad_on_mean_loss_rows(tmp_path, tokenizer):
    """The trainer's rows are per-sample means, so the paper's 1/n_i scaling is already applied:
    the same seed gives bit-identical weights; the method's effect is in the batch sizes."""

    def run(aggregator):
        trainer = _trainer(tmp_path / aggregator, tokenizer, aggregator=aggregator, max_steps=3,
                           task_batch_sizes={"sst": 2, "quora": 6, "sts": 4})  # fmt: skip
        trainer.train()
        return _params(trainer.model)

    pcgrad, weighted, pooled = run("pcgrad"), run("weighted_pcgrad"), run("pooled_pcgrad")
    assert all(torch.equal(pcgrad[n], weighted[n]) for n in pcgrad)
    assert not all(torch.equal(pcgrad[n], pooled[n]) for n in pcgrad), "the pooled weighting does change the step"


# ---------------------------------------------------------------- Trainer features that broke
def test_predict_and_evaluate_take_task_dicts_and_report_losses(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer)
    data = toy_encoded(tokenizer, trainer.model, n=16)
    metrics = trainer.evaluate(data)
    for key in ("eval_loss", "eval_sst_loss", "eval_quora_loss", "eval_sts_loss", "eval_overall"):
        assert key in metrics, key
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_sst_loss"] + metrics["eval_quora_loss"] + metrics["eval_sts_loss"])
    out = trainer.predict(data)
    assert set(out.predictions) == {"sst", "quora", "sts"} and out.predictions["sst"].shape == (16,)
    assert out.metrics["test_overall"] == pytest.approx(metrics["eval_overall"])
    with pytest.raises(TypeError, match="test_dataset must be a dict"):
        trainer.predict(data["sst"])


def test_model_init_and_hyperparameter_search_with_optuna(tmp_path, tokenizer):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=16)
    args = train_args(tmp_path / "hp", max_steps=2, eval_strategy="steps", eval_steps=2, logging_steps=1)
    trainer = hm.MultitaskTrainer(model_init=lambda trial=None: deterministic_model(), args=args, train_dataset=data, eval_dataset=data,
                                  processing_class=tokenizer)  # fmt: skip
    best = trainer.hyperparameter_search(
        hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)},
        backend="optuna",
        n_trials=2,
        direction="minimize",
    )
    assert math.isfinite(best.objective) and "learning_rate" in best.hyperparameters


def test_push_to_hub_during_training_sees_the_surgery_state(tmp_path, tokenizer, monkeypatch):
    seen = []

    def record(self, output_dir):
        seen.append(sorted(p.name for p in __import__("pathlib").Path(output_dir).iterdir()))

    monkeypatch.setattr(Trainer, "_push_from_checkpoint", record)
    monkeypatch.setattr(Trainer, "init_hf_repo", lambda self, token=None: None)
    _trained(tmp_path, tokenizer, save_strategy="steps", save_steps=2, push_to_hub=True, hub_model_id="me/run", hub_strategy="every_save")
    assert seen and all("multitask_state.pt" in names and "model.safetensors" in names for names in seen)


def test_schedule_free_optimizer_modes_are_switched(tmp_path, tokenizer):
    calls = []

    class ModeTrackingAdamW(torch.optim.AdamW):
        def train(self):
            calls.append("train")

        def eval(self):
            calls.append("eval")

    trainer = _trainer(tmp_path, tokenizer, max_steps=2, eval_strategy="steps", eval_steps=2)
    trainer.optimizer = ModeTrackingAdamW(trainer.model.parameters(), lr=1e-3)
    trainer.train()
    assert "train" in calls and "eval" in calls and calls.index("train") < calls.index("eval")


def test_aggregator_loss_weights():
    weights = torch.tensor([0.2, 0.3], dtype=torch.float64)
    assert torch.equal(get_aggregator("mean").loss_weights(weights), weights)
    assert torch.equal(get_aggregator("pcgrad").loss_weights(weights), torch.ones(2, dtype=torch.float64))
    assert torch.equal(get_aggregator("gradvac").loss_weights(weights), torch.ones(2, dtype=torch.float64))


def test_head_learning_rate_and_layer_lr_decay_set_each_parameters_step(tmp_path, tokenizer):
    """One constant-rate SGD step: every parameter moves by -lr * factor * grad, with the factor
    of its place (heads: head_learning_rate / learning_rate; layer i of 2: 0.5**(2 - i);
    embeddings: 0.5**3)."""
    from transformers import TrainerCallback

    grads = {}

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})

    trainer = _trainer(tmp_path, tokenizer, max_steps=1, optim="sgd", lr_scheduler_type="constant", max_grad_norm=0.0, learning_rate=1e-2,
                       weight_decay=0.0, head_learning_rate=0.1, layer_lr_decay=0.5, aggregator="sum")  # fmt: skip
    trainer.add_callback(Grab())
    before = _params(trainer.model)
    trainer.train()
    expected = {
        "encoder.embeddings.word_embeddings.weight": 0.5**3,
        "encoder.encoder.layer.0.attention.self.query.weight": 0.5**2,
        "encoder.encoder.layer.1.output.dense.weight": 0.5,
        "heads.sst.net.1.weight": 10.0,
    }
    after = _params(trainer.model)
    assert next(r for r in trainer.state.log_history if "learning_rate" in r)["learning_rate"] == 1e-2, "the base rate is logged"
    for name, factor in expected.items():
        torch.testing.assert_close(
            after[name] - before[name], -1e-2 * factor * grads[name], rtol=1e-4, atol=1e-8, msg=lambda m, name=name: f"{name}: {m}"
        )
    # every kind of task-owned parameter takes head_learning_rate: PALs and per-task LoRA as well as heads
    adapted = deterministic_model(pal_tasks=["all"], pal_rank=8, pal_heads=2)
    adapted.add_lora(r=4, per_task=True)
    trainer = _trainer(tmp_path / "adapted", tokenizer, model=adapted, max_steps=1, optim="sgd", lr_scheduler_type="constant",
                       max_grad_norm=0.0, learning_rate=1e-2, weight_decay=0.0, head_learning_rate=0.1, layer_lr_decay=0.5,
                       aggregator="sum")  # fmt: skip
    grads.clear()
    trainer.add_callback(Grab())
    before = _params(trainer.model)
    trainer.train()
    after = _params(trainer.model)
    kinds = {"pal": [n for n in grads if ".pals." in n or n.startswith("pals.")], "lora": [n for n in grads if "lora" in n.lower()]}
    assert all(kinds.values()), f"the model has PAL and per-task LoRA parameters with gradients: {kinds}"
    for name in kinds["pal"] + kinds["lora"]:
        torch.testing.assert_close(after[name] - before[name], -1e-2 * 10.0 * grads[name], rtol=1e-4, atol=1e-8,
                                   msg=lambda m, name=name: f"{name}: {m}")  # fmt: skip
    with pytest.raises(ValueError, match="--layer_lr_decay must be in"):
        train_args(tmp_path, layer_lr_decay=0.0)
    with pytest.raises(ValueError, match="--head_learning_rate must be positive"):
        train_args(tmp_path, head_learning_rate=-1.0)
