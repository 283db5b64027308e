"""The "multitask-text" pipeline, one encoder pass for all heads, and loading the pipeline
from a checkpoint without the package."""

import json
import os
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
import torch
from conftest import WITHOUT_PACKAGE, tiny_encoder_config
from transformers import pipeline

import hf_multitask as hm

SENTI = hm.TaskSpec("senti", "classification", num_labels=2, text_columns=("text",), label_names=("neg", "pos"))
SCORE = hm.TaskSpec("score", "regression", num_labels=1, text_columns=("text",))
POS = hm.TaskSpec("pos", "token_classification", num_labels=3, text_columns=("tokens",), label_names=("N", "V", "O"))
PARA = hm.TaskSpec("para", "classification", num_labels=2, text_columns=("a", "b"))
MC = hm.TaskSpec("mc", "multiple_choice", num_labels=3, text_columns=("context", "choices"))
SENTENCES = ["the cat runs", "a big dog eats the cat", "dogs see"]


def _model(**kwargs):
    torch.manual_seed(0)
    cfg = tiny_encoder_config("bert")
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
    return hm.MultitaskModel(hm.MultitaskConfig(encoder_config=cfg, tasks=[SENTI, SCORE, POS, PARA, MC], head_dropout=0.0, **kwargs)).eval()


@pytest.fixture
def saved(tmp_path, tokenizer):
    model = _model()
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    return model, tmp_path / "m"


def _predict(model, tokenizer, spec, rows):
    enc = hm.encode_task(datasets.Dataset.from_list([{"id": str(i), **r} for i, r in enumerate(rows)]), spec, tokenizer)
    return hm.predict(model, enc, spec.name, pad_token_id=tokenizer.pad_token_id, progress=False).predictions


def test_pipeline_answers_equal_predict_for_every_task_type(saved, tokenizer):
    model, folder = saved
    pipe = pipeline("multitask-text", model=str(folder))
    assert isinstance(pipe, hm.MultitaskPipeline)
    answers = pipe(SENTENCES, batch_size=2)
    assert [set(a) for a in answers] == [{"senti", "score", "pos"}] * 3, "a string goes to every one-text task"
    senti = _predict(model, tokenizer, SENTI, [{"text": s} for s in SENTENCES])
    score = _predict(model, tokenizer, SCORE, [{"text": s} for s in SENTENCES])
    tags = _predict(model, tokenizer, POS, [{"tokens": s.split()} for s in SENTENCES])
    for i, a in enumerate(answers):
        assert a["senti"]["label"] == SENTI.label_names[senti[i]] and 0.5 <= a["senti"]["score"] <= 1
        assert a["score"]["value"] == pytest.approx(float(score[i]), rel=1e-5, abs=1e-6)
        assert [w["word"] for w in a["pos"]] == SENTENCES[i].split()
        assert [w["tag"] for w in a["pos"]] == [POS.label_names[t] for t in tags[i]]
    pair = pipe(("the cat runs", "a cat runs"))
    assert set(pair) == {"para"}
    assert pair["para"]["label"] == int(_predict(model, tokenizer, PARA, [{"a": "the cat runs", "b": "a cat runs"}])[0])
    mc = pipe({"mc": {"context": "the cat", "choices": ["runs", "eats", "sees"]}, "senti": "good"})
    expected = int(_predict(model, tokenizer, MC, [{"context": "the cat", "choices": ["runs", "eats", "sees"]}])[0])
    assert mc["mc"]["choice"] == expected and mc["mc"]["text"] == ["runs", "eats", "sees"][expected] and set(mc) == {"mc", "senti"}
    assert set(pipe("the cat", tasks=["senti"])) == {"senti"}
    with pytest.raises(ValueError, match=r"tasks \['para'\] cannot answer"):
        pipe("the cat", tasks=["para"])
    with pytest.raises(ValueError, match="unknown task"):
        pipe({"nope": "x"})


def test_one_encoder_pass_equals_per_task_forwards(tokenizer):
    model = _model(pal_tasks=["score"])
    model2 = _model()
    calls = []
    for m in (model, model2):
        m.encoder.register_forward_hook(lambda *a: calls.append(1))
    rows = [{"text": s} for s in SENTENCES]
    batches = {}
    for spec in (SENTI, SCORE):
        enc = hm.encode_task(datasets.Dataset.from_list([{"id": str(i), **r} for i, r in enumerate(rows)]), spec, tokenizer)
        batches[spec.name] = hm.MultitaskCollator(tokenizer.pad_token_id)([enc[i] for i in range(3)])
    for m, expected_calls in ((model2, 1), (model, 2)):  # PAL on `score`: its encoder is routed, so it runs alone
        calls.clear()
        shared = m.forward_all({"senti": batches["senti"], "score": batches["score"]})
        assert len(calls) == expected_calls
        for task in ("senti", "score"):
            torch.testing.assert_close(shared[task], m(task=task, **batches[task]).logits, rtol=1e-5, atol=1e-6)


