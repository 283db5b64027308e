import json
import warnings

import datasets
import pytest
from conftest import SHARED_DATA, write_tsv

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


def test_shared_quora_file_skips_exactly_its_one_malformed_row():
    path = SHARED_DATA / "quora-train.csv"
    assert path.is_file(), f"reference data expected beside the repo at {SHARED_DATA}"
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
