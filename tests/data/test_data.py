import json
import warnings
from dataclasses import replace

import datasets
import pytest
from conftest import write_tsv

import hf_multitask as hm
from hf_multitask import DataError, DataWarning, load_task_data

SST_ROWS = [["a1", "a fine film .", 3], ["a2", "dull and long", 0], ["a3", "great fun", 4]]
STS_ROWS = [["b1", "a man plays", "a man is playing", 4.2], ["b2", "cats sleep", "stocks fall", 0.0]]


def test_cs224n_format_single_and_pair(tmp_path):
    sst = load_task_data(hm.sst_task(), write_tsv(tmp_path / "sst.csv", ["id", "sentence", "sentiment"], SST_ROWS))
    assert sst.column_names == ["id", "sentence", "label"]
    assert sst["id"] == ["a1", "a2", "a3"] and sst["label"] == [3, 0, 4]
    assert sst.features["label"].dtype == "int64"
    sts = load_task_data(hm.sts_task(), write_tsv(tmp_path / "sts.csv", ["id", "sentence1", "sentence2", "similarity"], STS_ROWS))
    assert sts["sentence2"] == ["a man is playing", "stocks fall"]
    assert sts["label"] == pytest.approx([4.2, 0.0])


def test_quora_float_labels_become_class_indices(tmp_path):
    rows = [["q1", "how?", "how so?", "1.0"], ["q2", "why?", "when?", "0.0"]]
    ds = load_task_data(hm.quora_task(), write_tsv(tmp_path / "q.csv", ["id", "sentence1", "sentence2", "is_duplicate"], rows))
    assert ds["label"] == [1, 0]


def test_generic_csv_tsv_json_and_jsonl(tmp_path):
    spec = hm.TaskSpec(name="topic", kind="classification", num_labels=3, text_columns=("text",), label_column="y")
    (tmp_path / "d.csv").write_text('text,y\n"hello, world",2\nbye,0\n')
    write_tsv(tmp_path / "d.tsv", ["text", "y"], [["hello", 1], ["bye", 0]], cs224n=False)
    (tmp_path / "d.json").write_text(json.dumps([{"text": "hello", "y": 1}, {"text": "bye", "y": 2}]))
    (tmp_path / "d.jsonl").write_text('{"text": "hi", "y": 0}\n{"text": "yo", "y": 1}\n')
    csv_ds = load_task_data(spec, tmp_path / "d.csv")
    assert csv_ds["text"] == ["hello, world", "bye"] and csv_ds["label"] == [2, 0]
    assert csv_ds["id"] == ["0", "1"], "rows without an id column get their row number"
    assert load_task_data(spec, tmp_path / "d.tsv")["label"] == [1, 0]
    assert load_task_data(spec, tmp_path / "d.json")["label"] == [1, 2]
    assert load_task_data(spec, tmp_path / "d.jsonl")["text"] == ["hi", "yo"]


def test_in_memory_dataset_and_limit():
    ds = datasets.Dataset.from_dict({"sentence": ["x y", "z", "w"], "sentiment": [1, 2, 3]})
    out = load_task_data(hm.sst_task(), ds, limit=2)
    assert out["label"] == [1, 2] and out["id"] == ["0", "1"]


def test_hub_id_goes_through_datasets(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0.5, 4.0], "idx": [0, 1]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = hm.TaskSpec(name="stsb", kind="regression", num_labels=1, text_columns=("sentence1", "sentence2"), label_range=(0, 5))
    ds = load_task_data(spec, "nyu-mll/glue", subset="stsb", split="validation")
    assert calls == [("nyu-mll/glue", "stsb", "validation")]
    assert ds["label"] == [0.5, 4.0]


def test_hub_id_offline_error_says_what_to_pass(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="pass local files"):
        load_task_data(hm.sst_task(), "someone/sst5")


def test_missing_file_and_missing_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_task_data(hm.sst_task(), tmp_path / "nope.csv")
    path = write_tsv(tmp_path / "sst.csv", ["id", "text", "sentiment"], SST_ROWS)
    with pytest.raises(DataError, match=r"sst.csv: missing column\(s\) \['sentence'\]") as err:
        load_task_data(hm.sst_task(), path)
    assert "'text'" in str(err.value), "the error lists the columns that are there"


