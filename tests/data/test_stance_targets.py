"""TweetEval's stance as five target tasks (one head each) scored pooled: the specs, the reader, the
recipe's ``--stance targets``, the official test files and a primary group."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_model, train_args
from tweeteval_fixtures import SIZES, recipe_args, write_tweeteval

import hf_multitask as hm
from hf_multitask import tweeteval as te
from hf_multitask.recipe import RecipeError, run


@pytest.fixture(scope="module")
def tweeteval_dir(tmp_path_factory) -> Path:
    return write_tweeteval(tmp_path_factory.mktemp("tweeteval"))


def _run(*args: str) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run(list(args))


def test_stance_targets_are_five_tweet_only_tasks_of_one_group(tweeteval_dir):
    specs = hm.tweeteval_tasks(tweeteval_dir, ["irony", "stance"], stance="targets")
    assert [s.name for s in specs] == ["irony", *te.STANCE_TARGET_TASKS]
    for spec in specs[1:]:
        assert spec.metric_group == "stance" and spec.text_columns == ("text",) and spec.metric == "stance_f1"
        assert spec.label_names == ("none", "against", "favor")
    assert specs[0].metric_group is None
    train = te.load_tweeteval("stance_climate", tweeteval_dir, "train")
    assert len(train) == SIZES["train"] and "target" not in train.column_names and train["id"][0] == "climate-0"
    pair = te.load_tweeteval("stance", tweeteval_dir, "train")
    climate = pair.filter(lambda r: r["id"].startswith("climate-"))
    assert climate["text"] == train["text"] and climate["label"] == train["label"], "the same examples as the pair task's"
    with pytest.raises(ValueError, match="stance must be 'pair'"):
        hm.tweeteval_tasks(tweeteval_dir, stance="five")


def test_recipe_stance_targets_scores_stance_pooled_once_and_writes_the_official_files(tiny_backbone, tweeteval_dir, tmp_path):
    metrics = _run(*recipe_args(tiny_backbone, tweeteval_dir, tmp_path / "out", "--stance", "targets"))
    assert {f"eval_{t}_stance_f1" for t in te.STANCE_TARGET_TASKS} <= set(metrics)
    official = [metrics[f"eval_{t}_{te._METRIC[t]}"] for t in te.TWEETEVAL_TASKS]  # stance: the group's pooled metric
    assert metrics["eval_overall"] == pytest.approx(np.mean(official))
    assert te.benchmark_score(metrics) == pytest.approx(100 * metrics["eval_overall"])
    test = tmp_path / "out" / "predictions" / "test"
    written = sorted(p.relative_to(test).as_posix() for p in test.rglob("*.txt"))
    assert written == sorted([*(f"{t}.txt" for t in te.TWEETEVAL_TASKS if t != "stance"), *(f"stance/{t}.txt" for t in te.STANCE_TARGETS)])
    assert len((test / "stance" / "feminist.txt").read_text().splitlines()) == SIZES["test"]
    card = (tmp_path / "out" / "best" / "README.md").read_text()
    assert "| stance (pooled: stance_abortion, stance_atheism, stance_climate, stance_feminist, stance_hillary) | stance_f1 |" in card


def test_recipe_a_primary_group_chooses_the_checkpoint_and_writes_only_its_files(tiny_backbone, tweeteval_dir, tmp_path):
    metrics = _run(*recipe_args(tiny_backbone, tweeteval_dir, tmp_path / "out", "--stance", "targets", "--tasks", "irony", "stance",
                                "--primary_tasks", "stance", "--aggregator", "pcgrad_primary", "--schedule", "round_robin"))  # fmt: skip
    assert metrics["eval_overall"] == pytest.approx(metrics["eval_stance_score"])
    test = tmp_path / "out" / "predictions" / "test"
    assert sorted(p.relative_to(test).as_posix() for p in test.rglob("*.txt")) == sorted(f"stance/{t}.txt" for t in te.STANCE_TARGETS)
    with pytest.raises(RecipeError, match="--stance must be 'pair' or 'targets'"):
        _run(*recipe_args(tiny_backbone, tweeteval_dir, tmp_path / "bad", "--stance", "heads"))


def test_the_trainer_serves_a_primary_group_through_its_tasks(tmp_path):
    model = tiny_model(hm.tweeteval_tasks(None, ["irony", "stance"], stance="targets"))
    trainer = hm.MultitaskTrainer(model=model, args=train_args(tmp_path, primary_tasks=["stance"], aggregator="pcgrad_primary"))
    assert trainer.aggregator.primary == list(te.STANCE_TARGET_TASKS), "the group's gradients are the primary's"
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['emoji'\]; the model knows \[.*'stance \(group\)'\]"):
        hm.MultitaskTrainer(model=model, args=train_args(tmp_path, primary_tasks=["emoji"]))


def test_test_files_of_stance_asked_of_a_five_head_model_are_its_five_targets(tokenizer, tweeteval_dir, tmp_path):
    model = tiny_model(hm.tweeteval_tasks(tweeteval_dir, ["irony", "stance"], stance="targets")).eval()
    written = te.write_test_predictions(model, tokenizer, tweeteval_dir, tmp_path, tasks=["stance"], batch_size=4, progress=False)
    assert sorted(written) == sorted(f"stance/{t}" for t in te.STANCE_TARGETS)
    assert len(written["stance/hillary"].read_text().splitlines()) == SIZES["test"]
