"""The recipe's model flags. With ``--backbone`` an earlier run's saved model they apply where the
trained weights allow, are refused where they cannot, and a flag left out keeps the checkpoint's
setting; flags that name tasks must name the run's; a head type some tasks cannot take is said."""

import pytest
import torch
from conftest import recipe_flags
from transformers import BertTokenizerFast

import hf_multitask as hm
from hf_multitask.recipe import ModelArguments, RecipeError, load_model, run

TOPIC = hm.TaskSpec(name="topic", kind="classification", num_labels=3, text_columns=("text",), label_column="topic")


@pytest.fixture
def saved(tiny_backbone, tmp_path):
    """A multitask model as an earlier run leaves it in best/: cross-encoded pairs, [CLS] pooling, linear heads."""
    model = hm.MultitaskModel.from_encoder(tiny_backbone, tasks=hm.reference_tasks())
    model.save_pretrained(tmp_path / "best")
    BertTokenizerFast.from_pretrained(tiny_backbone).save_pretrained(tmp_path / "best")
    return model, str(tmp_path / "best")


def test_model_flags_apply_to_a_continued_model(saved):
    trained, folder = saved
    args = ModelArguments(backbone=folder, pooling="mean", head_dropout=0.3, adjustment_tasks=["sst"], pal_tasks=["sst"], pal_rank=8,
                          pal_heads=2)  # fmt: skip
    model, _ = load_model(args, [*hm.reference_tasks(), TOPIC])
    assert (model.config.pooling, model.config.head_dropout, model.config.adjustment_tasks) == ("mean", 0.3, ["sst"])
    assert model.config.pal_tasks == ["sst"] and model.config.pal_rank == 8 and model.task_names[-1] == "topic"
    assert torch.equal(model.adjustments["sst"].matrix, torch.eye(5)), "a new adjustment starts as a no-op"
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), f"{name} is kept from the trained model"
    kept, _ = load_model(ModelArguments(backbone=folder), hm.reference_tasks())
    assert (kept.config.pooling, kept.config.head_type, kept.config.pair_encoding) == ("cls", "linear", "cross"), "left out: kept"


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"pair_encoding": "bi"}, r"--pair_encoding bi: the trained pair task\(s\) \['quora', 'sts'\] of --backbone .* are cross-encoded"),
        ({"head_type": "mlp"}, r"--head_type mlp: the trained heads of --backbone .* are 'linear'"),
        ({"head_hidden_sizes": [16]}, r"--head_hidden_sizes \[16\]: the trained heads"),
    ],
)
def test_model_flags_the_trained_heads_cannot_follow_are_refused(flags, message, saved):
    with pytest.raises(RecipeError, match=message):
        load_model(ModelArguments(backbone=saved[1], **flags), hm.reference_tasks())


def test_a_misspelled_task_in_task_pair_encodings_is_an_error(tiny_backbone, tiny_data, tmp_path):
    """As --pal_tasks and every other flag that names tasks: {"stss": "cosine"} left STS cross-encoded, silently."""
    with pytest.raises(RecipeError, match=r"--task_pair_encodings names unknown task\(s\) \['stss'\]; the run's tasks are"):
        run([*recipe_flags(tiny_backbone, tiny_data, tmp_path / "out"), "--task_pair_encodings", '{"stss": "cosine"}'])
    with pytest.raises(RecipeError, match=r"--task_pair_encodings: expected a mapping \{task: one of \['cross', 'bi', 'cosine'\]\}"):
        run([*recipe_flags(tiny_backbone, tiny_data, tmp_path / "out"), "--task_pair_encodings", '{"sts": "cosin"}'])


def test_lstm_heads_say_which_tasks_take_a_linear_head(tiny_backbone, caplog):
    """--head_type lstm with bi-encoded pairs: the pair tasks take a linear head over [u, v, |u-v|, u*v]
    (the docs said an MLP head); the run says so instead of leaving it to be found."""
    import logging

    from hf_multitask.heads import LSTMHead, MLPHead

    with caplog.at_level(logging.WARNING, logger="hf_multitask.recipe"):
        model, _ = load_model(ModelArguments(backbone=str(tiny_backbone), head_type="lstm", pair_encoding="bi", head_hidden_sizes=[8, 4]),
                              hm.reference_tasks())  # fmt: skip
    assert isinstance(model.heads["sst"], LSTMHead) and isinstance(model.heads["quora"], MLPHead)
    assert len([m for m in model.heads["quora"].modules() if isinstance(m, torch.nn.Linear)]) == 1, "linear"
    said = [r.getMessage() for r in caplog.records if "--head_type lstm" in r.getMessage()]
    assert len(said) == 1 and "['quora', 'sts'] take a linear head" in said[0]
