import pytest

import hf_multitask as hm
from hf_multitask import TaskSpec


def test_reference_tasks_roundtrip_through_dict():
    for spec in hm.reference_tasks():
        assert TaskSpec.from_dict(spec.to_dict()) == spec
    sst, quora, sts = hm.reference_tasks()
    assert not sst.is_pair and quora.is_pair and sts.is_pair
    assert sst.metric == "accuracy" and sts.metric == "pearson"
    assert sts.label_range == (0.0, 5.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="1bad", kind="classification", num_labels=2, text_columns=("a",)), "must start with a letter"),
        (dict(name="t", kind="ranking", num_labels=2, text_columns=("a",)), "kind must be"),
        (dict(name="t", kind="classification", num_labels=1, text_columns=("a",)), "num_labels >= 2"),
        (dict(name="t", kind="regression", num_labels=3, text_columns=("a",)), "num_labels == 1"),
        (dict(name="t", kind="classification", num_labels=2, text_columns=("a", "b", "c")), "one or two"),
        (dict(name="t", kind="regression", num_labels=1, text_columns=("a",), label_range=(5, 0)), "low < high"),
        (dict(name="t", kind="classification", num_labels=2, text_columns=("a",), metric="pearson"), "not available"),
        (dict(name="t", kind="classification", num_labels=3, text_columns=("a", "b"), pair_encoding="cosine"), "binary"),
    ],
)
def test_invalid_specs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskSpec(**kwargs)


def test_single_text_column_string_is_accepted():
    spec = TaskSpec(name="t", kind="classification", num_labels=2, text_columns="text")
    assert spec.text_columns == ("text",)


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="Unknown TaskSpec field"):
        TaskSpec.from_dict({**hm.sst_task().to_dict(), "colour": "red"})


def test_config_rejects_duplicate_names_and_unknown_task_lookup():
    from conftest import tiny_encoder_config

    with pytest.raises(ValueError, match="unique"):
        hm.MultitaskConfig(encoder_config=tiny_encoder_config(), tasks=[hm.sst_task(), hm.sst_task()])
    config = hm.MultitaskConfig(encoder_config=tiny_encoder_config(), tasks=hm.reference_tasks())
    with pytest.raises(KeyError, match="knows"):
        config.get_task("mnli")
    with pytest.raises(ValueError, match="pair_encoding"):
        hm.MultitaskConfig(encoder_config=tiny_encoder_config(), tasks=hm.reference_tasks(), pair_encoding="late")
