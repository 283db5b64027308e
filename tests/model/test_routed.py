"""The routed checkpoint of two-step specialisation: one model, one expert per task."""

import pytest
import torch
from conftest import (
    assert_loads_without_package,
    assert_same_outputs,
    assert_same_weights,
    deterministic_model,
    tiny_model,
    toy_encoded,
    train_args,
)
from transformers import AutoModel

import hf_multitask as hm
from hf_multitask.schemes import route, specialise


def _batch(data, task, n=6):
    collate = hm.MultitaskCollator(0, task=task)
    return collate([data[task][i] for i in range(n)])


def _logits(model, data, task):
    model.eval()
    batch = _batch(data, task)
    batch.pop("labels", None)
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture
def experts(tokenizer):
    """Three models with different weights (as if specialised) and their toy data."""
    models = {seed: deterministic_model(seed=seed) for seed in (0, 1, 2)}
    data = toy_encoded(tokenizer, models[0], n=16)
    return models, data


def test_each_task_runs_its_own_expert_and_the_rest_run_the_multitask_model(experts, tmp_path):
    models, data = experts
    routed = route({"sst": models[1], "sts": models[2]}, models[0])
    assert list(routed.experts) == ["sst", "sts", "multitask"]
    for task, source in (("sst", models[1]), ("sts", models[2]), ("quora", models[0])):
        assert_same_outputs(_logits(routed, data, task), _logits(source, data, task), task)
    # the experts really differ, so the equalities above are about routing
    assert not torch.allclose(_logits(models[1], data, "sst"), _logits(models[0], data, "sst"))

    routed.save_pretrained(tmp_path / "routed")
    loaded = AutoModel.from_pretrained(tmp_path / "routed")
    assert isinstance(loaded, hm.RoutedMultitaskModel)
    assert_same_weights(loaded, routed)
    for task in ("sst", "quora", "sts"):
        assert_same_outputs(_logits(loaded, data, task), _logits(routed, data, task), task)
    batch = {k: v for k, v in _batch(data, "sst").items() if k not in ("labels", "task")}
    assert_loads_without_package(tmp_path / "routed", "sst", batch, _logits(routed, data, "sst"))


def test_fully_specialised_model_stores_no_shared_expert(experts):
    models, data = experts
    routed = route({"sst": models[0], "quora": models[1], "sts": models[2]})
    assert list(routed.experts) == ["sst", "quora", "sts"]
    assert_same_outputs(_logits(routed, data, "quora"), _logits(models[1], data, "quora"))
    half = route({t: m.to(torch.bfloat16) for t, m in zip(["sst", "quora", "sts"], models.values())})
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}, "experts keep the dtype of the models they come from"


def test_routed_model_evaluates_like_its_experts(experts):
    models, data = experts
    routed = route({"sst": models[1]}, models[2])
    scores = hm.evaluate(routed, data, progress=False)
    from_sst = hm.evaluate(models[1], {"sst": data["sst"]}, progress=False)
    from_rest = hm.evaluate(models[2], {"quora": data["quora"], "sts": data["sts"]}, progress=False)
    # the routed experts are copies (other instances): their outputs equal the sources' up to rounding (conftest.py)
    assert scores["sst_score"] == pytest.approx(from_sst["sst_score"], abs=1e-6)
    assert scores["quora_score"] == pytest.approx(from_rest["quora_score"], abs=1e-6)
    assert scores["sts_pearson"] == pytest.approx(from_rest["sts_pearson"], abs=1e-6)


def test_routed_model_errors(experts):
    models, data = experts
    with pytest.raises(ValueError, match="pass the multitask model"):
        route({"sst": models[1]})
    with pytest.raises(ValueError, match="at least one"):
        route({})
    routed = route({"sst": models[1]}, models[0])
    with pytest.raises(KeyError, match="Unknown task 'nli'"):
        routed(task="nli", **{k: v for k, v in _batch(data, "sst").items() if k not in ("labels", "task")})
    other = tiny_model(tasks=[hm.sst_task()])
    with pytest.raises(ValueError, match="different tasks"):
        route({"sst": other}, models[0])
    with pytest.raises(ValueError, match="not tasks of the expert config"):
        hm.RoutedMultitaskConfig(expert_config=models[0].config, specialised_tasks=["nli"])


def test_specialise_saves_a_routed_checkpoint(tmp_path, tokenizer):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=32)
    special = specialise(model, data, train_args(tmp_path, max_steps=2, learning_rate=1e-3), tasks=["sst"],
                         save_dir=tmp_path / "special", processing_class=tokenizer)  # fmt: skip
    loaded = AutoModel.from_pretrained(tmp_path / "special" / "routed")
    assert list(loaded.experts) == ["sst", "multitask"]
    assert_same_outputs(_logits(loaded, data, "sst"), _logits(special["sst"], data, "sst"))
    assert_same_outputs(_logits(loaded, data, "sts"), _logits(model, data, "sts"), "unspecialised tasks keep the multitask model")
    assert not torch.allclose(_logits(loaded, data, "sst"), _logits(model, data, "sst"), rtol=1e-3, atol=1e-4), "specialisation moved sst"
    with pytest.raises(KeyError, match="no training data"):
        specialise(model, data, train_args(tmp_path), tasks=["nli"])
