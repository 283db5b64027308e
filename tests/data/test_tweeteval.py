"""TweetEval: the text + label file reader, mapping.txt, the official metrics, the test prediction
layout, the Hub presets (offline, with datasets shaped like the Hub's) and the recipe flag."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import tiny_model
from tweeteval_fixtures import SIZES, recipe_args, tweet, write_tweeteval

import hf_multitask as hm
from hf_multitask import tweeteval as te
from hf_multitask.data import DataError, load_text_label_files
from hf_multitask.metrics import macro_f1, positive_f1, stance_f1
from hf_multitask.reading import read_lines
from hf_multitask.recipe import RecipeError, run


@pytest.fixture(scope="module")
def tweeteval_dir(tmp_path_factory) -> Path:
    return write_tweeteval(tmp_path_factory.mktemp("tweeteval"))


# --- the reader ----------------------------------------------------------------------------------


def test_read_lines_handles_bom_crlf_blank_lines_and_no_final_newline(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbffirst\r\n\r\nthird has a lone \r inside\nlast")
    assert read_lines(path) == ["first", "", "third has a lone \r inside", "last"]
    assert read_lines(path).final_newline is False, "the last line has no line ending"
    path.write_bytes(b"a\r\nb\r\n")
    assert read_lines(path) == ["a", "b"] and read_lines(path).final_newline is True
    path.write_bytes(b"")
    assert read_lines(path) == [] and read_lines(path).final_newline is True, "an empty file lacks no line ending"


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"ok\ncaf\xe9 latin-1\n", "line 2, column 4: not UTF-8"), (b"ok\nok\nnul\x00here\n", "line 3, column 4: a NUL byte")],
)
def test_read_lines_names_the_bad_line(tmp_path, raw, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=message) as err:
        read_lines(path)
    assert str(path) in str(err.value)


def _binary(name="t"):
    return hm.TaskSpec(name=name, kind="classification", num_labels=2, text_columns=("text",), label_names=("no", "yes"))


def test_text_label_files_load_in_order_with_label_names_and_ids(tmp_path):
    (tmp_path / "x.txt").write_text("a b \nc d\r\ne f\n")
    (tmp_path / "y.txt").write_text("1\nno\nyes")  # names or indices; no final newline, while its partner has one
    with pytest.warns(hm.DataWarning, match=r"y.txt: line 3 \(the last\) has no line ending"):
        ds = load_text_label_files(_binary(), tmp_path / "x.txt", tmp_path / "y.txt", id_prefix="p-")
    assert ds["text"] == ["a b", "c d", "e f"] and ds["label"] == [1, 0, 1] and ds["id"] == ["p-0", "p-1", "p-2"]


def test_text_label_files_of_different_lengths_name_both_files_and_the_line(tmp_path):
    (tmp_path / "x.txt").write_text("a\nb\nc\n")
    (tmp_path / "y.txt").write_text("1\n0\n")
    with pytest.raises(DataError) as err:
        load_text_label_files(_binary(), tmp_path / "x.txt", tmp_path / "y.txt")
    text = str(err.value)
    assert "x.txt has 3 lines" in text and "y.txt has 2" in text and "line 3 of" in text


def test_text_label_files_report_a_bad_label_by_line_and_skip_it(tmp_path):
    texts = [f"tweet {i}" for i in range(200)]
    labels = ["1"] * 200
    labels[57] = "7"
    (tmp_path / "x.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "y.txt").write_text("\n".join(labels) + "\n")
    with pytest.warns(hm.DataWarning, match=r"line 58, column 'label': label '7' is out of range 0..1"):
        ds = load_text_label_files(_binary(), tmp_path / "x.txt", tmp_path / "y.txt")
    assert len(ds) == 199 and "tweet 57" not in ds["text"] and ds["id"][57] == "58"
    with pytest.raises(DataError, match="line 58"):
        load_text_label_files(_binary(), tmp_path / "x.txt", tmp_path / "y.txt", strict=True)


def test_read_mapping_takes_the_name_column_and_checks_indices(tmp_path):
    path = tmp_path / "mapping.txt"
    path.write_text("1\tjoy\n0\tanger\t\n")
    assert te.read_mapping(path) == ("anger", "joy")
    path.write_text("0\tanger\n2\tjoy\n")
    with pytest.raises(DataError, match="0..K-1"):
        te.read_mapping(path)
    path.write_text("0\tanger\njoy\n")
    with pytest.raises(DataError, match="line 2"):
        te.read_mapping(path)


# --- the official metrics, against hand-computed values ------------------------------------------


def test_macro_f1_by_hand():
    gold = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    # class 0: P 1/2 R 1/2 F 1/2; class 1: P 2/3 R 1 F 4/5; class 2: P 1 R 1/2 F 2/3
    assert macro_f1(pred, gold) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    # a class never gold and never predicted does not count (as in the official script)
    assert macro_f1([0, 1], [0, 1]) == pytest.approx(1.0)


def test_positive_f1_is_the_f1_of_class_1_only():
    gold = [1, 1, 1, 0, 0, 0]
    pred = [1, 1, 0, 1, 0, 0]  # class 1: P 2/3, R 2/3 -> F 2/3 (class 0's F is also 2/3; make them differ)
    assert positive_f1(pred, gold) == pytest.approx(2 / 3)
    assert positive_f1([1, 1, 1, 1], [1, 0, 0, 0]) == pytest.approx(2 * 0.25 * 1 / 1.25)
    assert positive_f1([0, 0], [0, 0]) == 0.0


def test_stance_f1_averages_against_and_favor_and_ignores_none():
    gold = [0, 0, 1, 1, 1, 2, 2]
    pred = [1, 0, 1, 1, 0, 2, 1]
    # against (1): TP 2, FP 2 (gold 0 and gold 2 predicted 1), FN 1 -> P 1/2, R 2/3, F 4/7
    # favor (2): TP 1, FP 0, FN 1 -> P 1, R 1/2, F 2/3
    assert stance_f1(pred, gold) == pytest.approx((4 / 7 + 2 / 3) / 2)
    # a perfect 'none' class changes nothing
    assert stance_f1([0, 0, 1, 2], [0, 0, 1, 2]) == pytest.approx(1.0)
    assert stance_f1([0, 0, 0], [0, 0, 0]) == 0.0


def test_stance_f1_needs_three_classes():
    with pytest.raises(ValueError, match="stance_f1"):
        hm.TaskSpec(name="s", kind="classification", num_labels=2, text_columns=("text",), metric="stance_f1")


def test_benchmark_score_is_the_mean_of_the_official_metrics_times_100():
    metrics = {"eval_irony_positive_f1": 0.5, "eval_irony_accuracy": 0.9, "eval_stance_stance_f1": 0.7, "eval_emoji_macro_f1": 0.3}
    assert te.benchmark_score(metrics) == pytest.approx(50.0)
    with pytest.raises(KeyError, match="hate"):
        te.benchmark_score(metrics, ["hate"])


# --- the layout ----------------------------------------------------------------------------------


def test_tweeteval_tasks_have_official_metrics_and_mapping_names(tweeteval_dir):
    specs = {s.name: s for s in hm.tweeteval_tasks(tweeteval_dir)}
    assert list(specs) == list(te.TWEETEVAL_TASKS)
    assert {n: s.metric for n, s in specs.items()} == {"emoji": "macro_f1", "emotion": "macro_f1", "hate": "macro_f1",
                                                        "irony": "positive_f1", "offensive": "macro_f1", "stance": "stance_f1"}  # fmt: skip
    assert specs["emoji"].label_names[:2] == ("e0", "e1") and specs["stance"].label_names == ("none", "against", "favor")
    assert specs["stance"].text_columns == ("target", "text") and specs["irony"].text_columns == ("text",)
    assert hm.tweeteval_tasks()[0].label_names is None  # without a folder: no names, same task otherwise


def test_stance_pools_the_five_targets_with_the_target_as_first_text(tweeteval_dir):
    train = te.load_tweeteval("stance", tweeteval_dir, "train")
    assert len(train) == 5 * SIZES["train"]
    assert train["id"][0] == "abortion-0" and train["id"][-1] == f"hillary-{SIZES['train'] - 1}"
    assert train["target"][0] == "Legalization of Abortion" and train["target"][-1] == "Hillary Clinton"
    assert train["text"][0] == tweet(0)  # the trailing space before the newline is gone
    val = te.load_tweeteval("irony", tweeteval_dir, "val")
    assert len(val) == SIZES["val"] and val["label"] == [i % 2 for i in range(SIZES["val"])]


def test_a_missing_folder_or_split_is_named(tweeteval_dir, tmp_path):
    with pytest.raises(DataError, match="no folder irony/"):
        te.load_tweeteval("irony", tmp_path, "train")
    with pytest.raises(ValueError, match="test labels are held out"):
        te.load_tweeteval("irony", tweeteval_dir, "test")
    with pytest.raises(ValueError, match="Unknown TweetEval task"):
        te.tweeteval_task("sentiment")


def test_test_inputs_keep_every_line_even_an_empty_one(tmp_path, tweeteval_dir):
    import shutil

    root = tmp_path / "te"
    shutil.copytree(tweeteval_dir, root)
    (root / "hate" / "test_text.txt").write_text("one\n\nthree\n")
    inputs, files = te.test_inputs("hate", root)
    assert inputs["text"] == ["one", "", "three"] and files == [("hate", 3)]
    inputs, files = te.test_inputs("stance", root)
    assert files == [(f"stance/{t}", SIZES["test"]) for t in te.STANCE_TARGETS] and len(inputs) == 5 * SIZES["test"]


def test_test_predictions_are_written_in_the_official_layout_and_order(tokenizer, tweeteval_dir, tmp_path):
    specs = hm.tweeteval_tasks(tweeteval_dir)
    model = tiny_model(specs, pooling="mean").eval()
    with torch.no_grad():  # no bias, large weights: predictions that differ from tweet to tweet, so the order shows
        for name, param in model.heads.named_parameters():
            param.mul_(0.0 if name.endswith("bias") else 100.0)
    written = te.write_test_predictions(model, tokenizer, tweeteval_dir, tmp_path / "test", batch_size=3, progress=False)
    assert sorted(written) == sorted(["emoji", "emotion", "hate", "irony", "offensive", *(f"stance/{t}" for t in te.STANCE_TARGETS)])
    assert not list((tmp_path / "test").rglob("*.partial"))
    varied = 0
    for spec in specs:
        inputs, files = te.test_inputs(spec, tweeteval_dir)
        encoded = hm.encode_task(inputs, spec, tokenizer, max_length=64)
        # in file order, one by one: what each line must get, however the writer batched them
        expected = hm.predict(model, encoded, spec.name, batch_size=1, progress=False).predictions
        got = np.concatenate([[int(v) for v in (tmp_path / "test" / f"{stem}.txt").read_text().splitlines()] for stem, _ in files])
        assert got.tolist() == expected.tolist(), spec.name
        varied += len(set(expected.tolist())) > 1
        assert all(0 <= v < spec.num_labels for v in got)
    assert varied >= 2  # the order is really tested: some tasks' predictions are not all one class


# --- Hub presets (offline: datasets shaped like cardiffnlp/tweet_eval's card) ---------------------


def _fake_tweet_eval(calls):
    def load(name, config, split):
        calls.append((name, config, split))
        k = 3 if config.startswith("stance") else te._NUM_LABELS[config]
        n = 6
        return datasets.Dataset.from_dict(
            {"text": [f"{config} tweet {i}" for i in range(n)], "label": [i % k for i in range(n)]},
            features=datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(num_classes=k)}),
        )

    return load


def test_hub_preset_maps_the_configs_and_pools_stance(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", _fake_tweet_eval(calls))
    stance = te.load_tweeteval_hub("stance", "validation")
    assert [c[1] for c in calls] == [f"stance_{t}" for t in te.STANCE_TARGETS]
    assert {c[0] for c in calls} == {"cardiffnlp/tweet_eval"} and {c[2] for c in calls} == {"validation"}
    assert len(stance) == 30 and stance["target"][6] == "Atheism" and stance["id"][6] == "atheism-0"
    irony = te.load_tweeteval_hub("irony")
    assert calls[-1] == ("cardiffnlp/tweet_eval", "irony", "train") and irony["label"] == [0, 1, 0, 1, 0, 1]
    climate = te.load_tweeteval_hub("stance_climate")  # one target as its own task: its own config
    assert calls[-1] == ("cardiffnlp/tweet_eval", "stance_climate", "train")
    assert climate["id"][0] == "climate-0" and "target" not in climate.column_names
    with pytest.raises(ValueError, match="never used"):
        te.load_tweeteval_hub("irony", "test")


def test_hub_preset_offline_says_what_to_pass(monkeypatch, tiny_backbone, tmp_path):
    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RecipeError, match="cardiffnlp/tweet_eval.*Pass --data-dir"):
        run(["--benchmark", "tweeteval", "--tasks", "irony", "--backbone", str(tiny_backbone), "--output-dir", str(tmp_path)])


# --- the recipe ----------------------------------------------------------------------------------


def test_recipe_trains_the_six_tasks_scores_officially_and_writes_test_files(tiny_backbone, tweeteval_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = run(recipe_args(tiny_backbone, tweeteval_dir, tmp_path / "out"))
    official = [metrics[f"eval_{t}_{te._METRIC[t]}"] for t in te.TWEETEVAL_TASKS]
    assert metrics["eval_overall"] == pytest.approx(np.mean(official))
    assert te.benchmark_score(metrics) == pytest.approx(100 * metrics["eval_overall"])
    test = tmp_path / "out" / "predictions" / "test"
    assert len((test / "irony.txt").read_text().splitlines()) == SIZES["test"]
    assert len((test / "stance" / "hillary.txt").read_text().splitlines()) == SIZES["test"]
    card = (tmp_path / "out" / "best" / "README.md").read_text()
    assert "positive_f1" in card or "irony" in card
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["eval_overall"] == metrics["eval_overall"]


def test_recipe_benchmark_validation_split_never_reads_val(tiny_backbone, tweeteval_dir, tmp_path):
    import shutil

    root = tmp_path / "te"
    shutil.copytree(tweeteval_dir, root)
    for path in root.rglob("val_labels.txt"):
        path.write_text("not a label\n" * SIZES["val"])  # reading val now fails
    with pytest.raises(DataError):
        run(recipe_args(tiny_backbone, root, tmp_path / "a", "--tasks", "irony"))
    metrics = run(recipe_args(tiny_backbone, root, tmp_path / "b", "--tasks", "irony", "--benchmark_validation", "split",
                          "--validation_fraction", "0.25", "--test_predictions", "false"))  # fmt: skip
    assert "eval_irony_positive_f1" in metrics and not (tmp_path / "b" / "predictions" / "test").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "sst"], r"\['sst'\] are not tweeteval tasks"),
        (["--benchmark", "glue"], "unknown benchmark 'glue'"),
        (["--benchmark_validation", "test"], "'val' or 'split'"),
    ],
)
def test_recipe_refuses_bad_benchmark_flags(tiny_backbone, tweeteval_dir, tmp_path, extra, message):
    with pytest.raises(RecipeError, match=message):
        run(recipe_args(tiny_backbone, tweeteval_dir, tmp_path / "out", *extra))


def test_recipe_names_a_folder_that_is_not_the_layout(tiny_backbone, tmp_path):
    with pytest.raises(RecipeError, match="not the TweetEval layout.*no folder emoji/"):
        run(recipe_args(tiny_backbone, tmp_path, tmp_path / "out"))


def test_cli_writes_the_test_files_of_a_saved_model_and_names_a_bad_folder(tokenizer, tweeteval_dir, tmp_path, capsys):
    from hf_multitask.cli import main

    model = tiny_model(hm.tweeteval_tasks(tweeteval_dir, ["irony", "stance"]))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    main(["tweeteval-test", "--model", str(tmp_path / "model"), "--data-dir", str(tweeteval_dir), "--output-dir", str(tmp_path / "t"),
          "--quiet"])  # fmt: skip
    assert sorted(p.relative_to(tmp_path / "t").as_posix() for p in (tmp_path / "t").rglob("*.txt")) == sorted(
        ["irony.txt", *(f"stance/{t}.txt" for t in te.STANCE_TARGETS)]
    )
    assert "irony:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["tweeteval-test", "--model", str(tmp_path / "model"), "--data-dir", str(tmp_path / "nowhere"), "--output-dir",
              str(tmp_path / "u"), "--quiet"])  # fmt: skip
    assert exit_info.value.code == 2 and "no folder irony/" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tweeteval-test", "--model", str(tmp_path / "model"), "--data-dir", str(tweeteval_dir), "--output-dir",
              str(tmp_path / "v"), "--tasks", "hate", "--quiet"])  # fmt: skip
    assert "no TweetEval task ['hate']" in capsys.readouterr().err


def test_tweeteval_test_backend_onnx_writes_the_torch_backends_files(tokenizer, tweeteval_dir, tmp_path, capsys):
    """Issue 52: the same files from an ONNX export (fp32 and int8) as from the PyTorch model, for a
    plain and a routed (specialised) model; labels of a random tiny model are close calls, so fp32
    must match exactly and int8 on most lines."""
    pytest.importorskip("onnxruntime", reason="the ONNX backend needs the 'onnx' extra; CI installs it")
    pytest.importorskip("onnx", reason="the ONNX export needs the 'onnx' extra; CI installs it")
    from hf_multitask.cli import main

    tasks = hm.tweeteval_tasks(tweeteval_dir, ["irony", "emoji", "stance"])
    plain = tiny_model(tasks)
    routed = hm.RoutedMultitaskModel.from_models({"emoji": tiny_model(tasks, seed=1)}, multitask=plain)
    for name, model in (("plain", plain), ("routed", routed)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
        assert main(["export", str(tmp_path / name), str(tmp_path / f"{name}-onnx"), "--quantize", "int8", "--quiet"]) is None
        capsys.readouterr()
        runs = {"torch": tmp_path / name, "fp32": tmp_path / f"{name}-onnx" / "model.onnx", "int8": tmp_path / f"{name}-onnx"}
        files = {}
        for kind, folder in runs.items():
            backend = "torch" if kind == "torch" else "onnx"
            main(["tweeteval-test", "--model", str(folder), "--data-dir", str(tweeteval_dir), "--output-dir", str(tmp_path / name / kind),
                  "--backend", backend, "--batch_size", "4", "--quiet"])  # fmt: skip
            files[kind] = {p.relative_to(tmp_path / name / kind).as_posix(): p.read_text() for p in (tmp_path / name / kind).rglob("*.txt")}
        assert sorted(files["torch"]) == sorted(["irony.txt", "emoji.txt", *(f"stance/{t}.txt" for t in te.STANCE_TARGETS)])
        assert files["fp32"] == files["torch"], name
        same = [a == b for f in files["torch"] for a, b in zip(files["torch"][f].split(), files["int8"][f].split(), strict=True)]
        assert np.mean(same) >= 0.8, (name, np.mean(same))


def test_recipe_with_two_step_specialisation_writes_the_routed_models_test_files(tiny_backbone, tweeteval_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(recipe_args(tiny_backbone, tweeteval_dir, tmp_path / "out", "--tasks", "irony", "emotion", "--specialise_steps", "2"))
    test = tmp_path / "out" / "predictions" / "test"
    assert sorted(p.name for p in test.iterdir()) == ["emotion.txt", "irony.txt"]


def test_grid_gathers_each_cells_test_files_in_the_official_layout(tiny_backbone, tweeteval_dir, tmp_path):
    from hf_multitask.compare import Grid, report, run_grid

    protocol = recipe_args(tiny_backbone, tweeteval_dir, tmp_path / "unused")
    cut = protocol.index("--output-dir")
    protocol = protocol[:cut] + protocol[cut + 2 :] + ["--max_length", "32"]
    grid = Grid.from_dict({"tasks": ["irony", "stance"], "seeds": [0], "splits": [0], "protocol": protocol,
                           "test_predictions": "{arm}/seed{seed}/test",
                           "arms": {"separate": {"single_task": True}, "sum": {"args": ["--aggregator", "sum"]}}})  # fmt: skip
    run_grid(grid, tmp_path / "cmp", say=lambda m: None)
    expected = sorted(["irony.txt", *(f"stance/{t}.txt" for t in te.STANCE_TARGETS)])
    for arm in ("separate", "sum"):
        folder = tmp_path / "cmp" / arm / "seed0" / "test"
        assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.txt")) == expected, arm
    # a seed committed part by part (result.json kept, the run folders are not committed): on a fresh
    # clone the part without its run folder runs again, so the gathered folder is whole, not five files short
    cell = tmp_path / "cmp" / "runs" / "split0" / "separate" / "seed0"
    (cell / "result.json").unlink()
    shutil.rmtree(cell / "stance" / "run")
    shutil.rmtree(tmp_path / "cmp" / "separate")
    said: list[str] = []
    run_grid(grid, tmp_path / "cmp", arms=["separate"], say=said.append)
    assert len(said) == 2 and "stance" in said[0] and "no run folder" in said[0], said
    folder = tmp_path / "cmp" / "separate" / "seed0" / "test"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.txt")) == expected
    # a grid with neither reference nor baseline reports without naming a missing arm
    report(tmp_path / "cmp")
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "None" not in table and "Δ vs" not in table and "| `sum` | 1 |" in table


def test_recipe_with_a_primary_task_writes_only_the_primarys_test_file(tiny_backbone, tweeteval_dir, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = run(
            recipe_args(tiny_backbone, tweeteval_dir, tmp_path / "out", "--tasks", "irony", "emotion", "--primary_tasks", "irony")
        )
    assert [p.name for p in (tmp_path / "out" / "predictions" / "test").iterdir()] == ["irony.txt"]
    assert metrics["eval_overall"] == pytest.approx(metrics["eval_irony_positive_f1"])


@pytest.mark.parametrize("routed", [False, True], ids=["multitask", "routed"])
def test_test_files_use_the_length_the_model_was_trained_with(routed, tokenizer, tmp_path, monkeypatch):
    import hf_multitask.encoding as encoding

    data = tmp_path / "te"
    data.mkdir()
    write_tweeteval(data)
    model = tiny_model(hm.tweeteval_tasks(data, ["irony"]))
    model.config.train_max_length = 128
    if routed:
        model = hm.schemes.route({"irony": model})
    lengths = []
    original = encoding.encode_task
    monkeypatch.setattr(encoding, "encode_task", lambda *a, **k: lengths.append(k["max_length"]) or original(*a, **k))
    hm.tweeteval.write_test_predictions(model, tokenizer, data, tmp_path / "out", progress=False)
    hm.tweeteval.write_test_predictions(model, tokenizer, data, tmp_path / "out", max_length=20, progress=False)
    assert lengths == [128, 20], "the trained length (it was 64 whatever the model was trained with), or as asked"
