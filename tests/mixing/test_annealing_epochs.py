"""``annealed`` in a one-epoch run: its alpha moves from epoch to epoch, so one epoch is the
proportional schedule; the run says so, ``anneal="steps"`` anneals within it, and every
multi-epoch plan stays what it was, bit for bit (issue 53, item 5)."""

import hashlib
import logging

import pytest
import yaml
from conftest import REPO, deterministic_model, toy_encoded, train_args

import hf_multitask as hm
from hf_multitask.mixing import MultitaskStepSampler

SIZES = {"a": 100, "b": 30, "c": 10}


def _fingerprint(schedule: str, epochs: int, **kwargs) -> str:
    sampler = MultitaskStepSampler(SIZES, 4, schedule=schedule, num_epochs=epochs, seed=0, **kwargs)
    plans = [[(slot.task, slot.examples, slot.loss_weight) for step in sampler.plan(e) for slot in step] for e in range(epochs)]
    return hashlib.sha256(repr(plans).encode()).hexdigest()[:16]


def test_epoch_annealed_plans_are_unchanged_and_one_epoch_is_proportional():
    """Recorded from the code before issue 53: committed benchmark cells (TweetEval: two epochs) depend on them."""
    assert _fingerprint("annealed", 2) == "f0b3cae86a8d4bbf"
    assert _fingerprint("annealed", 3) == "26748844bb8646d8"
    assert _fingerprint("gradient_compromise", 2) == "f358ad3efb1ef368"
    assert _fingerprint("annealed", 1) == _fingerprint("proportional", 1) == "be3da0ba6621e8de"


def test_anneal_over_steps_moves_the_draws_within_one_epoch():
    big = {"big": 900, "small": 100}
    sampler = MultitaskStepSampler(big, 4, schedule="annealed", schedule_kwargs={"anneal": "steps"}, num_epochs=1, seed=0)
    tasks = [step[0].task for step in sampler.plan(0)]
    third = len(tasks) // 3
    first, last = tasks[:third].count("big") / third, tasks[-third:].count("big") / third
    # alpha 1 -> 0.2: p(big) from 0.9 to 900^0.2 / (900^0.2 + 100^0.2) = 0.61 over the epoch
    assert first > 0.8 and last < 0.75 and first - last > 0.1, (first, last)
    epochs = MultitaskStepSampler(big, 4, schedule="annealed", num_epochs=1, seed=0).plan(0)
    assert [s[0].task for s in epochs][-third:].count("big") / third > 0.8, "anneal='epochs' keeps alpha at 1 in one epoch"
    with pytest.raises(ValueError, match="anneal"):
        MultitaskStepSampler(big, 4, schedule="proportional", schedule_kwargs={"anneal": "steps"})


@pytest.mark.parametrize(
    "overrides, warns",
    [({}, True), ({"schedule_epochs": 2}, False), ({"schedule_kwargs": {"anneal": "steps"}}, False)],
    ids=["one-epoch", "two-epochs", "anneal-steps"],
)
def test_a_one_epoch_annealed_run_says_it_is_proportional(overrides, warns, tokenizer, tmp_path, caplog):
    model = deterministic_model()
    args = train_args(tmp_path, max_steps=1, schedule="annealed", **overrides)
    trainer = hm.MultitaskTrainer(model=model, args=args, train_dataset=toy_encoded(tokenizer, model, n=16), processing_class=tokenizer)
    with caplog.at_level(logging.WARNING, logger="hf_multitask.trainer"):
        trainer.train()
    said = [r.getMessage() for r in caplog.records if "proportional schedule" in r.getMessage()]
    assert bool(said) == warns and (trainer.schedule_note is not None) == warns
    if warns:
        assert "--schedule annealed over 1 epoch(s)" in said[0] and '{"anneal": "steps"}' in said[0]


def test_no_config_claims_an_annealing_it_does_not_do():
    """A config that names the annealed schedule (in its settings or its file name) anneals: more than one
    epoch, or anneal over the steps. lpft_annealed, pal and two_step ran one epoch: proportional."""
    for path in sorted((REPO / "recipes" / "configs").glob("*.yaml")):
        settings = yaml.safe_load(path.read_text())
        if settings.get("schedule") == "annealed" or "annealed" in path.stem:
            epochs = float(settings.get("num_train_epochs", 1.0))
            by_steps = (settings.get("schedule_kwargs") or {}).get("anneal") == "steps"
            assert settings.get("schedule") == "annealed" and (epochs > 1 or by_steps), path.name


def test_anneal_over_steps_ends_where_max_steps_ends_the_run(tokenizer, tmp_path, monkeypatch):
    # review: with --max_steps inside the last planned epoch, alpha stopped short of 0.2 (0.48 at the last step)
    import math

    import torch

    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=64)
    args = train_args(tmp_path, max_steps=20, per_device_train_batch_size=8, schedule="annealed", schedule_kwargs={"anneal": "steps"})
    trainer = hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.get_train_dataloader()
    sampler = trainer._train_sampler
    steps_per_epoch = len(sampler.plan(0))
    assert sampler.num_epochs * steps_per_epoch > 20, "the run stops inside its last planned epoch"
    rows = []
    real = torch.multinomial

    def spy(weights, *a, **k):
        rows.append(weights.clone())
        return real(weights, *a, **k)

    monkeypatch.setattr(torch, "multinomial", spy)
    sampler.plan(20 // steps_per_epoch)
    last = rows[-1][(20 - 1) % steps_per_epoch]  # the weights of the run's 20th (last) draw: 64 ** alpha for each task
    assert math.log(float(last[0])) / math.log(64) == pytest.approx(0.2, abs=1e-9)
