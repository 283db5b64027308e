"""Checkpoints survive kills: atomic writes, a completion marker, verified resume (real SIGKILLs)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import WORKERS, deterministic_model, toy_encoded, train_args
from safetensors.torch import load_file

import hf_multitask as hm
from hf_multitask.checkpoints import COMPLETE_MARKER, SURGERY_STATE_NAME, CheckpointError, latest_complete_checkpoint

HERE = WORKERS
COUNTERS = ("train_examples", "train_steps_sst", "train_steps_quora", "train_steps_sts", "train_examples_sst", "train_examples_sts")


def _trainer(out, tokenizer, **overrides):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=32)
    settings = {"aggregator": "gradvac", "max_steps": 6, "save_strategy": "steps", "save_steps": 2, **overrides}
    args = train_args(out, **settings)
    return hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)


def test_every_checkpoint_holds_the_surgery_state_and_a_marker_written_last(tmp_path, tokenizer):
    trainer = _trainer(tmp_path / "out", tokenizer, save_total_limit=2)
    trainer.train()
    folders = sorted((tmp_path / "out").glob("checkpoint-*"))
    assert [f.name for f in folders] == ["checkpoint-4", "checkpoint-6"], "rotation kept the two newest"
    for folder in folders:
        marker = json.loads((folder / COMPLETE_MARKER).read_text())
        assert marker["global_step"] == int(folder.name.split("-")[1])
        assert SURGERY_STATE_NAME in marker["files"] and "model.safetensors" in marker["files"] and "trainer_state.json" in marker["files"]
        newest = max((folder / name).stat().st_mtime_ns for name in marker["files"])
        assert (folder / COMPLETE_MARKER).stat().st_mtime_ns >= newest
    state = torch.load(folders[-1] / SURGERY_STATE_NAME, weights_only=True)
    assert state["task_steps"] == {"sst": 6, "quora": 6, "sts": 6} and state["aggregator"]["targets"]


def _truncate(path: Path, keep: int = 100) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


@pytest.mark.parametrize("damaged", ["model.safetensors", SURGERY_STATE_NAME])
def test_truncated_file_is_an_error_naming_it(tmp_path, tokenizer, damaged):
    _trainer(tmp_path / "out", tokenizer, max_steps=2).train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    _truncate(ckpt / damaged)
    with pytest.raises(CheckpointError, match=rf"checkpoint-2/{damaged}: 100 bytes, but \d+ were written"):
        _trainer(tmp_path / "out", tokenizer).train(resume_from_checkpoint=str(ckpt))


def test_corrupt_state_file_of_the_right_size_is_an_error_naming_it(tmp_path, tokenizer):
    _trainer(tmp_path / "out", tokenizer, max_steps=2).train()
    state = tmp_path / "out" / "checkpoint-2" / SURGERY_STATE_NAME
    state.write_bytes(b"\0" * state.stat().st_size)
    with pytest.raises(CheckpointError, match=rf"{SURGERY_STATE_NAME}: cannot be read"):
        _trainer(tmp_path / "out", tokenizer).train(resume_from_checkpoint=str(state.parent))


def test_missing_surgery_state_is_an_error_unless_accepted(tmp_path, tokenizer, caplog):
    _trainer(tmp_path / "out", tokenizer, max_steps=2).train()
    ckpt = tmp_path / "out" / "checkpoint-2"
    (ckpt / SURGERY_STATE_NAME).unlink()
    marker = json.loads((ckpt / COMPLETE_MARKER).read_text())
    del marker["files"][SURGERY_STATE_NAME]
    (ckpt / COMPLETE_MARKER).write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="has no multitask_state.pt.*--resume_without_surgery_state"):
        _trainer(tmp_path / "out", tokenizer).train(resume_from_checkpoint=str(ckpt))
    resumed = _trainer(tmp_path / "out", tokenizer, resume_without_surgery_state=True)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.task_steps == {"sst": 4, "quora": 4, "sts": 4}, "counters restarted, as accepted"
    assert "start fresh (as asked)" in caplog.text


def test_resume_true_takes_the_newest_complete_checkpoint(tmp_path, tokenizer, caplog):
    _trainer(tmp_path / "out", tokenizer, max_steps=4, save_total_limit=3).train()
    partial = tmp_path / "out" / "checkpoint-4"
    (partial / COMPLETE_MARKER).unlink()
    assert latest_complete_checkpoint(tmp_path / "out") == (tmp_path / "out" / "checkpoint-2", [partial])
    with pytest.raises(CheckpointError, match="checkpoint-4 is incomplete"):
        _trainer(tmp_path / "out", tokenizer).train(resume_from_checkpoint=str(partial))
    resumed = _trainer(tmp_path / "out", tokenizer)
    resumed.train(resume_from_checkpoint=True)
    assert "Resuming from" in caplog.text and "checkpoint-2, the newest complete checkpoint" in caplog.text
    assert "incomplete folders skipped: ['checkpoint-4']" in caplog.text
    assert resumed.task_steps == {"sst": 6, "quora": 6, "sts": 6}
    assert (partial / COMPLETE_MARKER).is_file(), "the partial folder was replaced by a complete one"
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        _trainer(tmp_path / "empty", tokenizer).train(resume_from_checkpoint=True)


# ---------------------------------------------------------------- real kills of the recipe


def _flags(backbone, data, out):
    return ["--backbone", str(backbone), "--data-dir", str(data), "--output-dir", str(out), "--max-steps", "8",
            "--per_device_train_batch_size", "4", "--use_cpu", "true", "--disable_tqdm", "true", "--telemetry_steps", "0",
            "--aggregator", "gradvac", "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no",
            "--load_best_model_at_end", "false", "--learning_rate", "1e-3", "--write_predictions", "false"]  # fmt: skip


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(HERE)}


def _recipe(flags, check=True):
    code = "import sys; from hf_multitask.recipe import main; main(sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-c", code, *flags], capture_output=True, text=True, env=_env(), timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _run_until_paused_then_kill(mode, n, flags):
    proc = subprocess.Popen([sys.executable, str(HERE / "kill_worker.py"), mode, str(n), "--", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())  # fmt: skip
    try:
        for line in proc.stdout:
            if line.strip() == "PAUSED":
                break
        else:
            raise AssertionError(f"the run ended before it paused: {proc.stderr.read()[-3000:]}")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()


def _result(out):
    return load_file(out / "best" / "model.safetensors"), json.loads((out / "metrics.json").read_text())


def _assert_same_run(got, expected):
    weights, metrics = got
    want_weights, want_metrics = expected
    assert weights.keys() == want_weights.keys()
    for name, value in weights.items():
        assert torch.equal(value, want_weights[name]), f"{name} differs from the uninterrupted run"
    for key in COUNTERS:
        assert metrics[key] == want_metrics[key], key


@pytest.fixture(scope="module")
def uninterrupted(tiny_backbone, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    _recipe(_flags(tiny_backbone, tiny_data, out))
    return _result(out)


def test_sigkill_after_a_checkpoint_then_resume_gives_the_uninterrupted_run(tiny_backbone, tiny_data, tmp_path, uninterrupted):
    out = tmp_path / "run"
    _run_until_paused_then_kill("after", 2, _flags(tiny_backbone, tiny_data, out))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    assert not (out / "best").exists()
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    # a plain restart into the same folder is refused: it would rotate the checkpoint away
    refused = _recipe(_flags(tiny_backbone, tiny_data, out), check=False)
    assert refused.returncode == 2 and "already holds checkpoints of another run (checkpoint-4)" in refused.stderr
    assert "Traceback" not in refused.stderr
    _recipe([*_flags(tiny_backbone, tiny_data, out), "--resume_from_checkpoint", "true"])
    _assert_same_run(_result(out), uninterrupted)
    _recipe([*_flags(tiny_backbone, tiny_data, copy), "--resume_from_checkpoint", str(copy / "checkpoint-4")])
    _assert_same_run(_result(copy), uninterrupted)


def test_sigkill_while_a_checkpoint_is_written_resumes_from_the_last_complete_one(tiny_backbone, tiny_data, tmp_path, uninterrupted):
    out = tmp_path / "run"
    _run_until_paused_then_kill("during", 3, _flags(tiny_backbone, tiny_data, out))
    assert (out / "checkpoint-6" / "model.safetensors").is_file() and not (out / "checkpoint-6" / COMPLETE_MARKER).exists()
    assert (out / "checkpoint-4" / COMPLETE_MARKER).is_file(), "the previous checkpoint is not rotated away before the new one is complete"
    bad = _recipe([*_flags(tiny_backbone, tiny_data, out), "--resume_from_checkpoint", str(out / "checkpoint-6")], check=False)
    assert bad.returncode == 2 and "checkpoint-6 is incomplete" in bad.stderr and "Traceback" not in bad.stderr
    resumed = _recipe([*_flags(tiny_backbone, tiny_data, out), "--resume_from_checkpoint", "true"])
    assert "checkpoint-4, the newest complete checkpoint; incomplete folders skipped: ['checkpoint-6']" in resumed.stderr
    _assert_same_run(_result(out), uninterrupted)


@pytest.mark.parametrize(
    "change, named",
    [({"per_device_train_batch_size": 4}, "batch_sizes"), ({"schedule": "proportional"}, "schedule 'round_robin' -> 'proportional'"),
     ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps 1 -> 2"), ({"data_seed": 5}, "data_seed 0 -> 5")],
)  # fmt: skip
def test_resume_refuses_a_run_whose_data_or_schedule_changed(change, named, tmp_path, tokenizer):
    """The checkpoint records what decides each step's examples; a resume with other batch sizes,
    schedule, accumulation or data seed continued a different plan from the saved step, silently."""
    _trainer(tmp_path / "out", tokenizer, max_steps=2).train()
    with pytest.raises(CheckpointError, match=rf"other data or schedule \(.*{named}"):
        _trainer(tmp_path / "out", tokenizer, **change).train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    trainer = _trainer(tmp_path / "out", tokenizer, max_steps=4)  # the same plan, trained longer: resumes
    trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert trainer.state.global_step == 4


def test_resume_refuses_other_training_data(tmp_path, tokenizer):
    _trainer(tmp_path / "out", tokenizer, max_steps=2).train()
    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=32)
    data["sst"] = data["sst"].select(range(20))  # a changed --train_limits, say
    args = train_args(tmp_path / "out", aggregator="gradvac", max_steps=6, save_strategy="steps", save_steps=2)
    trainer = hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    with pytest.raises(CheckpointError, match=r"task_sizes \{'sst': 32, 'quora': 32, 'sts': 32\} -> \{'sst': 20"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
