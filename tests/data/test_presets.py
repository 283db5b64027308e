"""Hub presets for the reference tasks (tested offline with datasets shaped like the real ones) and the demo data."""

import os
import subprocess
import sys

import datasets
import pytest
from conftest import recipe_flags

import hf_multitask as hm
from hf_multitask.demo import DEMO_QUORA, DEMO_SST, DEMO_STS, write_demo_data
from hf_multitask.presets import PRESETS, map_preset
from hf_multitask.recipe import run


def _fake_hub(n: int = 40, n_val: int = 12) -> dict:
    """Tiny datasets with the features of SetFit/sst5 and GLUE qqp / stsb (per their dataset cards)."""
    words = ["good", "bad", "great", "awful", "fine", "dull", "fun", "sad"]
    sent = [" ".join(words[(i * 3 + k) % 8] for k in range(2 + i % 3)) for i in range(n + n_val)]

    def sst(rows):
        return datasets.Dataset.from_dict(
            {"text": [sent[i] for i in rows], "label": [i % 5 for i in rows], "label_text": ["x"] * len(rows)},
            features=datasets.Features(
                {"text": datasets.Value("string"), "label": datasets.Value("int64"), "label_text": datasets.Value("string")}
            ),
        )

    def qqp(rows):
        return datasets.Dataset.from_dict(
            {
                "question1": [sent[i] for i in rows],
                "question2": [sent[(i + 1) % len(sent)] for i in rows],
                "label": [i % 2 for i in rows],
                "idx": list(rows),
            },  # fmt: skip
            features=datasets.Features(
                {
                    "question1": datasets.Value("string"),
                    "question2": datasets.Value("string"),
                    "label": datasets.ClassLabel(names=["not_duplicate", "duplicate"]),
                    "idx": datasets.Value("int32"),
                }
            ),  # fmt: skip
        )

    def stsb(rows):
        return datasets.Dataset.from_dict(
            {
                "sentence1": [sent[i] for i in rows],
                "sentence2": [sent[(i * 2) % len(sent)] for i in rows],
                "label": [float(i % 6) * 0.9 for i in rows],
                "idx": list(rows),
            },  # fmt: skip
            features=datasets.Features(
                {
                    "sentence1": datasets.Value("string"),
                    "sentence2": datasets.Value("string"),
                    "label": datasets.Value("float32"),
                    "idx": datasets.Value("int32"),
                }
            ),  # fmt: skip
        )

    train, val = range(n), range(n, n + n_val)
    return {("SetFit/sst5", None): (sst(train), sst(val)), ("nyu-mll/glue", "qqp"): (qqp(train), qqp(val)),
            ("nyu-mll/glue", "stsb"): (stsb(train), stsb(val))}  # fmt: skip


def test_preset_columns_map_onto_the_reference_tasks():
    hub = _fake_hub()
    for spec in hm.reference_tasks():
        preset = PRESETS[spec.name]
        train, _ = hub[(preset.dataset, preset.subset)]
        rows = hm.load_task_data(spec, map_preset(train, preset))
        assert len(rows) == 40 and rows.column_names == ["id", *spec.text_columns, "label"]
    quora = hm.load_task_data(hm.quora_task(), map_preset(hub[("nyu-mll/glue", "qqp")][0], PRESETS["quora"]))
    assert quora["id"][:3] == ["0", "1", "2"] and quora["label"][:3] == [0, 1, 0]
    with pytest.raises(hm.DataError, match=r"expected column\(s\) \['question1', 'question2'\]"):
        map_preset(hub[("nyu-mll/glue", "stsb")][0], PRESETS["quora"])


def test_recipe_without_data_dir_trains_on_the_presets(tiny_backbone, tmp_path, monkeypatch):
    hub = _fake_hub()
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        train, val = hub[(path, name)]
        return train if split == "train" else val

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    flags = recipe_flags(tiny_backbone, tmp_path, tmp_path / "out")
    i = flags.index("--data-dir")
    del flags[i : i + 2]
    metrics = run(flags)
    assert sorted(set(calls)) == sorted(
        {
            ("SetFit/sst5", None, "train"),
            ("SetFit/sst5", None, "validation"),
            ("nyu-mll/glue", "qqp", "train"),
            ("nyu-mll/glue", "qqp", "validation"),
            ("nyu-mll/glue", "stsb", "train"),
            ("nyu-mll/glue", "stsb", "validation"),
        }  # fmt: skip
    )
    assert metrics["train_steps_sst"] == 3
    lines = (tmp_path / "out" / "predictions" / "quora-dev-output.csv").read_text().splitlines()
    assert len(lines) == 1 + 12 and lines[1].startswith("40 , "), "the presets' validation split, ids from idx"


def test_offline_without_data_dir_stops_before_building_anything(tiny_backbone, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache")}
    code = "import sys; from hf_multitask.recipe import main; main(sys.argv[1:])"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", code, "--backbone", str(tiny_backbone), "--output-dir", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    for part in ("SetFit/sst5 for sst", "nyu-mll/glue (qqp) for quora", "nyu-mll/glue (stsb) for sts", "--data-dir", "web.stanford.edu/class/cs224n",
                 "--demo", "go online"):  # fmt: skip
        assert part in message, part
    assert not (out / "best").exists() and not list(out.glob("checkpoint-*"))


def test_demo_data_is_ours_and_valid(tmp_path):
    folder = write_demo_data(tmp_path)
    sst = hm.load_task_data(hm.sst_task(), folder / "ids-sst-train.csv", strict=True)
    quora = hm.load_task_data(hm.quora_task(), folder / "quora-train.csv", strict=True)
    sts = hm.load_task_data(hm.sts_task(), folder / "sts-train.csv", strict=True)
    assert len(sst) == len(DEMO_SST) >= 36 and len(quora) == len(DEMO_QUORA) >= 36 and len(sts) == len(DEMO_STS) >= 36
    assert set(sst["label"]) == {0, 1, 2, 3, 4} and set(quora["label"]) == {0, 1}
    assert min(sts["label"]) == 0.0 and max(sts["label"]) == 5.0


def test_demo_refuses_a_data_dir(tmp_path):
    with pytest.raises(hm.recipe.RecipeError, match="--demo trains on the built-in examples"):
        run(["--demo", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")])
