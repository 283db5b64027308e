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
    """At lambda = 1 the loss is the plain cross-entropy to the gold class, computed here by hand, and
    the mixed target approaches it continuously (lambda just below 1 takes the soft-target path, not
    the lambda >= 1 shortcut); at lambda = 0 the gold labels play no part."""
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3])
    # a teacher sure of another class than the gold one: at lambda < 1 the target must move (no draw of the global
    # generator, whose state depends on the tests that ran before)
    teacher = 10.0 * torch.nn.functional.one_hot((labels + 1) % 5, 5).float()
    ct = SPEC.task_type
    by_hand = -np.mean([_log_softmax(logits[i].numpy())[int(labels[i])] for i in range(4)])
    at_one = ct.distillation_loss(SPEC, logits, labels, teacher, 1.0)
    assert float(at_one) == pytest.approx(by_hand, rel=1e-6)
    assert float(ct.distillation_loss(SPEC, logits, labels, teacher, 1.0 - 1e-6)) == pytest.approx(by_hand, rel=1e-5)
    assert abs(float(ct.distillation_loss(SPEC, logits, labels, teacher, 0.5)) - by_hand) > 1e-2, "the teacher must count below 1"
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


def _target_of(task_type, spec, logits, labels, teacher, gold_weight, temperature=1.0):
    """The soft target the implementation trains towards, read off its gradient: for a mean
    cross-entropy over N rows, dL/dlogits = (softmax(logits) - target) / N."""
    logits = logits.clone().requires_grad_(True)
    task_type.distillation_loss(spec, logits, labels, teacher, gold_weight, temperature).backward()
    return torch.softmax(logits.detach(), dim=-1) - logits.grad * logits.shape[0]


def test_multiple_choice_target_gives_masked_choices_no_probability(tokenizer):
    """The teacher's outputs come from a real multiple-choice model (its padding choice masked), and
    the target checked is the implementation's own, read off the gradient of its loss."""
    import datasets

    spec = hm.TaskSpec("mc", "multiple_choice", num_labels=3, text_columns=("context", "choices"), label_column="answer")
    rows = [{"id": "a", "context": "the cat", "choices": ["cat", "dog"], "answer": 0},
            {"id": "b", "context": "the sun", "choices": ["cat", "dog", "sun"], "answer": 2}]  # fmt: skip
    encoded = hm.encode_task(hm.load_task_data(spec, datasets.Dataset.from_list(rows)), spec, tokenizer)
    torch.manual_seed(3)
    teacher_model = hm.MultitaskModel(hm.MultitaskConfig(encoder_config=deterministic_model().config.encoder_config, tasks=[spec]))
    stored = teacher_outputs(teacher_model.eval(), encoded, "mc", pad_token_id=tokenizer.pad_token_id, progress=False)
    teacher = pad_float_arrays([a.tolist() for a in stored])
    logits = torch.tensor([[1.0, 0.0, -1e4], [0.5, 0.2, 0.1]])  # the student's padding choice masked as its head masks it
    labels = torch.tensor([0, 2])
    lam = 0.2
    target = _target_of(spec.task_type, spec, logits, labels, teacher, lam)
    assert float(target[0, 2]) < 1e-6, "the padding choice got probability"
    torch.testing.assert_close(target.sum(-1), torch.ones(2), rtol=0, atol=1e-5)
    for i in range(2):
        n = len(rows[i]["choices"])
        expected = (1 - lam) * _soft(teacher[i, :n].numpy())
        expected[int(labels[i])] += lam
        torch.testing.assert_close(target[i, :n], torch.tensor(expected, dtype=torch.float32), rtol=1e-4, atol=1e-5)


def test_a_task_type_without_a_target_says_so_by_name():
    class Plain(TaskType):
        name = "plain_no_distil"

    with pytest.raises(NotImplementedError, match="'plain_no_distil' defines no distillation target"):
        Plain().distillation_loss(SPEC, torch.zeros(1, 5), torch.zeros(1), torch.zeros(1, 5), 0.5)


def _first_step_losses(trainer, student, gold_weight, task_type=None):
    """Each task's loss on the trainer's first step (one micro-batch), computed apart from the trainer
    with ``student`` (the weights before training): ``{task: (distillation loss, plain gold loss)}``,
    by each task's own type or by ``task_type``."""
    from hf_multitask.mixing import WINDOW_KEY

    batch = next(iter(trainer.get_train_dataloader()))
    out = {}
    with torch.no_grad():
        for task, inputs in batch.items():
            if task == WINDOW_KEY:
                continue
            inputs = dict(inputs)
            labels, teacher, weight = inputs.pop("labels"), inputs.pop(TEACHER_COLUMN), inputs.pop("loss_weight", None)
            inputs.pop("task", None)
            spec = student.get_task(task)
            kind = task_type or spec.task_type
            logits = student(task=task, **inputs).logits
            scale = 1.0 if weight is None else float(weight)
            out[task] = (scale * float(kind.distillation_loss(spec, logits, labels, teacher, gold_weight)),
                         scale * float(kind.loss(spec, logits, labels)))  # fmt: skip
    return out