@pytest.mark.parametrize(
    "bad_row, column, reason",
    [
        (["x9", "fine", "seven"], "sentiment", "is not a number"),
        (["x9", "fine", "7"], "sentiment", r"out of range 0..4"),
        (["x9", "fine", "2.5"], "sentiment", "not a whole class index"),
        (["x9", "fine", ""], "sentiment", "empty label"),
        (["x9", "  ", "2"], "sentence", "empty text"),
    ],
)
def test_bad_row_is_skipped_with_its_line_or_raises_in_strict_mode(tmp_path, bad_row, column, reason):
    rows = [[f"r{i}", f"text {i}", i % 5] for i in range(200)]
    rows.insert(57, bad_row)
    path = write_tsv(tmp_path / "sst.csv", ["id", "sentence", "sentiment"], rows)
    # header is line 1, row k (0-based) is line k + 2
    with pytest.raises(DataError, match=rf"sst.csv: line 59, column '{column}': .*{reason}"):
        load_task_data(hm.sst_task(), path, strict=True)
    with pytest.warns(DataWarning, match=rf"line 59, column '{column}': .*{reason}"):
        ds = load_task_data(hm.sst_task(), path)
    assert len(ds) == 200 and "x9" not in ds["id"]


def test_regression_label_out_of_range(tmp_path):
    path = write_tsv(tmp_path / "sts.csv", ["id", "sentence1", "sentence2", "similarity"], [["b", "a", "c", "5.5"]])
    with pytest.raises(DataError, match=r"line 2, column 'similarity': label '5.5' is out of range \[0, 5\]"):
        load_task_data(hm.sts_task(), path, strict=True)


def test_mostly_bad_file_is_an_error_not_a_warning(tmp_path):
    rows = [[f"r{i}", "text", "bad"] for i in range(10)] + [["ok", "text", 1]]
    path = write_tsv(tmp_path / "sst.csv", ["id", "sentence", "sentiment"], rows)
    with pytest.raises(DataError, match="10 of 11 rows are malformed"):
        load_task_data(hm.sst_task(), path)


def test_unbalanced_quote_row_is_reported_not_mislabelled(tmp_path):
    header = "\tid\tsentence1\tsentence2\tis_duplicate\n"
    good = [f"{i}\tq{i}\tquestion {i}?\tother {i}?\t{float(i % 2)}\n" for i in range(150)]
    broken = '999\tqbad\tAny idea?\t"""Where can I find a dress? I took a picture."\t\n'
    (tmp_path / "quora.csv").write_text(header + "".join(good[:40]) + broken + "".join(good[40:]))
    with pytest.warns(DataWarning, match=r"quora.csv: line 42, column 'is_duplicate': empty label"):
        ds = load_task_data(hm.quora_task(), tmp_path / "quora.csv")
    assert len(ds) == 150 and "qbad" not in ds["id"]
    assert ds["label"] == [i % 2 for i in range(150)], "rows after the broken one keep their own labels"
    with pytest.raises(DataError, match="line 42"):
        load_task_data(hm.quora_task(), tmp_path / "quora.csv", strict=True)


def test_wrong_field_count_is_malformed(tmp_path):
    lines = "\tid\tsentence\tsentiment\n" + "".join(f"{i}\tr{i}\tgood\t1\n" for i in range(120)) + "120\tr120\tno label here\n"
    (tmp_path / "sst.csv").write_text(lines)
    with pytest.raises(DataError, match="line 122: row has 3 fields, the header has 4"):
        load_task_data(hm.sst_task(), tmp_path / "sst.csv", strict=True)


def test_shared_quora_file_skips_exactly_its_one_malformed_row(shared_data):
    path = shared_data / "quora-train.csv"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_task_data(hm.quora_task(), path)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1 and "line 1771" in messages[0]
    assert len(ds) == 13955
    assert set(ds["label"]) == {0, 1}


