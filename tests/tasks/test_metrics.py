import datasets
import numpy as np
import pytest
import scipy.stats
import torch
from conftest import deterministic_model, tiny_model, toy_encoded

import hf_multitask as hm
from hf_multitask.metrics import spearman


def test_accuracy_by_hand():
    assert hm.accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    with pytest.raises(ValueError, match="differ in length"):
        hm.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="zero examples"):
        hm.accuracy([], [])


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 5, 200)
    p = y + rng.normal(0, 1.5, 200)
    assert hm.pearson(p, y) == pytest.approx(scipy.stats.pearsonr(p, y)[0], abs=1e-12)
    ties = np.round(p)
    assert spearman(ties, y) == pytest.approx(scipy.stats.spearmanr(ties, y)[0], abs=1e-12)
    assert hm.pearson(np.ones(5), np.arange(5)) == 0.0, "constant predictions: r undefined, reported as 0"


def test_overall_score_is_the_published_formula():
    sst_acc, qqp_acc, sts_r = 0.52, 0.81, 0.64
    sst, _, sts = hm.reference_tasks()
    scores = {"sst": sst.task_type.score(sst, "accuracy", sst_acc), "quora": qqp_acc, "sts": sts.task_type.score(sts, "pearson", sts_r)}
    assert hm.overall_score(scores) == pytest.approx((sst_acc + qqp_acc + (sts_r + 1) / 2) / 3)
    assert sts.task_type.score(sts, "spearman", -1.0) == 0.0
    with pytest.raises(ValueError):
        hm.overall_score({})


def test_compute_task_metrics_and_the_task_types_predictions():
    sst, _, sts = hm.reference_tasks()
    logits = np.array([[0.1, 2.0, 0, 0, 0], [3.0, 0, 0, 0, 0]])
    assert sst.task_type.predictions(sst, logits, {}).tolist() == [1, 0]
    assert hm.compute_task_metrics(sst, [1, 0], [1, 1]) == {"accuracy": 0.5, "score": 0.5}
    m = hm.compute_task_metrics(sts, [1.0, 2.0, 3.5], [1.0, 2.5, 3.0])
    assert m["score"] == pytest.approx((m["pearson"] + 1) / 2)


def test_evaluate_and_prediction_files_match_a_hand_computation(tokenizer, tmp_path):
    import datasets

    model = tiny_model().eval()
    raw = datasets.Dataset.from_dict({"id": ["a", "b", "c"], "sentence": ["good", "bad film", "ok"], "label": [1, 2, 3]})
    enc = hm.encode_task(raw, hm.sst_task(), tokenizer)
    out = hm.predict(model, enc, "sst", pad_token_id=tokenizer.pad_token_id, batch_size=2, progress=False)
    manual = []
    for row in enc:
        logits = model(task="sst", input_ids=torch.tensor([row["input_ids"]]), token_type_ids=torch.tensor([row["token_type_ids"]])).logits
        manual.append(int(logits.argmax()))
    assert out.ids == ["a", "b", "c"] and out.predictions.tolist() == manual and out.labels.tolist() == [1, 2, 3]
    results = hm.evaluate(model, {"sst": enc}, pad_token_id=tokenizer.pad_token_id, progress=False)
    acc = float(np.mean(np.array(manual) == np.array([1, 2, 3])))
    assert results["sst_accuracy"] == pytest.approx(acc) and results["overall"] == pytest.approx(acc)
    path = hm.write_predictions(tmp_path / "out" / "sst-dev-output.csv", hm.sst_task(), out)
    lines = path.read_text().splitlines()
    assert lines[0] == "id \t Predicted_sentiment "
    assert lines[1:] == [f"{i} , {p} " for i, p in zip("abc", manual)]


def test_prediction_batches_by_length_and_returns_the_datasets_order(tokenizer):
    """Batches in order of token count pad less; ids, predictions, labels and loss come back as
    in dataset order (equal up to float rounding), for a single-sentence and a pair task. Rows
    that are not a datasets.Dataset are batched as given."""
    model = deterministic_model().eval()
    data = toy_encoded(tokenizer, model, n=40)
    widths: list[int] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)

    def run(task, rows, **kwargs):
        widths.clear()
        out = hm.predict(model, rows, task, pad_token_id=tokenizer.pad_token_id, batch_size=8, progress=False, **kwargs)
        return out, list(widths)

    for task in ("sst", "sts"):
        (plain, plain_widths), (by_length, sorted_widths) = run(task, data[task], by_length=False), run(task, data[task])
        assert sorted_widths == sorted(sorted_widths), "batches in order of length"
        assert sum(sorted_widths) < sum(plain_widths), "sorted batches pad less"
        assert by_length.ids == plain.ids == list(data[task]["id"])
        np.testing.assert_allclose(by_length.predictions, plain.predictions, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(by_length.labels, plain.labels)
        assert by_length.loss == pytest.approx(plain.loss, rel=1e-5)
    plain, plain_widths = run("sst", data["sst"], by_length=False)
    as_rows, rows_widths = run("sst", [data["sst"][i] for i in range(len(data["sst"]))])
    assert rows_widths == plain_widths and as_rows.ids == plain.ids
    np.testing.assert_array_equal(as_rows.predictions, plain.predictions)


def test_classification_prediction_files_hold_class_names_where_the_task_has_them(tmp_path):
    """As tasks.md and TaskSpec promise (and as tagger files and the pipeline already did): names
    when the task has label_names, indices otherwise."""
    from dataclasses import replace

    from hf_multitask.predict import TaskPredictions

    named = hm.TaskSpec("senti", "classification", num_labels=3, text_columns=("text",), label_names=("neg", "neu", "pos"))
    predictions = TaskPredictions("senti", ["a", "b", "c"], np.array([2, 0, 1]), None)
    assert hm.write_predictions(tmp_path / "n.csv", named, predictions).read_text().splitlines()[1:] == ["a , pos ", "b , neg ", "c , neu "]
    plain = replace(named, label_names=None)
    assert hm.write_predictions(tmp_path / "i.csv", plain, predictions).read_text().splitlines()[1:] == ["a , 2 ", "b , 0 ", "c , 1 "]


def test_conll_file_gives_each_sentence_its_own_words_when_ids_repeat(tmp_path):
    """Two validation sentences with one id: each line of the .conll file is its own sentence's
    (sentences were looked up by id, so both got the second one's words)."""
    from hf_multitask.predict import TaskPredictions
    from hf_multitask.recipe.outputs import write_prediction_files

    spec = hm.TaskSpec("pos", "token_classification", num_labels=2, text_columns=("tokens",), label_names=("N", "V"))
    validation = datasets.Dataset.from_dict(
        {"id": ["s1", "s1"], "tokens": [["dogs", "run"], ["cats", "sleep", "well"]], "label": [[0, 1], [0, 1, 1]]}
    )
    tags = np.empty(2, dtype=object)
    tags[0], tags[1] = np.array([0, 1]), np.array([0, 1, 1])
    write_prediction_files(
        tmp_path, [(spec, None, None)], {"pos": TaskPredictions("pos", ["s1", "s1"], tags, None)}, {"pos": (None, validation)}
    )
    blocks = (tmp_path / "predictions" / "pos-dev-output.conll").read_text().strip().split("\n\n")
    assert [[line.split("\t")[0] for line in block.splitlines()[1:]] for block in blocks] == [["dogs", "run"], ["cats", "sleep", "well"]]
