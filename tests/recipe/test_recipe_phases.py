"""What the recipe's phases take from the run's flags: a phase never undoes ``--trainable``,
and each phase's warm-up and learning rates are its own (issue 53)."""

from pathlib import Path

import pytest
import torch
from conftest import recipe_flags
from transformers import AutoModel, BertModel

import hf_multitask as hm
from hf_multitask.recipe import run


def _encoder_unchanged(model: hm.MultitaskModel, backbone) -> bool:
    start = BertModel.from_pretrained(backbone).state_dict()
    trained = {k.removeprefix("encoder."): v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    return all(torch.equal(trained[k], v) for k, v in start.items() if k in trained)


@pytest.mark.parametrize("phase", [["--lp_steps", "2"], ["--specialise_steps", "2", "--specialise_tasks", "sst"]], ids=["lp", "specialise"])
def test_a_phase_keeps_what_trainable_chose(phase, tiny_backbone, tiny_data, tmp_path):
    """--trainable heads with LP-FT or specialisation: the encoder never trains (the LP phase set every
    parameter trainable when it ended, and specialisation did so for its copies: full fine-tuning)."""
    out = tmp_path / "out"
    run([*recipe_flags(tiny_backbone, tiny_data, out), "--trainable", "heads", "--learning_rate", "1e-2", *phase])
    best = AutoModel.from_pretrained(out / "best")
    models = list(best.experts.values()) if isinstance(best, hm.RoutedMultitaskModel) else [best]
    for model in models:
        assert _encoder_unchanged(model, tiny_backbone), "a heads-only run trained the encoder"
    assert not _encoder_unchanged(AutoModel.from_pretrained(_full_run(tiny_backbone, tiny_data, tmp_path)), tiny_backbone)


def _full_run(backbone, data, tmp_path):
    """The control: the same run without --trainable heads moves the encoder (so the check above can fail)."""
    out = tmp_path / "full"
    run([*recipe_flags(backbone, data, out), "--learning_rate", "1e-2"])
    return out / "best"


def test_linear_probe_gives_back_each_parameters_requires_grad(tokenizer, tmp_path):
    from conftest import tiny_model, toy_encoded, train_args

    from hf_multitask.schemes.lpft import linear_probe

    model = tiny_model()
    model.add_lora(r=2, per_task=True)
    model.set_trainable("lora_and_heads")
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    linear_probe(model, toy_encoded(tokenizer, model, n=16), train_args(tmp_path, max_steps=1))
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def _phase_arguments(monkeypatch) -> dict:
    """{phase folder name: its MultitaskTrainingArguments}, spied from every trainer a run builds."""
    seen = {}
    original = hm.MultitaskTrainer.__init__

    def spy(self, *args, **kwargs):
        arguments = kwargs["args"]
        seen[Path(arguments.output_dir).name] = arguments
        return original(self, *args, **kwargs)

    monkeypatch.setattr(hm.MultitaskTrainer, "__init__", spy)
    return seen


EVERY_PHASE = ["--head_pretrain_steps", "2", "--head_pretrain_eval_steps", "1", "--intermediate_steps", "6", "--primary_tasks", "sts",
               "--lp_steps", "2", "--specialise_steps", "2", "--head_learning_rate", "0.5"]  # fmt: skip


def test_an_absolute_warm_up_is_the_multitask_phases_and_each_phase_trains_at_its_own_rate(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    """--warmup_steps 5: LP and head pretraining (heads alone) take no warm-up, the 6-step
    intermediate phase takes the 5 steps, specialisation (2 steps) takes none; it used to warm up
    for 5 steps in every phase, and a 2-step phase never reached its learning rate. A heads-only
    phase's learning rate is its own flag's, not --head_learning_rate's."""
    seen = _phase_arguments(monkeypatch)
    run([*recipe_flags(tiny_backbone, tiny_data, tmp_path / "out"), "--warmup_steps", "5", *EVERY_PHASE])
    warmups = {name: a.get_warmup_steps(a.max_steps) for name, a in seen.items()}
    assert warmups == {"heads-sst": 0, "heads-quora": 0, "heads-sts": 0, "intermediate": 5, "lp": 0, "out": 5, "specialise-sts": 0}
    for name in ("heads-sst", "lp"):
        assert seen[name].head_learning_rate is None and seen[name].layer_lr_decay == 1.0, name
    assert seen["lp"].learning_rate == 1e-3 and seen["heads-sst"].learning_rate == 1e-3
    assert seen["intermediate"].head_learning_rate == seen["out"].head_learning_rate == 0.5


def test_a_warm_up_ratio_reaches_every_phase_as_it_did(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    """--warmup_steps 0.1 (the TweetEval protocol): every phase warms up over a tenth of its own steps, as before."""
    seen = _phase_arguments(monkeypatch)
    run([*recipe_flags(tiny_backbone, tiny_data, tmp_path / "out"), "--warmup_steps", "0.1", *EVERY_PHASE])
    assert {name: a.warmup_steps for name, a in seen.items()} == dict.fromkeys(seen, 0.1) and len(seen) == 7
