"""What the recipe's phases take from the run's flags: a phase never undoes ``--trainable``,
and each phase's warm-up and learning rates are its own (issue 53)."""

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