def test_a_third_party_task_type_can_define_its_own_target(tokenizer, tmp_path):
    """A registered type with its own ``distillation_loss`` is what the trainer trains a taught task
    with: the logged first-step loss is its target's (half the classification one), not the built-in's."""
    import copy

    from conftest import tiny_encoder_config, toy_task_data

    from hf_multitask.task_types import TASK_TYPES, register_task_type

    base = get_task_type("classification")

    class Halved(type(base)):
        name = "halved_test"

        def distillation_loss(self, spec, logits, labels, teacher, gold_weight, temperature=1.0):
            return 0.5 * super().distillation_loss(spec, logits, labels, teacher, gold_weight, temperature)

    register_task_type(Halved)
    try:
        spec = hm.TaskSpec("sst", "halved_test", num_labels=5, text_columns=("sentence",))

        def model(seed):
            torch.manual_seed(seed)
            cfg = tiny_encoder_config()
            cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
            return hm.MultitaskModel(hm.MultitaskConfig(encoder_config=cfg, tasks=[spec], head_dropout=0.0))

        student, teacher = model(0), model(7)
        teacher.save_pretrained(tmp_path / "teacher")
        data = {"sst": hm.encode_task(toy_task_data(32)["sst"], spec, tokenizer)}
        attached, _ = attach_teachers(data, {"sst": tmp_path / "teacher"}, student, pad_token_id=tokenizer.pad_token_id, progress=False)
        initial = copy.deepcopy(student).eval()
        args = train_args(tmp_path / "out", aggregator="sum", max_steps=2, logging_steps=1, distillation_gold_weight=0.5)
        trainer = hm.MultitaskTrainer(model=student, args=args, train_dataset=attached, processing_class=tokenizer)
        expected = _first_step_losses(trainer, initial, 0.5)["sst"][0]
        trainer.train()
        logged = next(r["loss/sst"] for r in trainer.state.log_history if "loss/sst" in r)
        builtin = _first_step_losses(trainer, initial, 0.5, task_type=base)["sst"][0]
        assert logged == pytest.approx(expected, rel=1e-5) and expected == pytest.approx(0.5 * builtin, rel=1e-6)
    finally:
        TASK_TYPES.pop("halved_test", None)


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


@pytest.mark.parametrize("max_steps, expected", [(5, [0.0, 0.25, 0.5, 0.75, 1.0]), (1, [1.0])])
def test_teacher_annealing_rises_from_zero_at_the_first_step_to_one_at_the_last(taught, tokenizer, tmp_path, monkeypatch, max_steps,
                                                                                 expected):  # fmt: skip
    """Lambda follows the optimizer step, not the micro-batch or the task: with accumulation 2 and two
    tasks every task batch of a step has the step's lambda; a resumed run goes on where it stopped;
    a run of one step is its own last step (lambda 1; it was 0)."""
    student, _, attached, _, _ = taught
    seen = []
    for kind in {type(SPEC.task_type), type(hm.sts_task().task_type)}:
        original = kind.distillation_loss

        def spy(self, spec, logits, labels, teacher, gold_weight, temperature=1.0, _original=original):
            seen.append((spec.name, gold_weight))
            return _original(self, spec, logits, labels, teacher, gold_weight, temperature)

        monkeypatch.setattr(kind, "distillation_loss", spy)
    data = {"sst": attached["sst"], "sts": attached["sts"]}
    settings = dict(max_steps=max_steps, aggregator="sum", gradient_accumulation_steps=2, save_strategy="steps", save_steps=2)
    _train(student, data, tokenizer, tmp_path / "out", **settings)

    def per_step(calls):  # 2 micro-batches x 2 tasks per optimizer step
        assert len(calls) % 4 == 0
        steps = [calls[i : i + 4] for i in range(0, len(calls), 4)]
        assert all(sorted(name for name, _ in step) == ["sst", "sst", "sts", "sts"] for step in steps)
        assert all(len({lam for _, lam in step}) == 1 for step in steps), "one lambda per optimizer step"
        return [step[0][1] for step in steps]

    assert per_step(seen) == pytest.approx(expected)
    if max_steps > 2:
        seen.clear()
        resumed = hm.MultitaskTrainer(model=deterministic_model(seed=0), args=train_args(tmp_path / "out", **settings), train_dataset=data,
                                      processing_class=tokenizer)  # fmt: skip
        resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
        assert per_step(seen) == pytest.approx(expected[2:])


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
    """The first step's logged task losses are the distillation losses at lambda 0 (the teachers' targets
    alone), computed apart on the same batch, and not the gold losses: ignoring the teacher column fails."""
    import copy

    _, _, attached, _, _ = taught
    student = deterministic_model(seed=0)
    initial = copy.deepcopy(student).eval()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = hm.MultitaskTrainer(model=student, args=train_args(tmp_path / "out", aggregator=aggregator, schedule=schedule, logging_steps=1),
                                  train_dataset=attached, processing_class=tokenizer)  # fmt: skip
    expected = _first_step_losses(trainer, initial, 0.0)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    first = trainer.state.log_history[0]
    assert first["step"] == 1 and expected
    for task, (distilled, gold) in expected.items():
        assert first[f"loss/{task}"] == pytest.approx(distilled, rel=1e-5, abs=1e-6), task
        assert abs(distilled - gold) > 1e-3 * max(1.0, abs(gold)), f"{task}: the teacher's target must differ from the gold one here"
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


