"""A damaged saved model folder gets one clear error naming it, through the command line, the
Python API, the recipe's --backbone and distillation's teachers (real damaged files)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import deterministic_model, recipe_flags

import hf_multitask as hm
from hf_multitask.model_folders import ModelFolderError, check_model_folder


@pytest.fixture
def saved(tmp_path, tokenizer):
    folder = tmp_path / "model"
    deterministic_model().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _cut(path, fraction=0.5):
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * fraction))


DAMAGES = {
    "weights cut short": (lambda f: _cut(f / "model.safetensors"), "model.safetensors is damaged"),
    "weights emptied": (lambda f: _cut(f / "model.safetensors", 0.0), "model.safetensors is empty"),
    "weights header cut": (lambda f: _cut(f / "model.safetensors", 0.0001), "model.safetensors is damaged"),
    "weights missing": (lambda f: (f / "model.safetensors").unlink(), "no weights file"),
    "config not JSON": (lambda f: (f / "config.json").write_text('{"model_type": "hf_multitask", '), "config.json, line 1, column"),
    "config of no model": (lambda f: (f / "config.json").write_text("{}"), "config.json has no model_type"),
    "config missing": (lambda f: (f / "config.json").unlink(), "no config.json"),
    "config not text": (lambda f: (f / "config.json").write_bytes(b"\xff\xfe\x00garbage"), "config.json is not text"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_each_damage_is_one_error_naming_the_folder_in_python_and_on_the_command_line(saved, tmp_path, damage, capsys):
    from hf_multitask.cli import main

    hurt, message = DAMAGES[damage]
    hurt(saved)
    with pytest.raises(ModelFolderError, match=message) as err:
        check_model_folder(saved)
    assert str(saved) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ModelFolderError, match=message):
        hm.MultitaskModel.from_pretrained(saved)
    inputs = tmp_path / "in.tsv"
    inputs.write_text("id\ttext\na\tthe cat runs\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit) as status:
        main(["predict", "--model", str(saved), "--input", str(inputs), "--output", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status.value.code == 2 and len(lines) == 1 and message in lines[0] and str(saved) in lines[0]
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_not_a_folder_and_a_missing_shard(tmp_path, tokenizer):
    with pytest.raises(ModelFolderError, match="no such folder"):
        check_model_folder(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelFolderError, match="a file, not a folder"):
        check_model_folder(tmp_path / "file")
    sharded = tmp_path / "sharded"
    deterministic_model().save_pretrained(sharded, max_shard_size="100KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert check_model_folder(sharded) == sharded
    _cut(sharded / shards[-1])
    with pytest.raises(ModelFolderError, match=f"{shards[-1]} is damaged"):
        check_model_folder(sharded)
    (sharded / shards[0]).unlink()
    with pytest.raises(ModelFolderError, match=r"names shard\(s\) \['" + shards[0]):
        hm.MultitaskModel.from_pretrained(sharded)


def test_the_real_command_prints_one_line_and_no_traceback(saved, tmp_path):
    _cut(saved / "model.safetensors")
    inputs = tmp_path / "in.tsv"
    inputs.write_text("id\ttext\na\tthe cat runs\n")
    exe = shutil.which("hf-multitask")
    cmd = [exe] if exe else [sys.executable, "-m", "hf_multitask.cli"]
    proc = subprocess.run([*cmd, "predict", "--model", str(saved), "--input", str(inputs), "--output", str(tmp_path / "o.jsonl")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"hf-multitask: error: --model: model folder {saved}: model.safetensors is damaged "
                                                "(Error while deserializing header: incomplete metadata, file not fully covered): the "
                                                "file was cut short or overwritten; save or download the model again"]  # fmt: skip
    tweet = subprocess.run([*cmd, "tweeteval-test", "--model", str(saved), "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "t")],
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert tweet.returncode == 2 and "Traceback" not in tweet.stderr and "model.safetensors is damaged" in tweet.stderr
    assert not (tmp_path / "t").exists()


def test_the_recipe_backbone_and_a_teacher_name_the_damaged_folder(saved, tiny_data, tmp_path):
    from hf_multitask.distillation import DistillationError, load_teacher
    from hf_multitask.recipe import RecipeError, run

    _cut(saved / "model.safetensors")
    flags = recipe_flags(saved, tiny_data, tmp_path / "out")
    with pytest.raises(RecipeError, match=f"--backbone: model folder {saved}: model.safetensors is damaged"):
        run(flags)
    with pytest.raises(DistillationError, match=f"teacher of task 'sst': model folder {saved}: model.safetensors is damaged"):
        load_teacher(saved, "sst", deterministic_model())


def test_a_model_in_a_subfolder_loads_and_a_damaged_one_is_named(tmp_path):
    """Issue 51: from_pretrained(folder, subfolder=...) checked the root folder, which holds no
    config.json, and refused a healthy model; the check now looks where the model is."""
    root = tmp_path / "repo"
    model = deterministic_model()
    model.save_pretrained(root / "student")
    (root / "README.md").write_text("a repository with the model in a subfolder\n")
    loaded = hm.MultitaskModel.from_pretrained(root, subfolder="student")
    assert loaded.task_names == model.task_names
    for (name, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert p.equal(q), name
    _cut(root / "student" / "model.safetensors")
    with pytest.raises(ModelFolderError, match=r"student: model\.safetensors is damaged"):
        hm.MultitaskModel.from_pretrained(root, subfolder="student")