def test_pipeline_loads_from_the_checkpoint_without_the_package(saved, tmp_path):
    model, folder = saved
    from transformers import AutoTokenizer

    expected = model.pipeline(AutoTokenizer.from_pretrained(folder))(SENTENCES)
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    config = json.loads((folder / "config.json").read_text())
    assert (
        config["custom_pipelines"]["multitask-text-remote"]["impl"] == "pipeline.MultitaskPipeline" and (folder / "pipeline.py").is_file()
    )
    script = WITHOUT_PACKAGE + textwrap.dedent(
        f"""
        import json
        from transformers import pipeline
        pipe = pipeline(model={str(folder)!r}, trust_remote_code=True)
        assert "hf_multitask" not in sys.modules and type(pipe).__name__ == "MultitaskPipeline"
        got = pipe({SENTENCES!r})
        expected = json.load(open({str(tmp_path / "expected.json")!r}))
        for g, e in zip(got, expected):
            assert g["senti"]["label"] == e["senti"]["label"] and abs(g["score"]["value"] - e["score"]["value"]) < 1e-5
            assert [w["tag"] for w in g["pos"]] == [w["tag"] for w in e["pos"]]
        print("PIPELINE-OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "PIPELINE-OK" in proc.stdout, proc.stderr[-3000:]


def test_token_answers_follow_the_words_even_when_truncated(saved):
    _, folder = saved
    pipe = pipeline("multitask-text", model=str(folder))
    long = " ".join(["cat"] * 40)
    answer = pipe({"pos": long}, max_length=16)["pos"]
    # "cat" is 3 word pieces here: 16 tokens hold [CLS], 4 whole words and [SEP]
    assert len(answer) == 5 and all(a["word"] == "cat" for a in answer)


# --------------------------------------------------------------------------- partial labels
TOPIC = hm.TaskSpec("topic", "classification", num_labels=3, text_columns=("text",), label_column="topic")
MOOD = hm.TaskSpec("mood", "classification", num_labels=2, text_columns=("text",), label_column="mood")
LEVEL = hm.TaskSpec("level", "regression", num_labels=1, text_columns=("text",), label_column="level")


def _partial_rows():
    # the topic label is missing on rows 1 and 3, the mood label on row 2, the level on row 0
    return [
        {"id": "0", "text": "the cat runs", "topic": "0", "mood": "1", "level": ""},
        {"id": "1", "text": "a dog eats", "topic": "", "mood": "0", "level": "0.5"},
        {"id": "2", "text": "big cats see", "topic": "2", "mood": "", "level": "1.5"},
        {"id": "3", "text": "a cat sees", "topic": None, "mood": "1", "level": "2.0"},
    ]


def test_partial_labels_are_masked_never_filled(tokenizer):
    data = hm.partial_label_tasks(datasets.Dataset.from_list(_partial_rows()), [TOPIC, MOOD, LEVEL])
    assert data["topic"]["label"] == [0, -100, 2, -100] and data["mood"]["label"] == [1, 0, -100, 1]
    assert np.isnan(data["level"]["label"][0]) and data["level"]["label"][1:] == [0.5, 1.5, 2.0]
    with pytest.raises(hm.DataError, match="empty label"):
        hm.load_task_data(TOPIC, datasets.Dataset.from_list(_partial_rows()), strict=True)
    torch.manual_seed(0)
    cfg = tiny_encoder_config("bert")
    model = hm.MultitaskModel(hm.MultitaskConfig(encoder_config=cfg, tasks=[TOPIC, MOOD, LEVEL], head_dropout=0.0))
    model.eval()
    for spec in (TOPIC, LEVEL):
        enc = hm.encode_task(data[spec.name], spec, tokenizer)
        batch = hm.MultitaskCollator(tokenizer.pad_token_id)([enc[i] for i in range(4)])
        model.zero_grad()
        model(task=spec.name, **batch).loss.backward()
        full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        keep = [i for i in range(4) if spec.task_type.has_labels(spec, batch["labels"][i : i + 1])]
        sub = hm.MultitaskCollator(tokenizer.pad_token_id)([enc[i] for i in keep])
        model.zero_grad()
        model(task=spec.name, **sub).loss.backward()
        for n, p in model.named_parameters():
            if p.grad is not None and n.startswith("heads."):
                # the masked rows change nothing: the gradient is the labelled rows' alone
                torch.testing.assert_close(full[n], p.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=n, t=spec.name: f"{t} {n}: {m}")
    predictions = {}
    scores = hm.evaluate(model, {"topic": hm.encode_task(data["topic"], TOPIC, tokenizer)}, pad_token_id=0, progress=False,
                         predictions=predictions)  # fmt: skip
    pred, gold = np.asarray(predictions["topic"].predictions), np.asarray(data["topic"]["label"])
    labelled = gold != -100
    assert labelled.sum() == 2
    assert scores["topic_accuracy"] == pytest.approx(float(np.mean(pred[labelled] == gold[labelled]))), (
        "metrics score the labelled rows only"
    )


def test_the_evaluation_loss_is_the_mean_over_the_labels_that_are_there(tokenizer):
    """A partial-label task's evaluation loss is its loss on all its rows at once, whatever the
    batches: each batch's mean is weighted by the labels it holds (TaskType.loss_terms), not
    by its rows (batches of 3 hold 2 and 0 topic labels, 2 and 1 levels)."""
    data = hm.partial_label_tasks(datasets.Dataset.from_list(_partial_rows()), [TOPIC, LEVEL])
    torch.manual_seed(0)
    model = hm.MultitaskModel(hm.MultitaskConfig(encoder_config=tiny_encoder_config("bert"), tasks=[TOPIC, LEVEL], head_dropout=0.0))
    model.eval()
    for spec in (TOPIC, LEVEL):
        enc = hm.encode_task(data[spec.name], spec, tokenizer)
        with torch.no_grad():
            whole = float(model(task=spec.name, **hm.MultitaskCollator(tokenizer.pad_token_id)([enc[i] for i in range(4)])).loss)
        for by_length in (False, True):
            out = hm.predict(model, enc, spec.name, pad_token_id=tokenizer.pad_token_id, batch_size=3, progress=False, by_length=by_length)
            assert out.loss == pytest.approx(whole, rel=1e-5), (spec.name, by_length)


def test_a_task_with_no_label_in_a_step_contributes_no_row(tmp_path, tokenizer):
    from conftest import train_args

    data = hm.partial_label_tasks(datasets.Dataset.from_list(_partial_rows()), [TOPIC, MOOD])
    enc = {t: hm.encode_task(d, spec, tokenizer) for (t, d), spec in zip(data.items(), (TOPIC, MOOD))}
    torch.manual_seed(0)
    model = hm.MultitaskModel(hm.MultitaskConfig(encoder_config=tiny_encoder_config("bert"), tasks=[TOPIC, MOOD], head_dropout=0.0))
    trainer = hm.MultitaskTrainer(model=model, args=train_args(tmp_path, aggregator="pcgrad", length_grouping=False),
                                  train_dataset=enc, processing_class=tokenizer)  # fmt: skip
    collate = hm.MultitaskCollator(tokenizer.pad_token_id)
    step = {"topic": collate([enc["topic"][1], enc["topic"][3]]), "mood": collate([enc["mood"][0], enc["mood"][1]])}
    trainer.training_step(trainer.model, step)
    assert trainer.aggregator.last_info["tasks"] == ["mood"], "topic had no label in the step: no gradient row"
    assert all(p.grad is None or not p.grad.any() for p in model.task_parameters("topic")), "the masked head gets no gradient"
    assert any(p.grad is not None and p.grad.any() for p in model.task_parameters("mood"))


def test_the_pipeline_takes_transformers_text_and_text_pair_convention(saved, tokenizer):
    """A new user's first try, transformers' text-classification inputs, gives what the tuple and
    the string give; where the model has a task called `text`, the dict names tasks as before."""
    model, _ = saved
    pipe = model.pipeline(tokenizer)
    assert pipe({"text": "the cat runs", "text_pair": "a cat runs"}) == pipe(("the cat runs", "a cat runs"))
    assert pipe({"text": SENTENCES[0]}) == pipe(SENTENCES[0])
    assert pipe([{"text": s} for s in SENTENCES]) == pipe(SENTENCES)
    named = hm.MultitaskModel(hm.MultitaskConfig(encoder_config=model.config.encoder_config,
                                                 tasks=[hm.TaskSpec("text", "classification", num_labels=2, text_columns=("t",))]))  # fmt: skip
    answer = named.pipeline(tokenizer)({"text": "the cat runs"})
    assert set(answer) == {"text"}


def test_one_tokenisation_and_one_batch_for_heads_that_read_the_same_text(saved, tokenizer, monkeypatch):
    """Issue 52: a text sent to the sentence heads is tokenised once (not once per head) and
    collated once; the answers are those of per-task encoding (the other tests)."""
    model, _ = saved
    pipe = model.pipeline(tokenizer)
    calls = []
    real = type(tokenizer).__call__
    monkeypatch.setattr(type(tokenizer), "__call__", lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
    pipe(SENTENCES, batch_size=3, tasks=["senti", "score"])
    assert len(calls) == len(SENTENCES), "senti and score (classification, regression) share the tokenisation"
    calls.clear()
    pipe(SENTENCES, batch_size=3)
    assert len(calls) == 2 * len(SENTENCES), "the tagger reads words: one more tokenisation per sentence"
