"""An arm with ``same_training_as`` another (the same flags, another primary task) is that arm's
run re-scored when its primary task keeps the same checkpoint, and trains when it keeps another:
a TweetEval run is 20-40 min of CPU, and symmetric multitask with each primary task's checkpoint
choice is the same training three times over. The stand-in recipe is a real child process that
writes what the recipe writes (metrics, ``trainer_state.json``, test files)."""

import json
import sys

import pytest

from hf_multitask.compare import Grid, GridError, grid_dict, run_grid, status, status_text
from hf_multitask.compare.report import load_results, markdown
from hf_multitask.compare.stats import summarise

# two evaluations: task a is best at step 2, task b at step 1, their mean at step 2 (0.65 < 0.66)
_FAKE_RECIPE = """
import json, os, pathlib, sys
argv = sys.argv[1:]
def values(flag):
    if flag not in argv:
        return []
    rest = argv[argv.index(flag) + 1 :]
    return rest[: next((i for i, v in enumerate(rest) if v.startswith("--")), len(rest))]
out = pathlib.Path(values("--output-dir")[0])
out.mkdir(parents=True, exist_ok=True)
tasks, primary = values("--tasks"), values("--primary_tasks")
with open(os.environ["FAKE_CALLS"], "a") as calls:
    calls.write(json.dumps({"primary": primary}) + "\\n")
scores = {1: {"a": 0.5, "b": 0.8}, 2: {"a": 0.72, "b": 0.6}}
def evaluation(step):
    found = {f"eval_{t}_{m}": scores[step][t] for t in tasks for m in ("score", "accuracy")}
    found.update({f"eval_{t}_loss": 1.0 / step for t in tasks}, eval_overall=sum(scores[step][t] for t in tasks) / len(tasks))
    if primary:
        found.update(eval_overall_all=found["eval_overall"], eval_overall=sum(scores[step][t] for t in primary) / len(primary))
    return found
best = None
for step in (1, 2):
    if best is None or evaluation(step)["eval_overall"] > evaluation(best)["eval_overall"]:
        best = step
history = [{**evaluation(s), "eval_runtime": 0.1 * s, "epoch": s, "step": s} for s in (1, 2)]
state = {"log_history": [*history, {"train_runtime": 3.0, "step": 2}], "best_global_step": best}
if os.environ.get("FAKE_NO_STATE") is None:
    (out / "trainer_state.json").write_text(json.dumps(state))
(out / "metrics.json").write_text(json.dumps({**evaluation(best), "train_seconds": 3.0, "train_examples": 20, "train_global_steps": 2}))
test = out / "predictions" / "test"
test.mkdir(parents=True, exist_ok=True)
for t in primary or tasks:
    (test / f"{t}.txt").write_text(f"{t} from step {best}\\n")
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_recipe.py"
    script.write_text(_FAKE_RECIPE)  # no hf_multitask import: a child process per run stays fast
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CALLS", str(calls))

    def grid(tuning_split: int | None = None, **arms) -> Grid:
        return Grid.from_dict({"tasks": ["a", "b"], "seeds": [0], "splits": [1], "command": [sys.executable, str(script)],
                               "test_predictions": "{arm}/seed{seed}/test", "tuning_split": tuning_split, "arms": arms})  # fmt: skip

    def seen() -> list[list[str]]:
        return [json.loads(line)["primary"] for line in calls.read_text().splitlines()] if calls.exists() else []

    return grid, seen


SYMMETRIC = {"args": ["--aggregator", "sum"]}


def _test_files(folder) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_an_arm_whose_primary_keeps_the_sources_checkpoint_is_its_run_rescored(fake, tmp_path):
    grid, seen = fake
    arms = {"sym": SYMMETRIC, "sym_a": {**SYMMETRIC, "primary": ["a"], "same_training_as": "sym"}}
    cells = {c["arm"]: c for c in run_grid(grid(**arms), tmp_path / "cmp", say=lambda m: None)}
    assert seen() == [[]], "only the source trained"
    # the control: the same arm trained, as it would be without same_training_as
    (trained,) = run_grid(grid(ctl=arms["sym_a"] | {"same_training_as": None}), tmp_path / "ctl", say=lambda m: None)
    assert seen() == [[], ["a"]]
    derived = cells["sym_a"]
    assert derived["metrics"] == trained["metrics"]
    assert derived["metrics"]["eval_overall"] == 0.72 and derived["metrics"]["eval_overall_all"] == pytest.approx(0.66)
    assert derived["derived_from"] == {"arm": "sym", "seed": 0, "split": 1, "step": 2} and derived["wall_seconds"] == 0.0
    assert derived["primary"] == ["a"] and derived["args"] == SYMMETRIC["args"] and derived["arm"] == "sym_a"
    assert _test_files(tmp_path / "cmp" / "sym_a" / "seed0" / "test") == _test_files(tmp_path / "ctl" / "ctl" / "seed0" / "test")
    assert _test_files(tmp_path / "cmp" / "sym_a" / "seed0" / "test") == {"a.txt": "a from step 2\n"}
    # the source's evaluations are kept in its result, without the evaluation-speed keys
    source = cells["sym"]
    assert source["best_step"] == 2 and [e["step"] for e in source["evaluations"]] == [1, 2]
    assert "eval_runtime" not in source["evaluations"][0] and source["evaluations"][0]["eval_b_score"] == 0.8
    # finished: nothing runs again, and the derived cell reads as done
    run_grid(grid(**arms), tmp_path / "cmp", say=lambda m: None)
    assert seen() == [[], ["a"]]


def test_an_arm_whose_primary_keeps_another_checkpoint_trains(fake, tmp_path):
    grid, seen = fake
    arms = {"sym": SYMMETRIC, "sym_b": {**SYMMETRIC, "primary": ["b"], "same_training_as": "sym"}}
    out = tmp_path / "cmp"
    run_grid(grid(**arms), out, arms=["sym"], say=lambda m: None)
    rows = {r["arm"]: r for r in status(grid(**arms), out)}
    assert rows["sym_b"]["left"] == 1 and not rows["sym_b"]["rescored"], "b is best at step 1: its own run keeps checkpoint 1"
    cells = {c["arm"]: c for c in run_grid(grid(**arms), out, say=lambda m: None)}
    assert seen() == [[], ["b"]]
    assert "derived_from" not in cells["sym_b"] and cells["sym_b"]["best_step"] == 1
    assert _test_files(out / "sym_b" / "seed0" / "test") == {"b.txt": "b from step 1\n"}


def test_a_source_without_recorded_evaluations_is_not_rescored(fake, tmp_path, monkeypatch):
    """A source cell run before the harness kept evaluations (or by a command that writes no
    trainer state) cannot show which checkpoint the arm would keep: the arm trains."""
    grid, seen = fake
    arms = {"sym": SYMMETRIC, "sym_a": {**SYMMETRIC, "primary": ["a"], "same_training_as": "sym"}}
    monkeypatch.setenv("FAKE_NO_STATE", "1")
    cells = {c["arm"]: c for c in run_grid(grid(**arms), tmp_path / "cmp", say=lambda m: None)}
    assert seen() == [[], ["a"]] and "derived_from" not in cells["sym_a"] and "evaluations" not in cells["sym"]


def test_a_missing_test_file_of_the_source_makes_the_arm_train(fake, tmp_path):
    """A source with a primary task wrote only that task's test file: an arm serving another task
    that keeps the same checkpoint still has no file to take, so it trains."""
    grid, seen = fake
    arms = {"only_a": {**SYMMETRIC, "primary": ["a"]}, "sym": {**SYMMETRIC, "same_training_as": "only_a"}}
    cells = {c["arm"]: c for c in run_grid(grid(**arms), tmp_path / "cmp", arms=["sym"], say=lambda m: None)}
    assert seen() == [["a"], []] and "derived_from" not in cells["sym"]
    assert set(_test_files(tmp_path / "cmp" / "sym" / "seed0" / "test")) == {"a.txt", "b.txt"}


def test_status_counts_a_cell_that_will_be_rescored_as_no_run(fake, tmp_path):
    grid, _ = fake
    arms = {"sym": SYMMETRIC, "sym_a": {**SYMMETRIC, "primary": ["a"], "same_training_as": "sym"}}
    out = tmp_path / "cmp"
    rows = {r["arm"]: r for r in status(grid(**arms), out)}
    assert rows["sym_a"]["left"] == 1, "before the source has run, the arm may have to train"
    run_grid(grid(**arms), out, arms=["sym"], say=lambda m: None)
    rows = status(grid(**arms), out)
    assert {r["arm"]: (r["left"], r["rescored"]) for r in rows} == {"sym": (0, False), "sym_a": (0, True)}
    assert "| `sym_a` | — | 0/1 (1 to be re-scored from `same_training_as` runs, no run left) | 0 | 0 |" in status_text(rows)


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ({"x": {"args": ["--lr", "1"], "same_training_as": "nope"}}, "must name another arm"),
        ({"x": {"args": ["--lr", "1"], "same_training_as": "x"}}, "must name another arm"),
        ({"x": {"args": ["--lr", "1"]}, "y": {"args": ["--lr", "2"], "primary": ["a"], "same_training_as": "x"}}, "same 'args'"),
        ({"x": {"args": ["--lr", "1"], "tasks": ["a"]}, "y": {"args": ["--lr", "1"], "primary": ["a"], "same_training_as": "x"}}, "same 'args' and 'tasks'"),
        ({"x": {"single_task": True}, "y": {"same_training_as": "x"}}, "'x' is single_task"),
        ({"x": {"candidates": {"c": []}}, "y": {"same_training_as": "x"}}, "'x' is single_task, tuned"),
        ({"x": {}, "y": {"same_training_as": "x"}, "z": {"same_training_as": "y"}}, "itself re-scores 'x'"),
    ],
)  # fmt: skip
def test_same_training_as_is_refused_where_the_runs_would_differ(arms, message):
    with pytest.raises(GridError, match=message):
        Grid.from_dict({"tasks": ["a", "b"], "seeds": [0], "splits": [1], "tuning_split": 0, "arms": arms})


def test_the_real_recipe_records_its_evaluations_and_a_rescored_cell_equals_the_trained_one(tiny_backbone, tiny_data, tmp_path):
    """The recipe writes ``trainer_state.json``; the harness keeps its evaluations and the step
    the Trainer kept, and a cell re-scored for another primary task has the metrics that cell
    gets when it trains. One evaluation, so every primary task keeps that checkpoint."""
    protocol = ["--backbone", str(tiny_backbone), "--data-dir", str(tiny_data), "--max-steps", "4", "--per_device_train_batch_size", "4",
                "--use_cpu", "true", "--disable_tqdm", "true", "--telemetry_steps", "0", "--save_strategy", "steps", "--save_steps", "4",
                "--eval_strategy", "steps", "--eval_steps", "4", "--load_best_model_at_end", "true", "--write_predictions", "false"]  # fmt: skip
    arms = {"sym": SYMMETRIC, "sym_sts": {**SYMMETRIC, "primary": ["sts"], "same_training_as": "sym"}}

    def grid(**arms) -> Grid:
        return Grid.from_dict({"tasks": ["sst", "sts"], "train_limits": {"sst": 40}, "seeds": [0], "splits": [1], "protocol": protocol,
                               "arms": arms})  # fmt: skip

    cells = {c["arm"]: c for c in run_grid(grid(**arms), tmp_path / "cmp", say=lambda m: None)}
    (trained,) = run_grid(grid(ctl={**arms["sym_sts"], "same_training_as": None}), tmp_path / "ctl", say=lambda m: None)
    source, derived = cells["sym"], cells["sym_sts"]
    assert source["best_step"] == 4 and [e["step"] for e in source["evaluations"]] == [4]
    assert source["evaluations"][0]["eval_sts_score"] == source["metrics"]["eval_sts_score"], "the kept checkpoint, evaluated again"
    assert derived["derived_from"]["step"] == 4 and "derived_from" not in trained and trained["best_step"] == 4
    assert set(derived["metrics"]) == set(trained["metrics"])
    scores = [k for k in trained["metrics"] if k.endswith(("_score", "overall", "overall_all"))]
    assert derived["metrics"]["eval_overall"] == derived["metrics"]["eval_sts_score"] != derived["metrics"]["eval_overall_all"]
    assert {k: derived["metrics"][k] for k in scores} == {k: trained["metrics"][k] for k in scores}, "the same training, to the last bit"


# candidate level: a tuned arm's candidate that trains exactly as another tuned arm's candidate of that name
def _tuned_grid(fake, **arms) -> Grid:
    return fake[0](tuning_split=0, **arms)


def _primary_arm(primary: list[str] | None, **extra) -> dict:
    return {**SYMMETRIC, **({"primary": primary} if primary else {}), "candidates": {"sum": [], "lr3": ["--lr", "3"]}, **extra}


def test_a_candidate_whose_primary_keeps_the_source_candidates_checkpoint_is_its_tuning_run_rescored(fake, tmp_path):
    _, seen = fake
    arms = {"src": _primary_arm(None), "for_a": _primary_arm(["a"], candidates_same_training_as={"sum": "src"})}
    grid = _tuned_grid(fake, **arms)
    out = tmp_path / "cmp"
    rows = {(r["arm"], r.get("candidate")): r for r in status(grid, out)}
    assert rows["for_a", "sum"]["left"] == 1, "before the source candidate has run, the candidate may have to train"
    run_grid(grid, out, arms=["for_a"], say=lambda m: None)
    # src's `sum` (no primary), then for_a's `lr3` and its reported cell: for_a's `sum` never trained
    assert seen() == [[], ["a"], ["a"]]
    derived = json.loads((out / "tuning" / "for_a" / "sum" / "result.json").read_text())
    assert derived["derived_from"] == {"arm": "src", "seed": 0, "split": 0, "step": 2, "candidate": "sum"}
    assert derived["candidate"] == "sum" and derived["primary"] == ["a"] and derived["wall_seconds"] == 0.0
    # the control: the same candidate trained
    ctl = _tuned_grid(fake, ctl=_primary_arm(["a"]))
    run_grid(ctl, tmp_path / "ctl", say=lambda m: None)
    trained = json.loads((tmp_path / "ctl" / "tuning" / "ctl" / "sum" / "result.json").read_text())
    assert derived["metrics"] == trained["metrics"] and derived["metrics"]["eval_overall"] == 0.72
    choice = json.loads((out / "tuning" / "for_a" / "choice.json").read_text())
    assert choice["scores"] == {"sum": 0.72, "lr3": 0.72} and choice["scored_on"] == ["a"]
    rows = status(grid, out)
    assert not any(r["left"] for r in rows if r["arm"] == "for_a")


def test_a_candidate_whose_primary_keeps_another_checkpoint_trains(fake, tmp_path):
    _, seen = fake
    grid = _tuned_grid(fake, src=_primary_arm(None), for_b=_primary_arm(["b"], candidates_same_training_as={"sum": "src"}))
    out = tmp_path / "cmp"
    run_grid(grid, out, arms=["src"], say=lambda m: None)
    rows = {(r["arm"], r.get("candidate")): r for r in status(grid, out)}
    assert rows["for_b", "sum"]["left"] == 1 and not rows["for_b", "sum"]["rescored"], "b is best at step 1, src kept step 2"
    calls = len(seen())
    run_grid(grid, out, arms=["for_b"], say=lambda m: None)
    assert seen()[calls:] == [["b"], ["b"], ["b"]], "for_b's sum and lr3 train, then its reported cell"
    result = json.loads((out / "tuning" / "for_b" / "sum" / "result.json").read_text())
    assert "derived_from" not in result and result["best_step"] == 1


def test_status_counts_a_candidate_that_will_be_rescored_as_no_run(fake, tmp_path):
    grid = _tuned_grid(fake, src=_primary_arm(None), for_a=_primary_arm(["a"], candidates_same_training_as={"sum": "src"}))
    out = tmp_path / "cmp"
    run_grid(grid, out, arms=["src"], say=lambda m: None)
    rows = status(grid, out)
    mine = {r.get("candidate"): (r["left"], r["rescored"]) for r in rows if r["arm"] == "for_a"}
    assert mine == {"sum": (0, True), "lr3": (1, False), None: (1, False)}
    assert "| `for_a` | 0/2 (1 to be re-scored from another arm's run, no run left) | 0/1 (flags chosen by the tuning) | 2 | 0 |" in (
        status_text(rows)
    )


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ({"x": _primary_arm(None), "y": _primary_arm(["a"], candidates_same_training_as={"nope": "x"})}, "is not one of the arm's candidates"),
        ({"y": _primary_arm(["a"], candidates_same_training_as={"sum": "y"})}, "must name another arm"),
        ({"y": _primary_arm(["a"], candidates_same_training_as={"sum": "nope"})}, "must name another arm"),
        ({"x": {**SYMMETRIC, "candidates": {"other": []}}, "y": _primary_arm(["a"], candidates_same_training_as={"sum": "x"})}, "has no candidate 'sum'"),
        ({"x": {"args": ["--lr", "1"], "candidates": {"sum": []}}, "y": _primary_arm(["a"], candidates_same_training_as={"sum": "x"})}, "same flags"),
        ({"x": _primary_arm(None, tasks=["a"]), "y": _primary_arm(["a"], candidates_same_training_as={"sum": "x"})}, "same flags and 'tasks'"),
        ({"x": _primary_arm(None), "y": _primary_arm(["a"], candidates_same_training_as={"sum": "x"}),
          "z": _primary_arm(["b"], candidates_same_training_as={"sum": "y"})}, "itself re-scores that candidate from 'x'"),
        ({"y": _primary_arm(["a"], candidates_same_training_as=["sum", "x"])}, "must map candidate names to arm names"),
    ],
)  # fmt: skip
def test_candidates_same_training_as_is_refused_where_the_runs_would_differ(arms, message):
    with pytest.raises(GridError, match=message):
        Grid.from_dict({"tasks": ["a", "b"], "seeds": [0], "splits": [1], "tuning_split": 0, "arms": arms})


def test_candidates_same_training_as_survives_the_grid_file():
    grid = Grid.from_dict({"tasks": ["a", "b"], "seeds": [0], "splits": [1], "tuning_split": 0,
                           "arms": {"x": _primary_arm(None), "y": _primary_arm(["a"], candidates_same_training_as={"sum": "x"})}})  # fmt: skip
    again = Grid.from_dict({**grid_dict(grid), "command": grid.command})
    assert again.arm("y").candidates_same_training_as == {"sum": "x"} and not again.arm("x").candidates_same_training_as


# the same flags in two arms: a tuned arm that chooses a fixed arm's flags is that arm's cells
FIXED = {"args": ["--aggregator", "sum", "--schedule", "annealed"]}
TUNED = {"args": ["--aggregator", "sum"], "candidates": {"annealed": ["--schedule", "annealed"], "rr": ["--schedule", "round_robin"]}}


def test_a_tuned_arm_that_chooses_a_fixed_arms_flags_takes_its_finished_cells(fake, tmp_path):
    _, seen = fake
    grid = _tuned_grid(fake, fixed=FIXED, tuned=TUNED)  # the stand-in scores every flag alike: the first candidate wins
    out = tmp_path / "cmp"
    run_grid(grid, out, arms=["fixed"], say=lambda m: None)
    assert len(seen()) == 1
    said: list[str] = []
    run_grid(grid, out, arms=["tuned"], say=said.append)
    assert len(seen()) == 3, "the two tuning runs train; the reported cell does not"
    assert any("has the flags of fixed's finished cell" in m for m in said)
    fixed, tuned = (json.loads((out / "runs" / "split1" / a / "seed0" / "result.json").read_text()) for a in ("fixed", "tuned"))
    assert tuned["same_run_as"] == {"arm": "fixed", "seed": 0, "split": 1} and tuned["arm"] == "tuned" and tuned["wall_seconds"] == 0.0
    assert tuned["metrics"] == fixed["metrics"] and tuned["args"] == fixed["args"] and tuned["evaluations"] == fixed["evaluations"]
    assert _test_files(out / "tuned" / "seed0" / "test") == _test_files(out / "fixed" / "seed0" / "test") != {}
    row = next(r for r in status(grid, out) if r["arm"] == "tuned" and r["kind"] == "run")
    assert row["done"] is not None and row["left"] == 0
    grid_file, cells = load_results(out)
    assert "- `tuned` on split 1: its cells are runs of `fixed` with the very same flags" in markdown(
        grid_file, summarise(grid_file, cells)
    )


def test_status_counts_a_cell_with_a_finished_twin_as_no_run(fake, tmp_path):
    grid = _tuned_grid(fake, fixed=FIXED, tuned=TUNED)
    out = tmp_path / "cmp"
    run_grid(grid, out, arms=["fixed"], say=lambda m: None)
    for name in TUNED["candidates"]:  # the tuning done, without its reported cell
        args = [*TUNED["args"], *TUNED["candidates"][name]]
        folder = out / "tuning" / "tuned" / name
        folder.mkdir(parents=True)
        found = json.loads((out / "runs" / "split1" / "fixed" / "seed0" / "result.json").read_text())
        (folder / "result.json").write_text(json.dumps({**found, "args": args, "split": 0, "arm": "tuned"}))
    rows = status(grid, out)
    row = next(r for r in rows if r["arm"] == "tuned" and r["kind"] == "run")
    assert row["copied"] and row["left"] == 0 and row["done"] is None
    assert "| `tuned` | 2/2 | 0/1 (1 to be copied from another arm's cells with the same flags, no run left) | 0 | 0 |" in status_text(rows)


@pytest.mark.parametrize(
    "twin",
    [
        {**FIXED, "single_task": True},  # six one-task runs are not one run with the same flags
        {**FIXED, "primary": ["a"]},  # another primary task keeps another checkpoint
        {"args": [*FIXED["args"], "--lr", "3"]},
    ],
)
def test_a_cell_is_not_taken_from_an_arm_whose_run_differs(fake, tmp_path, twin):
    _, seen = fake
    grid = fake[0](fixed=FIXED, twin=twin)
    out = tmp_path / "cmp"
    run_grid(grid, out, arms=["fixed"], say=lambda m: None)
    calls = len(seen())
    run_grid(grid, out, arms=["twin"], say=lambda m: None)
    assert len(seen()) - calls == (2 if twin.get("single_task") else 1)
    assert "same_run_as" not in json.loads((out / "runs" / "split1" / "twin" / "seed0" / "result.json").read_text())