def test_train_validation_split_is_seeded(tmp_path):
    ds = datasets.Dataset.from_dict({"id": [str(i) for i in range(100)], "label": list(range(100))})
    a_train, a_val = hm.train_validation_split(ds, 0.2, seed=7)
    b_train, b_val = hm.train_validation_split(ds, 0.2, seed=7)
    _, c_val = hm.train_validation_split(ds, 0.2, seed=8)
    assert a_val["id"] == b_val["id"] and a_val["id"] != c_val["id"]
    assert len(a_val) == 20 and not set(a_train["id"]) & set(a_val["id"])


# ---------------------------------------------------------------- hostile files
STS_HEADER = "\tid\tsentence1\tsentence2\tsimilarity\n"


def _sts_lines(n: int, start: int = 0) -> list[str]:
    return [f"{i}\tt{i}\tsentence {i} here\tanother {i}\t{i % 6}.0\n" for i in range(start, start + n)]


def _caught(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def test_stray_quote_that_closes_lines_later_costs_only_its_own_line(tmp_path):
    # the csv module would read a quote opening sentence1 on line 12 up to the quote on line 21,
    # merging 10 lines into one record labelled with line 21's label
    lines = _sts_lines(10) + ['10\tt10\t"A stray quote opens here\tsecond side\t1.0\n'] + _sts_lines(8, 11)
    lines += ['19\tt19\tthe quote "closes" inside this one\tpair\t2.0\n'] + _sts_lines(120, 20)
    path = tmp_path / "sts.csv"
    path.write_text(STS_HEADER + "".join(lines))
    ds, messages = _caught(lambda: load_task_data(hm.sts_task(), path))
    assert len(messages) == 1 and "sts.csv: line 12:" in messages[0] and "quote" in messages[0]
    ids = [f"t{i}" for i in range(140) if i != 10]
    assert ds["id"] == ids, "every other line is its own row"
    assert ds["label"] == pytest.approx(
        [float(i % 6) for i in range(140) if i not in (10, 19)][:18] + [2.0] + [float(i % 6) for i in range(20, 140)]
    )
    assert ds["sentence1"][18] == 'the quote "closes" inside this one'
    assert all("\t" not in s and "\n" not in s for c in ("sentence1", "sentence2") for s in ds[c])
    with pytest.raises(DataError, match=r"sts.csv: line 12: malformed quoting"):
        load_task_data(hm.sts_task(), path, strict=True)


def test_quote_that_never_closes_is_one_bad_line_not_the_rest_of_the_file(tmp_path):
    lines = _sts_lines(150) + ['150\tt150\t"never closed\tside\t3.0\n'] + _sts_lines(49, 151)
    path = tmp_path / "sts.csv"
    path.write_text(STS_HEADER + "".join(lines))
    ds, messages = _caught(lambda: load_task_data(hm.sts_task(), path))
    assert len(ds) == 199 and "t150" not in ds["id"] and ds["id"][-1] == "t199"
    assert len(messages) == 1 and "line 152" in messages[0]


def test_tolerance_counts_lines_so_a_run_of_broken_lines_is_an_error(tmp_path):
    # 3 broken lines out of 100 (3 %) is over the 1 % tolerance, whatever a csv reader would call a record
    lines = _sts_lines(50) + [f'{i}\tt{i}\t"open\tside\t1.0\n' for i in range(50, 53)] + _sts_lines(47, 53)
    path = tmp_path / "sts.csv"
    path.write_text(STS_HEADER + "".join(lines))
    with pytest.raises(DataError, match=r"(?s)3 of 100 rows are malformed.*line 52: malformed quoting.*line 53.*line 54"):
        load_task_data(hm.sts_task(), path)


def test_quoted_tab_inside_a_field_is_reported(tmp_path):
    lines = _sts_lines(3) + ['3\tt3\t"a quoted\ttab"\tside\t1.0\n'] + _sts_lines(2, 4)
    path = tmp_path / "sts.csv"
    path.write_text(STS_HEADER + "".join(lines))
    with pytest.raises(DataError, match=r"line 5: a field holds a tab"):
        load_task_data(hm.sts_task(), path, strict=True)
    ds, messages = _caught(lambda: load_task_data(hm.sts_task(), path, max_bad_fraction=0.5))
    assert ds["id"] == ["t0", "t1", "t2", "t4", "t5"] and "line 5" in messages[0]


def test_byte_order_mark_in_the_header_keeps_the_ids(tmp_path):
    path = tmp_path / "topic.csv"
    path.write_bytes("\ufeffid,text,y\nx7,hello,1\nx9,bye,0\n".encode())
    spec = hm.TaskSpec(name="topic", kind="classification", num_labels=2, text_columns=("text",), label_column="y")
    assert load_task_data(spec, path)["id"] == ["x7", "x9"]
    cs224n = tmp_path / "sst.csv"
    cs224n.write_bytes(("\ufeff\tid\tsentence\tsentiment\n0\tmine-1\tgood\t4\n").encode())
    assert load_task_data(hm.sst_task(), cs224n)["id"] == ["mine-1"]


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "sst.csv"
    path.write_bytes(b"\tid\tsentence\tsentiment\n0\ta\tgood\t1\n1\tb\tcaf\xe9\t2\n")
    with pytest.raises(DataError, match=r"sst.csv: line 3, column 8: not UTF-8"):
        load_task_data(hm.sst_task(), path)


def test_absurd_regression_labels_warn_without_a_range_and_are_bad_rows_with_one(tmp_path):
    spec = hm.TaskSpec(name="score", kind="regression", num_labels=1, text_columns=("text",), label_column="y")
    path = tmp_path / "score.tsv"
    path.write_text("text\ty\n" + "".join(f"row {i}\t{i / 10}\n" for i in range(200)) + "huge\t1e18\n")
    ds, messages = _caught(lambda: load_task_data(spec, path))
    assert len(ds) == 201 and len(messages) == 1
    assert "1 regression label(s) of task 'score' exceed 1e+06" in messages[0] and "line 202: 1e+18" in messages[0]
    ranged = hm.TaskSpec(name="score", kind="regression", num_labels=1, text_columns=("text",), label_column="y", label_range=(0, 25))
    ds, messages = _caught(lambda: load_task_data(ranged, path))
    assert len(ds) == 200 and "line 202, column 'y': label '1e18' is out of range [0, 25]" in messages[0]


@pytest.mark.parametrize("name, rows", [("ids-sst-train.csv", 8544), ("sts-train.csv", 6040)])
def test_shared_sst_and_sts_files_load_every_row_without_a_warning(name, rows, shared_data):
    spec = hm.sst_task() if name.startswith("ids-sst") else hm.sts_task()
    ds, messages = _caught(lambda: load_task_data(spec, shared_data / name))
    assert messages == [] and len(ds) == rows


def test_classlabel_integers_are_read_by_name_not_position():
    """A ClassLabel column whose names the task lists in another order: each integer means its
    class name (it was taken as a position in the task's label_names, flipping every label)."""
    spec = hm.TaskSpec(name="senti", kind="classification", num_labels=2, text_columns=("text",), label_names=("pos", "neg"))
    rows = {"id": ["a", "b", "c"], "text": ["great", "awful", "fine"]}
    features = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})  # fmt: skip
    ints = datasets.Dataset.from_dict({**rows, "label": [1, 0, 1]}, features=features)
    names = datasets.Dataset.from_dict({**rows, "label": ["pos", "neg", "pos"]})
    assert hm.load_task_data(spec, ints)["label"] == hm.load_task_data(spec, names)["label"] == [0, 1, 0]
    # tags: a list of ClassLabel read by name too
    tagger = hm.TaskSpec(
        name="pos", kind="token_classification", num_labels=3, text_columns=("tokens",), label_names=("NOUN", "VERB", "DET")
    )
    tag_features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                      "tags": datasets.Sequence(datasets.ClassLabel(names=["DET", "NOUN", "VERB"]))})  # fmt: skip
    tagged = datasets.Dataset.from_dict({"tokens": [["the", "dog", "runs"]], "tags": [[0, 1, 2]]}, features=tag_features)
    assert hm.load_task_data(replace(tagger, label_column="tags"), tagged)["label"] == [[2, 0, 1]]
    # a name the task does not have cannot be mapped: refused, naming both lists
    other = replace(spec, label_names=("positive", "negative"))
    with pytest.raises(DataError, match=r"ClassLabel with names \['neg', 'pos'\].*label_names \['positive', 'negative'\]"):
        hm.load_task_data(other, ints)
