"""A cell whose run was killed continues from its newest complete checkpoint when the grid runs
again (a TweetEval run is 20-40 min of CPU; a lost session or machine cost the whole run before),
and ``status`` says what a grid has left. The recipe here is mostly a stand-in script run as a
real child process, killed with a real SIGKILL."""

import json
import math
import sys

import pytest

from hf_multitask.checkpoints import COMPLETE_MARKER
from hf_multitask.compare import Grid, GridError, run_grid, status, status_text, summarise, tuned_args

# four "steps", a complete checkpoint (the recipe's completion marker) after each; the metric depends on
# every step, so a resumed run only matches an uninterrupted one if it continued from the saved state
_FAKE_RECIPE = """
import json, os, pathlib, shutil, signal, sys
MARKER = "{marker}"  # the recipe's completion marker, written last: a folder without it is incomplete
argv = sys.argv[1:]
out = pathlib.Path(argv[argv.index("--output-dir") + 1])
out.mkdir(parents=True, exist_ok=True)
lr = float(argv[argv.index("--learning_rate") + 1])
tasks = argv[argv.index("--tasks") + 1 :]
tasks = tasks[: next((i for i, v in enumerate(tasks) if v.startswith("--")), len(tasks))]
task = " ".join(tasks)
resume = argv[argv.index("--resume_from_checkpoint") + 1] == "true" if "--resume_from_checkpoint" in argv else False
start, total = 0, 0.0
if resume:
    found = max((p for p in out.glob("checkpoint-*") if (p / MARKER).exists()), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((found / "state.json").read_text())
    start, total = state["step"], state["total"]
elif "--overwrite_output_dir" in argv:
    for old in out.glob("checkpoint-*"):
        shutil.rmtree(old)
with open(os.environ["FAKE_CALLS"], "a") as calls:
    calls.write(json.dumps({"task": task, "resume": resume, "start": start}) + "\\n")
die = int(os.environ.get("FAKE_DIE_AFTER", "0"))
for step in range(start + 1, 5):
    total += lr * step * step
    folder = out / f"checkpoint-{step}"
    folder.mkdir()
    (folder / "state.json").write_text(json.dumps({"step": step, "total": total}))
    if step == die and os.environ.get("FAKE_DIE_BEFORE_MARKER"):
        os.kill(os.getpid(), signal.SIGKILL)
    (folder / MARKER).write_text("{}")
    if step == die:
        os.kill(os.getpid(), signal.SIGKILL)
print("trained", task, "steps", start + 1, "to 4")
metrics = {f"eval_{t}_{m}": total * (i + 1) for i, t in enumerate(tasks) for m in ("accuracy", "score")}
(out / "metrics.json").write_text(json.dumps({**metrics, "train_seconds": 1.0, "train_examples": 10 * (4 - start),
                                              "train_global_steps": 4 - start}))
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_recipe.py"
    script.write_text(_FAKE_RECIPE.replace("{marker}", COMPLETE_MARKER))  # no hf_multitask import: a torch import per step is slow
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))

    def grid(lr: str = "0.5", single_task: bool = False) -> Grid:
        return Grid.from_dict({"tasks": ["a", "b"], "seeds": [0], "splits": [1], "command": [sys.executable, str(script)],
                               "arms": {"arm": {"single_task": single_task, "args": ["--learning_rate", lr]}}})  # fmt: skip

    def seen() -> list[dict]:
        return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []

    return grid, seen


def _uninterrupted(grid: Grid, folder) -> dict:
    (cell,) = run_grid(grid, folder, say=lambda m: None)
    return cell


def test_a_killed_run_resumes_from_its_newest_complete_checkpoint(fake, tmp_path, monkeypatch):
    grid, seen = fake
    expected = _uninterrupted(grid(), tmp_path / "whole")
    monkeypatch.setenv("FAKE_DIE_AFTER", "2")
    with pytest.raises(RuntimeError, match=r"run failed \(exit -9\)"):
        run_grid(grid(), tmp_path / "cmp", say=lambda m: None)
    monkeypatch.delenv("FAKE_DIE_AFTER")
    (cell,) = run_grid(grid(), tmp_path / "cmp", say=lambda m: None)

    assert [(c["resume"], c["start"]) for c in seen()] == [(False, 0), (False, 0), (True, 2)]
    assert cell["resumed_from"] == "checkpoint-2" and "resumed_from" not in expected
    assert cell["metrics"]["eval_a_score"] == expected["metrics"]["eval_a_score"], "continued from the saved state"
    assert cell["metrics"]["eval_b_score"] == expected["metrics"]["eval_b_score"]
    log = (tmp_path / "cmp" / "runs" / "split1" / "arm" / "seed0" / "log.txt").read_text()
    assert "resuming from checkpoint-2" in log and log.count("trained") == 1, "the log keeps the first attempt's lines"
    # its seconds cover the resumed half only: the report's time columns leave it out
    (row,) = summarise(json.loads((tmp_path / "cmp" / "grid.json").read_text()), [cell])
    assert math.isnan(row["s_per_1k_examples"]) and math.isnan(row["s_per_step"])
    assert row["overall"] == pytest.approx(1.5 * expected["metrics"]["eval_a_score"])


def test_a_run_of_an_edited_grid_starts_over_rather_than_resuming_another_commands_checkpoint(fake, tmp_path, monkeypatch):
    grid, seen = fake
    monkeypatch.setenv("FAKE_DIE_AFTER", "2")
    with pytest.raises(RuntimeError):
        run_grid(grid("0.5"), tmp_path / "cmp", say=lambda m: None)
    monkeypatch.delenv("FAKE_DIE_AFTER")
    (cell,) = run_grid(grid("0.25"), tmp_path / "cmp", say=lambda m: None)
    assert [(c["resume"], c["start"]) for c in seen()] == [(False, 0), (False, 0)]
    assert "resumed_from" not in cell
    assert cell["metrics"]["eval_a_score"] == _uninterrupted(grid("0.25"), tmp_path / "whole")["metrics"]["eval_a_score"]


def test_a_checkpoint_killed_while_being_written_is_not_resumed_from(fake, tmp_path, monkeypatch):
    grid, seen = fake
    monkeypatch.setenv("FAKE_DIE_AFTER", "1")
    monkeypatch.setenv("FAKE_DIE_BEFORE_MARKER", "1")
    with pytest.raises(RuntimeError):
        run_grid(grid(), tmp_path / "cmp", say=lambda m: None)
    monkeypatch.delenv("FAKE_DIE_AFTER")
    (cell,) = run_grid(grid(), tmp_path / "cmp", say=lambda m: None)
    assert [(c["resume"], c["start"]) for c in seen()] == [(False, 0), (False, 0)] and "resumed_from" not in cell


def test_a_single_task_arm_resumes_the_task_whose_run_was_killed(fake, tmp_path, monkeypatch):
    grid, seen = fake
    monkeypatch.setenv("FAKE_DIE_AFTER", "3")
    with pytest.raises(RuntimeError):
        run_grid(grid(single_task=True), tmp_path / "cmp", say=lambda m: None)
    monkeypatch.delenv("FAKE_DIE_AFTER")
    (cell,) = run_grid(grid(single_task=True), tmp_path / "cmp", say=lambda m: None)
    assert [(c["task"], c["resume"], c["start"]) for c in seen()] == [("a", False, 0), ("a", True, 3), ("b", False, 0)]
    assert cell["resumed_from"] == {"a": "checkpoint-3"}


def test_the_real_recipe_resumed_by_the_harness_ends_where_an_uninterrupted_run_ends(tiny_backbone, tiny_data, tmp_path):
    """The flags the harness adds (``--resume_from_checkpoint true`` in place of
    ``--overwrite_output_dir``) work with the recipe under the benchmarks' protocol (evaluation
    and a checkpoint at each stage, the best kept), and the resumed cell's metrics are the
    uninterrupted cell's to the last bit (resume is exact: the feature, so compared exactly)."""
    import shutil

    protocol = ["--backbone", str(tiny_backbone), "--data-dir", str(tiny_data), "--max-steps", "4", "--per_device_train_batch_size", "4",
                "--use_cpu", "true", "--disable_tqdm", "true", "--telemetry_steps", "0", "--save_strategy", "steps", "--save_steps", "2",
                "--eval_strategy", "steps", "--eval_steps", "2", "--load_best_model_at_end", "true", "--save_total_limit", "3",
                "--write_predictions", "false"]  # fmt: skip
    grid = Grid.from_dict({"tasks": ["sst", "sts"], "train_limits": {"sst": 40}, "seeds": [0], "splits": [1], "protocol": protocol,
                           "arms": {"pcgrad": {"args": ["--aggregator", "pcgrad"]}}})  # fmt: skip
    (whole,) = run_grid(grid, tmp_path / "cmp", say=lambda m: None)
    cell = tmp_path / "cmp" / "runs" / "split1" / "pcgrad" / "seed0"
    # what a kill during step 3 leaves: checkpoint-2, no checkpoint-4, no metrics, no result
    assert sorted(p.name for p in (cell / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    shutil.rmtree(cell / "run" / "checkpoint-4")
    for name in ("run/metrics.json", "result.json"):
        (cell / name).unlink()
    (resumed,) = run_grid(grid, tmp_path / "cmp", say=lambda m: None)
    assert resumed["resumed_from"] == "checkpoint-2" and "resumed_from" not in whole
    assert resumed["metrics"]["train_global_steps"] == 4
    scores = [k for k in whole["metrics"] if k.startswith("eval_")]
    assert scores and {k: resumed["metrics"][k] for k in scores} == {k: whole["metrics"][k] for k in scores}


def test_status_says_what_is_done_what_can_resume_and_what_is_left(fake, tmp_path, monkeypatch):
    script = tmp_path / "fake_recipe.py"
    spec = {"tasks": ["a", "b"], "seeds": [0, 1], "splits": [1], "tuning_split": 0, "command": [sys.executable, str(script)],
            "arms": {"separate": {"single_task": True, "args": ["--learning_rate", "0.5"]},
                     "tuned": {"candidates": {"low": ["--learning_rate", "0.1"], "high": ["--learning_rate", "0.9"]}},
                     "reuse": {"args": ["--aggregator", "x"], "choice_of": "tuned"}}}  # fmt: skip
    grid, out = Grid.from_dict(spec), tmp_path / "cmp"

    def by(rows):
        return {(r["kind"], r["arm"], r.get("candidate", r["seed"])): r for r in rows}

    rows = by(status(grid, out))
    assert len(rows) == 2 + 3 * 2 and sum(r["left"] for r in rows.values()) == 2 + 2 * 2 + 2 + 2
    assert rows[("run", "tuned", 0)]["waiting"] and rows[("run", "reuse", 0)]["waiting"] and not rows[("run", "separate", 0)]["waiting"]
    assert status_text(list(rows.values())).endswith("10 runs left (no finished run to time them by)")

    # the tuning finishes, then separate's seed 0 is killed in task b's run after its second checkpoint
    tuned_args(grid, grid.arm("tuned"), out, say=lambda m: None)
    monkeypatch.setenv("FAKE_DIE_AFTER", "2")
    with pytest.raises(RuntimeError):
        run_grid(grid, out, arms=["separate"], say=lambda m: None)
    rows = by(status(grid, out))
    assert [rows[("tuning", "tuned", c)]["done"] is not None for c in ("low", "high")] == [True, True]
    assert not rows[("run", "tuned", 0)]["waiting"] and not rows[("run", "reuse", 1)]["waiting"], "the choice is known"
    # seed 0 of separate: task a's run died at its checkpoint 2 (the stand-in dies in every run): resumable
    assert rows[("run", "separate", 0)]["left"] == 2 and rows[("run", "separate", 0)]["resumable"] == 1
    table = status_text(list(rows.values()))
    assert "| `separate` | — | 0/2 | 4 | 1 |" in table and "| `tuned` | 2/2 | 0/2 | 2 | 0 |" in table
    assert "8 runs left: about" in table, table

    monkeypatch.delenv("FAKE_DIE_AFTER")
    run_grid(grid, out, say=lambda m: None)
    rows = status(grid, out)
    assert sum(r["left"] for r in rows) == 0 and all(r["done"] is not None for r in rows)
    assert status_text(rows).endswith("0 runs left")
    # an edited grid: `run` would stop at the cell, and status says so
    edited = Grid.from_dict({**spec, "arms": {**spec["arms"], "separate": {"single_task": True, "args": ["--learning_rate", "0.4"]}}})
    assert "run with other flags" in status_text(status(edited, out))


def test_running_some_seeds_records_the_whole_grid(fake, tmp_path):
    """`run --seeds 2` once wrote a grid.json with seeds [2] (the narrowed grid), so the
    comparison folder misrecorded its own grid until the next report rewrote it."""
    from hf_multitask.compare.cli import main

    script = tmp_path / "fake_recipe.py"
    spec = {"tasks": ["a"], "seeds": [0, 1], "splits": [1], "command": [sys.executable, str(script)],
            "arms": {"arm": {"args": ["--learning_rate", "0.5"]}}}  # fmt: skip
    grid, out = Grid.from_dict(spec), tmp_path / "cmp"
    (cell,) = run_grid(grid, out, seeds=[1], say=lambda m: None)
    assert cell["seed"] == 1 and not (out / "runs" / "split1" / "arm" / "seed0").exists()
    assert json.loads((out / "grid.json").read_text())["seeds"] == [0, 1]
    with pytest.raises(GridError, match=r"--seeds: \[7\] are not seeds of the grid \[0, 1\]"):
        run_grid(grid, out, seeds=[1, 7], say=lambda m: None)
    # the command line's --seeds is the same narrowing
    (tmp_path / "grid.json").write_text(json.dumps(spec))
    main(["run", str(tmp_path / "grid.json"), "--output-dir", str(tmp_path / "cli"), "--seeds", "0"])
    assert [p.name for p in (tmp_path / "cli" / "runs" / "split1" / "arm").iterdir()] == ["seed0"]


def test_status_counts_a_distilled_cells_teachers_and_sees_its_student_resumable(fake, tmp_path, monkeypatch):
    """A ``teachers_from`` cell is up to T + 1 runs (its teachers, then the student, whose command
    carries the teacher flags): status once counted one run and never saw the student resumable."""
    script = tmp_path / "fake_recipe.py"
    spec = {"tasks": ["a", "b"], "seeds": [0], "splits": [1], "command": [sys.executable, str(script)],
            "arms": {"separate": {"single_task": True, "args": ["--learning_rate", "0.5"]},
                     "bam": {"args": ["--learning_rate", "0.3"], "teachers_from": "separate"}}}  # fmt: skip
    grid, out = Grid.from_dict(spec), tmp_path / "cmp"
    monkeypatch.chdir(tmp_path)  # the teacher flags are paths relative to the working directory, as in `run`

    def bam_row():
        (row,) = [r for r in status(grid, out) if r["kind"] == "run" and r["arm"] == "bam"]
        return row["left"], row["resumable"]

    assert bam_row() == (3, 0), "two teachers and the student"
    monkeypatch.setenv("FAKE_DIE_AFTER", "2")  # the first teacher's run is killed after its second checkpoint
    with pytest.raises(RuntimeError):
        run_grid(grid, out, arms=["bam"], say=lambda m: None)
    assert bam_row() == (3, 1), "teacher a can continue"
    cache = out / "runs" / "split1" / "bam" / "seed0" / "teacher_outputs"
    cache.mkdir(parents=True)
    for task in ("a", "b"):  # the teachers' outputs are cached (as a committed cell's are): no teacher left to train
        (cache / f"{task}.npz").write_bytes(b"")
    assert bam_row() == (1, 0)
    with pytest.raises(RuntimeError):  # now the student is killed after its second checkpoint
        run_grid(grid, out, arms=["bam"], say=lambda m: None)
    assert bam_row() == (1, 1), "the student can continue"
