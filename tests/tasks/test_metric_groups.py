"""Metric groups: tasks scored as one pooled metric (TweetEval's stance as five target heads)."""

from __future__ import annotations

import numpy as np
import pytest

from hf_multitask import MultitaskConfig, TaskSpec
from hf_multitask.predict import TaskPredictions, metrics_from_predictions
from hf_multitask.tasks import member_tasks, metric_groups


def _stance(name: str, group: str | None = "stance", **over) -> TaskSpec:
    fields = {"name": name, "kind": "classification", "num_labels": 3, "text_columns": ("text",), "metric": "stance_f1",
              "metric_group": group, **over}  # fmt: skip
    return TaskSpec(**fields)


class _Model:
    def __init__(self, specs: list[TaskSpec]) -> None:
        self.specs = {s.name: s for s in specs}

    def get_task(self, name: str) -> TaskSpec:
        return self.specs[name]


def _out(task: str, predictions: list[int], labels: list[int]) -> TaskPredictions:
    return TaskPredictions(task, [str(i) for i in range(len(labels))], np.array(predictions), np.array(labels), loss=0.5)


def test_a_group_is_scored_on_its_pooled_predictions_and_counts_once_in_overall():
    irony = TaskSpec(name="irony", kind="classification", num_labels=2, text_columns=("text",), metric="positive_f1")
    model = _Model([_stance("a"), _stance("b"), irony])
    outputs = {
        "a": _out("a", [1, 0, 2, 0], [1, 1, 2, 0]),
        "b": _out("b", [2, 1, 1], [2, 2, 1]),
        "irony": _out("irony", [1, 0], [1, 0]),
    }
    results = metrics_from_predictions(model, outputs)
    # by hand, pooled (7 examples): against TP 2 FP 1 FN 1 -> F1 2/3; favor TP 2 FP 0 FN 1 -> F1 0.8
    pooled = (2 / 3 + 0.8) / 2
    assert results["stance_stance_f1"] == pytest.approx(pooled) and results["stance_score"] == pytest.approx(pooled)
    # each target keeps its own metric; their mean (0.75) is not the pooled metric
    assert results["a_stance_f1"] == pytest.approx((2 / 3 + 1.0) / 2) and results["b_stance_f1"] == pytest.approx(2 / 3)
    assert results["overall"] == pytest.approx((pooled + 1.0) / 2), "the group counts once, not as two tasks"
    assert results["loss"] == pytest.approx(1.5)
    # without the group the same predictions give the mean over three tasks
    plain = metrics_from_predictions(_Model([_stance("a", None), _stance("b", None), irony]), outputs)
    assert "stance_score" not in plain and plain["overall"] == pytest.approx((5 / 6 + 2 / 3 + 1.0) / 3)


def test_metric_group_round_trips_and_is_absent_from_configs_without_one():
    assert "metric_group" not in _stance("a", None).to_dict(), "configs saved before the field existed stay identical"
    spec = _stance("a")
    assert TaskSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["metric_group"] == "stance"
    with pytest.raises(ValueError, match="metric_group 'two words' must be a name"):
        _stance("a", "two words")


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([_stance("a"), _stance("b", num_labels=4)], r"metric_group 'stance': its tasks \['a', 'b'\] must share kind, num_labels"),
        ([_stance("a"), _stance("b", metric="macro_f1")], "must share kind, num_labels and metric"),
        ([_stance("a"), _stance("stance", None)], "metric_group 'stance' is also a task's name"),
    ],
)
def test_a_group_that_cannot_be_pooled_is_refused_by_the_config(specs, message):
    with pytest.raises(ValueError, match=message):
        metric_groups(specs)
    with pytest.raises(ValueError, match=message):
        MultitaskConfig(encoder_config={"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1,
                                        "num_attention_heads": 2, "intermediate_size": 8}, tasks=specs)  # fmt: skip


def test_member_tasks_replaces_a_group_by_its_tasks():
    specs = [_stance("a"), TaskSpec(name="irony", kind="classification", num_labels=2, text_columns=("text",)), _stance("b")]
    assert metric_groups(specs) == {"stance": ["a", "b"]}
    assert member_tasks(["stance", "irony"], specs) == ["a", "b", "irony"]
    assert member_tasks(["irony"], specs) == ["irony"] and member_tasks([], specs) == []
