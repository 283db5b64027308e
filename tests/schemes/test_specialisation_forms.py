"""Two-step specialisation in its three forms (whole encoder, PAL, LoRA) and the one place that packs
the kept experts into the served model (issue 49)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import assert_same_outputs, deterministic_model, toy_encoded, train_args
from transformers import AutoModel, TrainerCallback

import hf_multitask as hm
from hf_multitask.schemes.specialise import Specialisation, better_experts, specialise_experts

TASKS = ("sst", "quora", "sts")


def _setup(tokenizer, tmp_path):
    model = deterministic_model(seed=11)
    data = toy_encoded(tokenizer, model, n=16)
    args = train_args(tmp_path / "phase", max_steps=3, learning_rate=5e-3, length_grouping=False)
    return model, data, args


def _batches(tokenizer, model, data):
    collate = hm.MultitaskCollator(tokenizer.pad_token_id)
    return {t: collate([data[t][i] for i in range(8)]) for t in TASKS}


def _logits(model, batches, tasks=TASKS):
    model.eval()
    with torch.no_grad():
        return {t: model(task=t, **batches[t]).logits for t in tasks}


class Snapshots(TrainerCallback):
    """The model's weights when each task's training begins and ends."""

    def __init__(self) -> None:
        self.runs: list[tuple[dict, dict]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.runs.append(({k: v.detach().clone() for k, v in model.state_dict().items()}, {}))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.runs[-1][1].update({k: v.detach().clone() for k, v in model.state_dict().items()})


@pytest.mark.parametrize("form", ["pal", "lora"])
def test_a_task_specialisation_changes_only_its_own_modules_and_head(form, tokenizer, tmp_path):
    model, data, args = _setup(tokenizer, tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots = Snapshots()
    result = specialise_experts(model, data, args, form=form, tasks=["quora", "sst"], rank=8, pal_heads=2, callbacks=[snapshots])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "the multitask model is not changed"
    modules = result.modules
    assert len(snapshots.runs) == 2
    for task, (start, end) in zip(["quora", "sst"], snapshots.runs):
        changed = [name for name in start if not torch.equal(start[name], end[name])]
        assert {modules._owner(name) for name in changed} == {task}, f"{task}'s run changed {changed}"
        assert any(n.startswith("heads.") for n in changed) and any(not n.startswith("heads.") for n in changed), (task, changed)
    # the encoder and the unspecialised task are the multitask model's, bit for bit
    final = modules.state_dict()
    for name, value in before.items():
        if model._owner(name) not in ("quora", "sst"):
            match = name if name in final else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
            assert torch.equal(final[match], value), name
    assert sorted(modules.routed_tasks) == ["quora", "sst"]


@pytest.mark.parametrize("form", ["encoder", "pal", "lora"])
def test_the_packed_model_answers_each_task_as_its_expert_and_the_rest_as_the_multitask_model(form, tokenizer, tmp_path):
    model, data, args = _setup(tokenizer, tmp_path)
    result = specialise_experts(model, data, args, form=form, tasks=["sst", "quora"], rank=8, pal_heads=2)
    batches = _batches(tokenizer, model, data)
    shared = _logits(model, batches)
    for keep in (["sst", "quora"], ["quora"], []):
        packed = result.pack(keep)
        got = _logits(packed, batches)
        for task in TASKS:
            want = _logits(result.expert(task), batches, [task])[task] if task in keep else shared[task]
            assert_same_outputs(got[task], want, f"{form} keep={keep} {task}")
        if keep:
            assert (got[keep[0]] - shared[keep[0]]).abs().max() > 1e-4, "the expert differs from the multitask model"
            folder = tmp_path / f"{form}-{'-'.join(keep)}"
            packed.save_pretrained(folder)
            loaded = AutoModel.from_pretrained(folder)
            for task, value in _logits(loaded, batches).items():
                assert_same_outputs(value, got[task], f"{form} keep={keep} {task}, saved and loaded")
    if form == "encoder":
        assert isinstance(result.pack(["sst"]), hm.RoutedMultitaskModel)
    else:  # one backbone: a plain MultitaskModel with the kept tasks' modules
        packed = result.pack(["sst"])
        assert isinstance(packed, hm.MultitaskModel) and packed.routed_tasks == ["sst"]
        assert packed.parameter_counts()["encoder"] == model.parameter_counts()["encoder"]
    assert result.pack([]) is model
    with pytest.raises(KeyError, match="sts"):
        result.pack(["sts"])


@pytest.mark.parametrize("form", ["encoder", "pal"])
def test_a_batch_that_mixes_tasks_answers_as_one_task_at_a_time(form, tokenizer, tmp_path):
    model, data, args = _setup(tokenizer, tmp_path)
    served = specialise_experts(model, data, args, form=form, tasks=["sst", "quora"], rank=8, pal_heads=2).pack(["sst", "quora"])
    pipe = served.pipeline(tokenizer)
    inputs = ["good fun film", ("good plot", "bad plot"), "awful sad", ("fine", "dull fun")]
    mixed = pipe(inputs, batch_size=4)
    for item, answer in zip(inputs, mixed):
        for task, value in answer.items():
            alone = pipe(item, tasks=[task])[task]
            assert value.get("label") == alone.get("label"), (task, item)
            for key in ("score", "value"):
                if key in value:
                    assert abs(value[key] - alone[key]) < 1e-5, (task, item, key)


def test_specialise_experts_refuses_what_it_cannot_do(tokenizer, tmp_path):
    model, data, args = _setup(tokenizer, tmp_path)
    with pytest.raises(ValueError, match="form"):
        specialise_experts(model, data, args, form="adapter")
    pal = deterministic_model(pal_tasks=["sst"])
    with pytest.raises(ValueError, match="PALs already"):
        specialise_experts(pal, data, args, form="pal")
    with pytest.raises(KeyError, match="nope"):
        specialise_experts(model, data, args, tasks=["nope"])


def test_better_experts_decides_a_metric_group_together():
    class Preds:
        def __init__(self, p, y):
            import numpy as np

            self.predictions, self.labels, self.loss = np.array(p), np.array(y), None

    spec = lambda n, group=None: hm.TaskSpec(n, "classification", num_labels=2, text_columns=("text",), metric_group=group)  # noqa: E731
    model = hm.MultitaskModel(hm.MultitaskConfig(encoder_config=deterministic_model().config.encoder_config,
                                                 tasks=[spec("a"), spec("b", "g"), spec("c", "g")]))  # fmt: skip
    gold = [0, 1, 0, 1]
    shared = {"a": Preds([0, 0, 0, 0], gold), "b": Preds([0, 1, 0, 1], gold), "c": Preds([0, 0, 0, 0], gold)}
    expert = {"a": Preds([0, 1, 0, 1], gold), "b": Preds([0, 0, 0, 0], gold), "c": Preds([0, 1, 0, 1], gold)}
    # a wins alone; the group g (b worse, c better) ties on its pooled score: not kept
    assert better_experts(model, ["a", "b", "c"], expert, shared) == ["a"]
    assert better_experts(model, ["a", "c"], expert, shared) == ["a"], "a group is kept only when every member has an expert"
    assert isinstance(Specialisation(form="encoder", multitask=model, tasks=[]), Specialisation)


@pytest.mark.parametrize("form", ["pal", "lora"])
def test_the_new_modules_do_not_depend_on_what_the_process_drew_before(form, tokenizer, tmp_path):
    # review: a run resumed from a checkpoint reaches the specialisation with another global random state than one
    # that never stopped; the experts' random initialisation must come from the run's seed alone
    model, data, args = _setup(tokenizer, tmp_path)
    built = []
    for draw in (1, 7):
        torch.manual_seed(draw)
        torch.rand(draw)
        result = specialise_experts(model, data, replace(args, max_steps=1), form=form, tasks=["sst"], rank=8, pal_heads=2)
        built.append(result.modules.state_dict())
    assert built[0].keys() == built[1].keys()
    for name in built[0]:
        assert torch.equal(built[0][name], built[1][name]), name


def test_adapter_forms_train_at_the_specialisation_rate_not_the_head_rate(tiny_backbone, tiny_data, tmp_path):
    # review: --head_learning_rate (the rate of task-owned parameters) replaced --specialise_learning_rate in the PAL form
    from conftest import recipe_flags

    from hf_multitask.recipe import run

    out = tmp_path / "out"
    run([*recipe_flags(tiny_backbone, tiny_data, out), "--specialise_steps", "2", "--specialise_form", "pal", "--specialise_rank", "8",
         "--pal_heads", "2", "--specialise_learning_rate", "0", "--head_learning_rate", "0.5"])  # fmt: skip
    served = AutoModel.from_pretrained(out / "best")
    assert all(not p.abs().sum() for n, p in served.named_parameters() if ".up." in n), "PALs at rate 0 stay at their zero V_D"
