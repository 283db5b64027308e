"""Task schedules: frequencies, formulas, coverage, stages, ratios, resume and DDP sharding."""

from collections import Counter

import pytest
import scipy.stats
import torch
from accelerate.data_loader import SkipBatchSampler
from conftest import deterministic_model, task_losses, toy_encoded

import hf_multitask as hm
from hf_multitask.mixing import (
    MultitaskStepSampler,
    annealed_alpha,
    compromise_beta,
    make_train_dataloader,
    parse_ratios,
    task_probabilities,
)

SIZES = {"sst": 400, "quora": 1600, "sts": 100}


def _task_counts(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return Counter(step[0][0] for step in sampler)


@pytest.mark.parametrize(
    "kind, kwargs",
    [("proportional", {}), ("temperature", {"temperature": 3.0}), ("uniform", {}), ("annealed", {})],
)
def test_empirical_task_frequencies_match_the_target(kind, kwargs):
    epochs = 4
    sampler = MultitaskStepSampler(SIZES, 1, schedule=kind, schedule_kwargs=kwargs, num_epochs=epochs, seed=3)
    for epoch in (0, epochs - 1):
        counts = _task_counts(sampler, epoch)
        n = sum(counts.values())
        assert n == sum(SIZES.values()), "an epoch holds as many batches as the data"
        probs = task_probabilities(SIZES, kind, epoch=epoch, num_epochs=epochs, **kwargs)
        observed = [counts[t] for t in SIZES]
        expected = [probs[t] * n for t in SIZES]
        assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3, (kind, epoch, observed, expected)
        # the test has power: the same counts are far from a uniform draw unless uniform is the target
        if kind != "uniform" and not (kind == "annealed" and epoch == epochs - 1):
            assert scipy.stats.chisquare(observed, [n / 3] * 3).pvalue < 1e-6


def test_probability_formulas():
    p = task_probabilities({"a": 900, "b": 100}, "proportional")
    assert p == pytest.approx({"a": 0.9, "b": 0.1})
    p = task_probabilities({"a": 900, "b": 100}, "temperature", temperature=2.0)
    assert p["a"] == pytest.approx(30 / 40)
    p = task_probabilities({"a": 900, "b": 100}, "annealed", epoch=2, num_epochs=3)  # alpha = 0.2
    assert p["a"] == pytest.approx(900**0.2 / (900**0.2 + 100**0.2))
    with pytest.raises(ValueError, match="Unknown sampling kind"):
        task_probabilities({"a": 1}, "zipf")


def test_annealed_alpha_and_compromise_beta_sequences():
    assert [annealed_alpha(e, 1) for e in range(1)] == [1.0]
    assert [annealed_alpha(e, 5) for e in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert [annealed_alpha(e, 3) for e in range(3)] == pytest.approx([1.0, 0.6, 0.2])
    assert [compromise_beta(e, 5) for e in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert compromise_beta(0, 1) == pytest.approx(0.2)


def test_round_robin_covers_the_largest_task_once_and_cycles_the_others():
    sizes = {"sst": 40, "quora": 96, "sts": 12}
    sampler = MultitaskStepSampler(sizes, 8, schedule="round_robin", seed=1)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        steps = list(sampler)
        assert len(steps) == 12 == len(sampler)
        seen = {t: Counter() for t in sizes}
        for step in steps:
            assert Counter(t for t, _, _ in step) == {"sst": 8, "quora": 8, "sts": 8}, "every step has a batch of every task"
            for t, i, _ in step:
                seen[t][i] += 1
        assert seen["quora"] == Counter({i: 1 for i in range(96)}), "the largest task: every example exactly once"
        assert set(seen["sst"]) == set(range(40)) and set(seen["sst"].values()) <= {2, 3}
        assert set(seen["sts"]) == set(range(12)) and set(seen["sts"].values()) == {8}, "12 examples cycle 8 full passes"
    sampler.set_epoch(0)
    first = [i for s in sampler for t, i, _ in s if t == "quora"]
    sampler.set_epoch(1)
    second = [i for s in sampler for t, i, _ in s if t == "quora"]
    assert first != second, "each epoch reshuffles"


def test_caps_and_samples_per_task():
    sampler = MultitaskStepSampler(SIZES, 10, schedule="round_robin", schedule_kwargs={"samples_per_task": 200})
    assert len(sampler) == 20
    sampler = MultitaskStepSampler(SIZES, 10, schedule="round_robin", schedule_kwargs={"steps_per_epoch": 7})
    assert len(list(sampler)) == 7
    sampler = MultitaskStepSampler(SIZES, 10, schedule="proportional", schedule_kwargs={"samples_per_task": 50})
    assert len(sampler) == 15


def test_staggered_stages_switch_at_the_right_epoch():
    stages = [{"tasks": ["quora"], "epochs": 2}, {"schedule": "round_robin", "steps_per_epoch": 5}]
    sampler = MultitaskStepSampler({"sst": 40, "quora": 80, "sts": 16}, 8, schedule="staggered", schedule_kwargs={"stages": stages})
    assert len(sampler) == 10
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        steps = list(sampler)
        assert len(steps) == 10 and all({t for t, _, _ in s} == {"quora"} for s in steps)
    for epoch in (2, 3):
        sampler.set_epoch(epoch)
        steps = list(sampler)
        assert len(steps) == 5 and all({t for t, _, _ in s} == {"sst", "quora", "sts"} for s in steps)
    with pytest.raises(ValueError, match="unknown task"):
        bad = MultitaskStepSampler({"sst": 4}, 2, schedule="staggered", schedule_kwargs={"stages": [{"tasks": ["qqp"]}]})
        list(bad)


def test_ratios_give_the_requested_batch_composition():
    assert parse_ratios("0:3:1", ["sst", "quora", "sts"]) == {"sst": 0.0, "quora": 3.0, "sts": 1.0}
    sampler = MultitaskStepSampler({"sst": 40, "quora": 96, "sts": 24}, 12, schedule="round_robin", schedule_kwargs={"ratios": "0:3:1"})
    for step in sampler:
        assert Counter(t for t, _, _ in step) == {"quora": 12, "sts": 4}
    with pytest.raises(ValueError, match="3 parts for 2 tasks"):
        parse_ratios("1:2:3", ["a", "b"])
    with pytest.raises(ValueError, match="at least one > 0"):
        parse_ratios("0:0", ["a", "b"])


def test_resume_reproduces_the_stream():
    def make():
        s = MultitaskStepSampler(SIZES, 4, schedule="annealed", num_epochs=3, seed=11)
        s.set_epoch(1)
        return s

    full = list(make())
    resumed = list(SkipBatchSampler(make(), skip_batches=37))
    assert resumed == full[37:]
    other_seed = MultitaskStepSampler(SIZES, 4, schedule="annealed", num_epochs=3, seed=12)
    other_seed.set_epoch(1)
    assert list(other_seed) != full


@pytest.mark.parametrize("schedule", ["round_robin", "proportional", "gradient_compromise"])
def test_two_ranks_agree_on_tasks_and_see_disjoint_examples(schedule):
    ranks = [MultitaskStepSampler(SIZES, 4, schedule=schedule, seed=5, rank=r, world_size=2) for r in (0, 1)]
    single = MultitaskStepSampler(SIZES, 8, schedule=schedule, seed=5) if schedule == "round_robin" else None
    steps0, steps1 = list(ranks[0]), list(ranks[1])
    assert len(steps0) == len(steps1)
    for a, b in zip(steps0, steps1):
        assert Counter(t for t, _, _ in a) == Counter(t for t, _, _ in b)
    # Within a pass over a task the ranks never share an example (small tasks cycle, so the
    # same example can come back in a later pass); one epoch is one pass over the largest task.
    quora0 = [i for s in steps0 for t, i, _ in s if t == "quora"]
    quora1 = [i for s in steps1 for t, i, _ in s if t == "quora"]
    if schedule == "round_robin":
        assert len(quora0) == len(quora1) == 800 and not set(quora0) & set(quora1)
        assert set(quora0) | set(quora1) == set(range(1600))
    else:
        stream = [i for pair in zip(*(iter(quora0),) * 4, *(iter(quora1),) * 4) for i in pair]
        assert len(set(stream[:1600])) == min(1600, len(stream))
    if single is not None:  # the two ranks together hold the combined batch of one process
        for a, b, c in zip(steps0, steps1, single):
            assert sorted(a + b) == sorted(c)


def test_gradient_compromise_merges_batches_and_weights_losses():
    sizes = {"sst": 400, "quora": 1600, "sts": 100}
    sampler = MultitaskStepSampler(sizes, 4, schedule="gradient_compromise", schedule_kwargs={"normalize": False}, num_epochs=3, seed=2)
    sampler.set_epoch(2)  # beta = 1.0
    plan = sampler.plan()
    assert len(plan) == -(-(100 + 400 + 25) // 3)
    for step in plan:
        assert sum(s.examples for s in step) == 12 and len({s.task for s in step}) == len(step)
        for s in step:
            assert s.loss_weight == pytest.approx(sizes[s.task] ** -1.0)
    normalized = MultitaskStepSampler(sizes, 4, schedule="gradient_compromise", num_epochs=3)
    weights = normalized.schedule.loss_weights(sizes, 0, 3)
    assert sum(weights.values()) / 3 == pytest.approx(1.0)
    assert weights["sts"] / weights["quora"] == pytest.approx((1600 / 100) ** 0.2)


def test_loader_pads_per_task_and_carries_loss_weights(tokenizer):
    model = deterministic_model(pair_encoding="bi")
    data = toy_encoded(tokenizer, model, n=32)
    data["sts"] = data["sts"].select(range(8))  # unequal sizes: loss weights differ from 1
    sampler = MultitaskStepSampler({t: len(d) for t, d in data.items()}, 4, schedule="gradient_compromise", num_epochs=2)
    step = next(iter(make_train_dataloader(data, sampler, tokenizer.pad_token_id)))
    expected = sampler.schedule.loss_weights({t: len(d) for t, d in data.items()}, 0, 2)
    assert len({round(w, 6) for w in expected.values()}) > 1 and all(w != 1.0 for w in expected.values())
    for task, batch in step.items():
        assert batch["input_ids"].shape[0] == batch["labels"].shape[0]
        assert batch["loss_weight"].ndim == 0
        assert float(batch["loss_weight"]) == pytest.approx(expected[task]), f"{task}: the schedule's loss weight rides in the batch"
        if model.get_task(task).is_pair:
            assert "input_ids_b" in batch


@pytest.mark.parametrize(
    "schedule, kwargs, aggregator, accumulation",
    [
        ("proportional", None, "pcgrad", 3),
        ("annealed", None, "sum", 1),
        ("gradient_compromise", None, "pcgrad", 1),
        ("staggered", {"stages": [{"tasks": ["quora"], "epochs": 1}, {"schedule": "round_robin"}]}, "weighted_pcgrad", 1),
        ("round_robin", {"ratios": "1:3:1"}, "weighted_pcgrad", 1),
    ],
)
def test_schedules_train_with_surgery(tmp_path, tokenizer, schedule, kwargs, aggregator, accumulation):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model)
    args = hm.MultitaskTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=3,
        learning_rate=3e-3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        schedule=schedule,
        schedule_kwargs=kwargs,
        aggregator=aggregator,
        telemetry_steps=1,
    )
    trainer = hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    before = task_losses(model, data, tokenizer.pad_token_id)
    trainer.train()
    after = task_losses(model, data, tokenizer.pad_token_id)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(after.values()) < sum(before.values()), (before, after)
    assert sum(trainer.task_steps.values()) > 0
    if schedule == "proportional":
        widths = {len([k for k in r if k.startswith("conflict/grad_norm_")]) for r in trainer.telemetry.history}
        assert max(widths) > 1, "accumulated one-task steps give surgery several tasks"


def test_length_grouping_cuts_padding_and_keeps_coverage():
    import random

    rng = random.Random(0)
    sizes = {"a": 640, "b": 320}
    lengths = {t: [rng.randint(5, 60) for _ in range(n)] for t, n in sizes.items()}

    def padded_tokens(sampler):
        total, seen = 0, Counter()
        for step in sampler:
            for t in sizes:
                batch = [lengths[t][i] for task, i, _ in step if task == t]
                total += max(batch) * len(batch)
            seen.update((task, i) for task, i, _ in step if task == "a")
        return total, seen

    plain, seen_plain = padded_tokens(MultitaskStepSampler(sizes, 16, seed=4))
    grouped, seen_grouped = padded_tokens(MultitaskStepSampler(sizes, 16, seed=4, lengths=lengths, megabatch=10))
    assert grouped < 0.8 * plain, (grouped, plain)
    assert seen_grouped == seen_plain == Counter({("a", i): 1 for i in range(640)}), "still one pass over the largest task"
    s1 = MultitaskStepSampler(sizes, 16, seed=4, lengths=lengths)
    s2 = MultitaskStepSampler(sizes, 16, seed=4, lengths=lengths)
    assert list(s1) == list(s2)
    with pytest.raises(ValueError, match="one length per example"):
        MultitaskStepSampler(sizes, 16, lengths={"a": [1] * 640})