def test_a_teacher_folder_without_weights_lets_its_cache_stand_in(taught, tokenizer, tmp_path, caplog):
    """Issue 51: a teacher folder that exists but holds no model files any more (the weights deleted
    to save space) is a teacher that is gone: its cache stands in, as for a missing folder."""
    student, data, attached, _, _ = taught
    emptied = tmp_path / "emptied"
    emptied.mkdir()
    (emptied / "README.md").write_text("weights deleted\n")
    with caplog.at_level("WARNING", logger="hf_multitask.distillation"):
        again, stats = attach_teachers(data, {"sts": emptied}, student, cache_dir=tmp_path / "cache", progress=False)
    assert again["sts"][TEACHER_COLUMN] == attached["sts"][TEACHER_COLUMN] and stats["teacher_seconds_sts"] == 0.0
    assert "holds no model files" in caplog.text
    with pytest.raises(DistillationError, match="emptied: no config.json"):  # no cache: loading it says what is wrong
        attach_teachers(data, {"sts": emptied}, student, cache_dir=tmp_path / "none", progress=False)


def test_a_cache_of_another_format_is_refused_by_name(taught, tmp_path):
    """The cache's format version is checked on load: a file written by another version is refused, not misread."""
    student, data, _, teachers, _ = taught
    path = tmp_path / "cache" / "sst.npz"
    with np.load(path) as stored:
        arrays = {k: stored[k] for k in stored.files}
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.array(json.dumps({**meta, "format": meta["format"] + 1}, sort_keys=True))
    np.savez(path, **arrays)
    with pytest.raises(DistillationError, match=r"sst\.npz has format 2; this version of hf-multitask reads format 1"):
        attach_teachers({"sst": data["sst"]}, {"sst": teachers["sst"]}, student, cache_dir=tmp_path / "cache", progress=False)


def test_the_teachers_run_on_the_device_asked_for(taught, tmp_path, monkeypatch):
    """The teacher pass runs where training does (the recipe passes the training device): each teacher
    is moved there before its pass. CPU-only here, so the move is recorded, not made."""
    student, data, _, teachers, _ = taught
    moved = []
    real_to = torch.nn.Module.to

    def to(self, *args, **kwargs):
        if isinstance(self, hm.MultitaskModel) and args:
            moved.append(str(args[0]))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    attach_teachers({"sst": data["sst"]}, {"sst": teachers["sst"]}, student, progress=False, device="cuda:1")
    assert moved == ["cuda:1"]


def test_a_routed_teacher_is_checked_against_the_expert_that_runs_the_task(tmp_path):
    # review: the pair encoding was read off the routed model's shared expert, not the one that answers the task
    student = deterministic_model()  # quora: cross
    shared, bi = deterministic_model(seed=1), deterministic_model(seed=2, pair_encoding="bi")
    hm.RoutedMultitaskModel.from_models({"quora": bi}, shared).save_pretrained(tmp_path / "routed")
    with pytest.raises(DistillationError, match="pair encoding 'bi' where the student has 'cross'"):
        load_teacher(tmp_path / "routed", "quora", student)
    assert load_teacher(tmp_path / "routed", "sst", student).config.route("sst") == "multitask"
