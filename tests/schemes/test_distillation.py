"""Multitask distillation with teacher annealing (BAM!): each task type's target by hand, the
annealing schedule, the teacher cache and its refusals, resume, and the methods on top."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import assert_same_outputs, assert_same_weights, deterministic_model, toy_encoded, train_args

import hf_multitask as hm
from hf_multitask.distillation import DistillationError, attach_teachers, load_teacher, teacher_outputs
from hf_multitask.encoding import TEACHER_COLUMN, pad_float_arrays
from hf_multitask.task_types import IGNORE_INDEX, TaskType, get_task_type

SPEC = hm.sst_task()


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - x.max() - math.log(np.exp(x - x.max()).sum())


def _soft(x, t=1.0):
    return np.exp(_log_softmax(np.asarray(x) / t))


# --- each task type's target, by hand ------------------------------------------------------------


@pytest.mark.parametrize("gold_weight, temperature", [(0.0, 1.0), (0.25, 1.0), (0.25, 2.0), (1.0, 3.0)])
def test_classification_target_is_the_mixed_distribution(gold_weight, temperature):
    spec = hm.TaskSpec("c", "classification", num_labels=3, text_columns=("sentence",))
    logits = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.1, 2.0], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[2.0, 0.0, -1.0], [-1.0, 1.5, 0.5], [9.0, 9.0, 9.0]])
    labels = torch.tensor([0, 2, IGNORE_INDEX])  # the third row is unlabelled: left out
    expected = 0.0
    for i in range(2):
        target = (1 - gold_weight) * _soft(teacher[i].numpy(), temperature)
        target[int(labels[i])] += gold_weight
        expected += -(target * _log_softmax(logits[i].numpy())).sum()
    got = spec.task_type.distillation_loss(spec, logits, labels, teacher, gold_weight, temperature)
    assert float(got) == pytest.approx(expected / 2, rel=1e-6)


def test_classification_at_gold_weight_one_is_the_plain_loss_and_at_zero_ignores_the_gold():
    logits, teacher = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)), torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3])
    ct = SPEC.task_type
    assert torch.equal(ct.distillation_loss(SPEC, logits, labels, teacher, 1.0), ct.loss(SPEC, logits, labels))
    other = torch.tensor([4, 4, 4, 4])
    assert torch.equal(ct.distillation_loss(SPEC, logits, labels, teacher, 0.0), ct.distillation_loss(SPEC, logits, other, teacher, 0.0))


def test_regression_target_is_the_mixed_value_and_skips_missing_gold():
    spec = hm.sts_task()
    logits = torch.tensor([[1.0], [2.0], [4.0]])
    labels = torch.tensor([3.0, float("nan"), 1.0])
    teacher = torch.tensor([[2.0], [0.0], [5.0]])
    lam = 0.3
    expected = ((1.0 - (lam * 3 + (1 - lam) * 2)) ** 2 + (4.0 - (lam * 1 + (1 - lam) * 5)) ** 2) / 2
    got = spec.task_type.distillation_loss(spec, logits, labels, teacher, lam, temperature=5.0)  # no temperature for a value
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_token_classification_target_is_per_tagged_token():
    spec = hm.TaskSpec("pos", "token_classification", num_labels=2, text_columns=("tokens",), label_column="tags")
    logits = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]], [[0.0, 1.0], [3.0, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[0, IGNORE_INDEX, 1], [1, IGNORE_INDEX, IGNORE_INDEX]])  # 3 tagged tokens
    # the second example's teacher has 2 tokens (NaN past them, as the collator pads it)
    teacher = pad_float_arrays([[[0.0, 1.0], [1.0, 1.0], [2.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])
    lam, expected = 0.5, 0.0
    for i, j in ((0, 0), (0, 2), (1, 0)):
        target = (1 - lam) * _soft(teacher[i, j].numpy())
        target[int(labels[i, j])] += lam
        expected += -(target * _log_softmax(logits[i, j].numpy())).sum()
    got = spec.task_type.distillation_loss(spec, logits, labels, teacher, lam)
    assert float(got) == pytest.approx(expected / 3, rel=1e-6)
    # the stored outputs are cut to each example's tokens
    rows = spec.task_type.teacher_outputs(spec, logits.numpy(), {"attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])})
    assert [r.shape for r in rows] == [(3, 2), (2, 2)]


def test_multiple_choice_target_gives_masked_choices_no_probability():
    spec = hm.TaskSpec("mc", "multiple_choice", num_labels=3, text_columns=("context", "choices"), label_column="answer")
    logits = torch.tensor([[1.0, 0.0, -1e4], [0.5, 0.2, 0.1]])  # the first example has two choices
    teacher = torch.tensor([[0.0, 2.0, -1e4], [1.0, 1.0, 3.0]])
    labels = torch.tensor([0, 2])
    lam, expected = 0.2, 0.0
    for i in range(2):
        target = (1 - lam) * _soft(teacher[i].numpy())
        target[int(labels[i])] += lam
        assert target[2] < 1e-6 or i == 1
        expected += -(target * _log_softmax(logits[i].numpy())).sum()
    got = spec.task_type.distillation_loss(spec, logits, labels, teacher, lam)
    assert float(got) == pytest.approx(expected / 2, rel=1e-6)


def test_a_task_type_without_a_target_says_so_by_name():
    class Plain(TaskType):
        name = "plain_no_distil"

    with pytest.raises(NotImplementedError, match="'plain_no_distil' defines no distillation target"):
        Plain().distillation_loss(SPEC, torch.zeros(1, 5), torch.zeros(1), torch.zeros(1, 5), 0.5)


def test_a_third_party_task_type_can_define_its_own_target():
    base = get_task_type("classification")

    class Halved(type(base)):
        name = "halved_test"

        def distillation_loss(self, spec, logits, labels, teacher, gold_weight, temperature=1.0):
            return 0.5 * super().distillation_loss(spec, logits, labels, teacher, gold_weight, temperature)

    logits, teacher, labels = torch.randn(3, 5), torch.randn(3, 5), torch.tensor([0, 1, 2])
    assert torch.allclose(
        Halved().distillation_loss(SPEC, logits, labels, teacher, 0.4), 0.5 * base.distillation_loss(SPEC, logits, labels, teacher, 0.4)
    )


# --- the trainer: annealing, lambda = 1, resume, methods on top ------------------------------------


@pytest.fixture
def taught(tokenizer, tmp_path):
    """A student, its toy data with every task taught by a saved (untrained) teacher, and the teacher folders."""
    student = deterministic_model(seed=0)
    data = toy_encoded(tokenizer, student, n=32)
    teacher = deterministic_model(seed=7)
    teacher.save_pretrained(tmp_path / "teacher")
    teachers = {t: tmp_path / "teacher" for t in data}
    attached, stats = attach_teachers(
        data, teachers, student, cache_dir=tmp_path / "cache", pad_token_id=tokenizer.pad_token_id, progress=False
    )
    return student, data, attached, teachers, stats


def _train(model, data, tokenizer, out, **overrides):
    trainer = hm.MultitaskTrainer(model=model, args=train_args(out, **overrides), train_dataset=data, processing_class=tokenizer)
    trainer.train()
    return trainer


def test_teacher_annealing_rises_from_zero_at_the_first_step_to_one_at_the_last(taught, tokenizer, tmp_path, monkeypatch):
    student, _, attached, _, _ = taught
    seen = []
    original = type(SPEC.task_type).distillation_loss

    def spy(self, spec, logits, labels, teacher, gold_weight, temperature=1.0):
        seen.append(gold_weight)
        return original(self, spec, logits, labels, teacher, gold_weight, temperature)

    monkeypatch.setattr(type(SPEC.task_type), "distillation_loss", spy)
    _train(student, {"sst": attached["sst"]}, tokenizer, tmp_path / "out", max_steps=5, aggregator="sum")
    assert seen == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_gold_weight_one_ends_with_the_weights_of_a_run_without_teachers(taught, tokenizer, tmp_path):
    _, data, attached, _, _ = taught
    plain = _train(deterministic_model(seed=0), data, tokenizer, tmp_path / "a", aggregator="sum").model
    fixed = _train(deterministic_model(seed=0), attached, tokenizer, tmp_path / "b", aggregator="sum", distillation_gold_weight=1.0).model
    assert_same_weights(plain, fixed)
    annealed = _train(deterministic_model(seed=0), attached, tokenizer, tmp_path / "c", aggregator="sum").model
    assert not torch.equal(annealed.heads["sst"].net[-1].weight, plain.heads["sst"].net[-1].weight), "the teachers changed nothing"


def test_resume_mid_distillation_is_bit_exact(taught, tokenizer, tmp_path):
    _, _, attached, _, _ = taught
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3, aggregator="pcgrad", schedule="annealed")
    whole = _train(deterministic_model(seed=0), attached, tokenizer, tmp_path / "whole", **settings).model
    resumed = hm.MultitaskTrainer(model=deterministic_model(seed=0), args=train_args(tmp_path / "whole", **settings), train_dataset=attached,
                                  processing_class=tokenizer)  # fmt: skip
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-3"))
    assert_same_weights(whole, resumed.model)


@pytest.mark.parametrize("aggregator", ["sum", "pcgrad", "cagrad", "uw", "famo"])
@pytest.mark.parametrize("schedule", ["round_robin", "annealed"])
def test_every_method_and_schedule_trains_on_the_distillation_loss(taught, tokenizer, tmp_path, aggregator, schedule):
    _, _, attached, _, _ = taught
    student = deterministic_model(seed=0)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = _train(student, attached, tokenizer, tmp_path / "out", aggregator=aggregator, schedule=schedule, logging_steps=1)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items() if k.startswith("encoder."))


# --- the cache -------------------------------------------------------------------------------------


def test_cached_teacher_outputs_equal_a_fresh_teacher_forward(taught, tokenizer, tmp_path):
    student, data, attached, teachers, stats = taught
    assert stats["teacher_seconds"] > 0 and all(stats[f"teacher_seconds_{t}"] > 0 for t in data)
    again, stats2 = attach_teachers(
        data, teachers, student, cache_dir=tmp_path / "cache", pad_token_id=tokenizer.pad_token_id, progress=False
    )
    assert all(stats2[f"teacher_seconds_{t}"] == 0.0 for t in data), "the second attach read the cache"
    teacher = load_teacher(teachers["sst"], "sst", student)
    collate = hm.MultitaskCollator(tokenizer.pad_token_id, task="sst")
    for task in data:
        assert again[task][TEACHER_COLUMN] == attached[task][TEACHER_COLUMN], "the cache holds the floats it was given"
        # a freshly loaded teacher is another instance: its outputs equal the cached ones up to rounding (conftest.py)
        fresh = teacher_outputs(teacher, data[task], task, pad_token_id=tokenizer.pad_token_id, progress=False)
        for cached, new in zip(attached[task][TEACHER_COLUMN], fresh, strict=True):
            assert_same_outputs(torch.tensor(cached), torch.from_numpy(new), task)
    with torch.no_grad():  # and each equals the teacher's forward on that example alone (no padding)
        for i in (0, 5, 17):
            alone = teacher(**collate([data["sst"][i]])).logits[0]
            torch.testing.assert_close(torch.tensor(attached["sst"][i][TEACHER_COLUMN]), alone, rtol=1e-5, atol=1e-5)
    meta = json.loads((tmp_path / "cache" / "sst.json").read_text())
    assert meta["examples"] == len(data["sst"]) and meta["task"] == "sst"


def test_a_changed_training_file_or_teacher_is_refused_by_name(taught, tokenizer, tmp_path):
    student, data, _, teachers, _ = taught
    cache = tmp_path / "cache"
    changed = {"sst": data["sst"].select(range(len(data["sst"]) - 1)), "sts": data["sts"]}
    with pytest.raises(DistillationError, match=r"sst\.npz was computed on other training data for task 'sst'"):
        attach_teachers(changed, {"sst": teachers["sst"]}, student, cache_dir=cache, progress=False)
    other = deterministic_model(seed=8)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(DistillationError, match=r"sts\.npz was computed by another teacher than .*other for task 'sts'"):
        attach_teachers(data, {"sts": tmp_path / "other"}, student, cache_dir=cache, progress=False)


def test_a_cache_whose_teacher_folder_is_gone_stands_in_for_it(taught, tokenizer, tmp_path, caplog):
    student, data, attached, _, _ = taught
    with caplog.at_level("WARNING", logger="hf_multitask.distillation"):
        again, _ = attach_teachers(data, {"quora": tmp_path / "gone"}, student, cache_dir=tmp_path / "cache", progress=False)
    assert again["quora"][TEACHER_COLUMN] == attached["quora"][TEACHER_COLUMN]
    assert "teacher folder" in caplog.text and "is not there" in caplog.text
    with pytest.raises(DistillationError, match="gone: no such folder"):
        attach_teachers(data, {"quora": tmp_path / "gone"}, student, cache_dir=tmp_path / "empty", progress=False)


def test_a_teacher_that_does_not_hold_the_task_as_the_student_does_is_refused(taught, tmp_path):
    student, data, _, _, _ = taught
    wrong = hm.MultitaskModel(hm.MultitaskConfig(encoder_config=student.config.encoder_config,
                                                 tasks=[hm.TaskSpec("sst", "classification", num_labels=3, text_columns=("sentence",))]))  # fmt: skip
    wrong.save_pretrained(tmp_path / "wrong")
    with pytest.raises(DistillationError, match="has num_labels 3 where the student has 5"):
        attach_teachers({"sst": data["sst"]}, {"sst": tmp_path / "wrong"}, student, progress=False)
    with pytest.raises(DistillationError, match=r"has no task 'quora'"):
        attach_teachers({"quora": data["quora"]}, {"quora": tmp_path / "wrong"}, student, progress=False)
    with pytest.raises(DistillationError, match=r"task\(s\) \['nli'\] with no training data"):
        attach_teachers(data, {"nli": tmp_path / "wrong"}, student, progress=False)
