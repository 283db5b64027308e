"""The comparison harness: a tiny grid end to end in real subprocesses, resumability, statistics, errors."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import write_tsv

from hf_multitask.compare import Grid, GridError, interval, markdown, paired, report, run_grid, summarise


def _grid(backbone, data, **overrides) -> Grid:
    spec = {
        "tasks": ["sst", "sts"],
        "train_limits": {"sst": 40},
        "seeds": [0, 1],
        "splits": [1],
        "tuning_split": 0,
        "reference": "separate",
        "baseline": "sum",
        "protocol": [
            "--backbone",
            str(backbone),
            "--data-dir",
            str(data),
            "--max-steps",
            "2",
            "--per_device_train_batch_size",
            "4",
            "--use_cpu",
            "true",
            "--disable_tqdm",
            "true",
            "--telemetry_steps",
            "0",
            "--save_strategy",
            "no",
            "--eval_strategy",
            "no",
            "--load_best_model_at_end",
            "false",
            "--write_predictions",
            "false",
        ],  # fmt: skip
        "arms": {
            "separate": {"single_task": True, "args": ["--aggregator", "sum"]},
            "sum": {
                "args": ["--aggregator", "sum"],
                "candidates": {"lr_a": ["--learning_rate", "1e-4"], "lr_b": ["--learning_rate", "1e-3"]},
            },
            "pcgrad": {"args": ["--aggregator", "pcgrad"], "choice_of": "sum"},
        },
        **overrides,
    }
    return Grid.from_dict(spec)


def test_tiny_grid_end_to_end_and_resume(tiny_backbone, tiny_data, tmp_path):
    grid = _grid(tiny_backbone, tiny_data)
    out = tmp_path / "cmp"
    said = []
    results = run_grid(grid, out, say=said.append)
    # 2 tuning candidates, then 2 seeds each of separate (2 tasks), sum and pcgrad
    assert len(results) == 6 and len(said) == 2 + 2 * 2 + 2 + 2
    choice = json.loads((out / "tuning" / "sum" / "choice.json").read_text())
    assert choice["split"] == 0 and set(choice["scores"]) == {"lr_a", "lr_b"}
    summed = next(r for r in results if r["arm"] == "sum")
    chosen_lr = ["--learning_rate", "1e-4" if choice["chosen"] == "lr_a" else "1e-3"]
    assert summed["args"][-2:] == chosen_lr
    # the choice_of arm reuses sum's tuning (no runs of its own on the tuning split) with its own method
    pcgrad = next(r for r in results if r["arm"] == "pcgrad")
    assert pcgrad["args"] == ["--aggregator", "pcgrad", *chosen_lr]
    assert sorted(p.name for p in (out / "tuning").iterdir()) == ["sum"]
    cmd = (out / "runs" / "split1" / "pcgrad" / "seed1" / "run" / "metrics.json").read_text()
    assert json.loads(cmd)["train_global_steps"] == 2
    for r in results:
        assert r["peak_rss_mb"] > 50 and r["wall_seconds"] > 0 and r["split"] == 1
        assert r["versions"]["torch"] == torch.__version__ and r["versions"]["transformers"] == transformers.__version__
    separate = [r for r in results if r["arm"] == "separate"]
    assert all({"eval_sst_accuracy", "eval_sts_pearson"} <= set(r["metrics"]) for r in separate)

    # finished runs are never run again
    said.clear()
    again = run_grid(grid, out, say=said.append)
    assert said == [] and again == results

    rows = report(out)
    by_arm = {r["arm"]: r for r in rows}
    assert set(by_arm) == {"separate", "sum", "pcgrad"} and all(r["seeds"] == 2 for r in rows)
    assert math.isnan(by_arm["sum"]["vs_baseline"]) and math.isnan(by_arm["separate"]["delta_m"])
    pc = {r["seed"]: r for r in results if r["arm"] == "pcgrad"}
    sm = {r["seed"]: r for r in results if r["arm"] == "sum"}
    overall = {
        a: {s: (c["metrics"]["eval_sst_score"] + c["metrics"]["eval_sts_score"]) / 2 for s, c in runs.items()}
        for a, runs in (("pc", pc), ("sm", sm))
    }
    expected = interval([overall["pc"][s] - overall["sm"][s] for s in (0, 1)])
    assert by_arm["pcgrad"]["vs_baseline"] == pytest.approx(expected[0]) and by_arm["pcgrad"]["vs_baseline_ci"] == pytest.approx(
        expected[1]
    )
    table = (out / "results.md").read_text()
    assert "| `pcgrad` | 2 |" in table and "chosen `" in table and "Validation split 1" in table
    assert f"- `pcgrad` takes `sum`'s choice, `{choice['chosen']}`" in table
    assert (out / "results.png").stat().st_size > 5000
    with open(out / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3


def test_interval_and_delta_m():
    mean, half = interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(interval([5.0])[1])
    grid = {"tasks": ["a", "b"], "arms": {"ref": {}, "m": {}}, "reference": "ref", "baseline": None}

    def cell(arm, seed, a, b):
        return {"arm": arm, "seed": seed, "split": 0, "peak_rss_mb": 1.0,
                "metrics": {"eval_a_accuracy": a, "eval_a_score": a, "eval_b_pearson": b, "eval_b_score": (b + 1) / 2}}  # fmt: skip

    cells = [cell("ref", 0, 0.5, 0.8), cell("m", 0, 0.55, 0.76), cell("ref", 1, 0.4, 0.8), cell("m", 1, 0.4, 0.88)]
    rows = {r["arm"]: r for r in summarise(grid, cells)}
    # Delta-m per seed: 100/2 * (0.05/0.5 - 0.04/0.8) = 2.5, then 100/2 * (0 + 0.08/0.8) = 5
    assert rows["m"]["delta_m"] == pytest.approx(3.75) and rows["m"]["delta_m_seeds"] == 2
    # paired overall difference vs the reference: scores (a + (b + 1) / 2) / 2 per seed
    diffs = [(0.55 + 0.88) / 2 - (0.5 + 0.9) / 2, (0.4 + 0.94) / 2 - (0.4 + 0.9) / 2]
    assert rows["m"]["vs_reference"] == pytest.approx(interval(diffs)[0])
    assert rows["m"]["vs_reference_ci"] == pytest.approx(interval(diffs)[1])


def test_pairs_report_paired_differences_per_task_and_overall():
    from hf_multitask.compare import paired

    grid = {
        "tasks": ["a", "b"],
        "arms": {"x": {}, "y": {}, "z": {}},
        "reference": None,
        "baseline": None,
        "pairs": [["x", "y"], ["x", "z"]],
    }

    def cell(arm, seed, a, b):
        return {"arm": arm, "seed": seed, "split": 1, "peak_rss_mb": 1.0,
                "metrics": {"eval_a_accuracy": a, "eval_a_score": a, "eval_b_pearson": b, "eval_b_score": (b + 1) / 2}}  # fmt: skip

    # x - y per seed: a +0.02, +0.04, +0.03 (seed 3 of y missing: not paired); z has no cells
    cells = [cell("x", s, 0.5 + d, 0.8) for s, d in ((0, 0.02), (1, 0.04), (2, 0.03), (3, 0.0))]
    cells += [cell("y", s, 0.5, 0.8 - 0.01 * s) for s in (0, 1, 2)]
    rows = paired(grid, cells)
    assert len(rows) == 1, "a pair with no common seed is left out"
    row = rows[0]
    assert row["pair"] == "x − y" and row["seeds"] == 3
    assert (row["a"], row["a_ci"]) == pytest.approx(interval([0.02, 0.04, 0.03]))
    assert (row["b"], row["b_ci"]) == pytest.approx(interval([0.0, 0.01, 0.02]))
    overall = [(0.02 + 0.0 / 2) / 2, (0.04 + 0.01 / 2) / 2, (0.03 + 0.02 / 2) / 2]
    assert (row["overall"], row["overall_ci"]) == pytest.approx(interval(overall))
    table = markdown(grid, summarise(grid, cells), pairs=rows)
    assert "Paired differences on split 1" in table and "| `x − y` | 3 | 0.030 ± 0.025 |" in table and "(better)" in table


def test_the_report_sets_a_specialising_cells_served_score_beside_every_expert_kept_and_its_cost():
    """A ``keep better`` score is chosen on the validation set it is scored on: the report puts the
    score with every expert kept, the multitask phase's, the parameters in memory and the phase's
    cost beside it (a cell from before ``experts_eval_*`` was recorded shows "—")."""
    grid = {"tasks": ["a"], "arms": {"plain": {}, "spec": {}}, "reference": None, "baseline": None}
    plain = {
        "arm": "plain",
        "seed": 0,
        "split": 0,
        "peak_rss_mb": 1.0,
        "metrics": {"eval_a_accuracy": 0.5, "eval_a_score": 0.5, "eval_overall": 0.5},
    }
    spec = {"arm": "spec", "seed": 1, "split": 0, "peak_rss_mb": 1.0, "metrics": {
        "eval_a_accuracy": 0.62, "eval_a_score": 0.62, "eval_overall": 0.62, "experts_eval_overall": 0.6, "multitask_eval_overall": 0.55,
        "specialise_kept": 1, "serving_parameters": 45_000_000, "specialise_seconds": 30.0, "specialise_examples": 1200}}  # fmt: skip
    old = {**spec, "seed": 0, "metrics": {k: v for k, v in spec["metrics"].items() if k != "experts_eval_overall"}}
    assert "Specialising cells" not in markdown(grid, summarise(grid, [plain]), results=[plain]), "no section without a specialising cell"
    table = markdown(grid, summarise(grid, [plain, spec, old]), results=[plain, spec, old])
    assert "| `spec` | 0 | 1 | 0.6200 | 0.6000 | 0.5500 | 1 | 45.0 M | 25.0 |" in table, table
    assert "| `spec` | 0 | 0 | 0.6200 | — | 0.5500 |" in table and "| `plain` | 0 | 0 |" not in table
    gone = {**spec, "arm": "gone"}  # a cell of an arm the grid no longer has: the main table leaves it out, and so does this
    assert "`gone`" not in markdown(grid, summarise(grid, [spec, gone]), results=[spec, gone])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tuning_split": 1}, "never report on the split used to choose"),
        ({"pairs": [["pcgrad", "pcgrad"]]}, "'pairs': each entry must be two different arms"),
        ({"pairs": [["pcgrad", "nope"]]}, "'pairs': each entry must be two different arms"),
        ({"pairs": "pcgrad"}, "'pairs' must be a list of \\[arm, arm\\] lists"),
        ({"reference": "sum"}, "must be single_task"),
        ({"baseline": "nope"}, "'baseline': 'nope' is not an arm"),
        ({"train_limits": {"quora": 5}}, "'train_limits' names tasks"),
        ({"protocol": ["--seed", "3"]}, "--seed is set by the harness"),
        ({"seeds": ["a"]}, "'seeds' must be a list of integers"),
        ({"colour": 1}, "unknown keys \\['colour'\\]"),
        (
            {"arms": {"separate": {"single_task": True}, "sum": {}, "pc": {"choice_of": "sum"}}},
            "'choice_of' must name an arm with candidates",
        ),
        (
            {
                "arms": {
                    "separate": {"single_task": True},
                    "sum": {"candidates": {"a": []}},
                    "pc": {"choice_of": "sum", "candidates": {"b": []}},
                }
            },
            "cannot have candidates",
        ),
    ],
)
def test_grid_errors_name_the_key(tiny_backbone, tiny_data, change, message):
    with pytest.raises(GridError, match=message):
        _grid(tiny_backbone, tiny_data, **change)


def test_cli_reports_a_failed_run_and_a_bad_grid_file(tiny_backbone, tiny_data, tmp_path):
    bad = tmp_path / "grid.yaml"
    bad.write_text("tasks: [sst\nseeds: [0]\n")
    proc = subprocess.run([sys.executable, "-m", "hf_multitask.compare", "run", str(bad), "--output-dir", str(tmp_path / "o")],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "invalid YAML" in proc.stderr and "line" in proc.stderr
    grid = _grid(tiny_backbone, tiny_data, arms={"broken": {"args": ["--aggregator", "sum", "--max_length", "0"]}}, reference=None,
                 baseline=None, seeds=[0])  # fmt: skip
    with pytest.raises(RuntimeError, match="run failed.*max_length"):
        run_grid(grid, tmp_path / "o2", say=lambda m: None)
    assert not (tmp_path / "o2" / "runs" / "split1" / "broken" / "seed0" / "result.json").exists()


def test_an_arm_on_a_subset_of_tasks_is_scored_on_its_tasks():
    grid = {"tasks": ["a", "b"], "arms": {"alone": {"tasks": ["b"]}, "both": {}}, "reference": "alone", "baseline": "both"}

    def cell(arm, seed, tasks, a, b):
        metrics = {}
        if "a" in tasks:
            metrics.update(eval_a_accuracy=a, eval_a_score=a)
        if "b" in tasks:
            metrics.update(eval_b_accuracy=b, eval_b_score=b)
        return {"arm": arm, "seed": seed, "split": 0, "peak_rss_mb": 1.0, "tasks": tasks, "metrics": metrics}

    cells = [cell("alone", s, ["b"], 0, 0.8 + 0.01 * s) for s in (0, 1)] + [cell("both", s, ["a", "b"], 0.5, 0.9) for s in (0, 1)]
    rows = {r["arm"]: r for r in summarise(grid, cells)}
    assert math.isnan(rows["alone"]["a"]) and rows["alone"]["overall"] == pytest.approx(0.805)
    # Delta-m of `both` against `alone` uses task b only: 100 * (0.9 - 0.8)/0.8 and 100 * (0.9 - 0.81)/0.81
    assert rows["both"]["delta_m"] == pytest.approx((12.5 + 100 * 0.09 / 0.81) / 2)
    # `alone` against `both` on the task it is scored on (b): 0.8 + 0.01 s - 0.9; `both` has no overall over a and b
    # in `alone`, so the reverse is not compared
    assert rows["alone"]["vs_baseline"] == pytest.approx(-0.095)
    grid["baseline"] = "alone"
    assert math.isnan({r["arm"]: r for r in summarise(grid, cells)}["both"]["vs_baseline"]), "alone has no score on a"
    grid["baseline"] = "both"

    # a pair of them is compared on the task they share: b, 0.8 + 0.01 s - 0.9 per seed
    grid["pairs"] = [["alone", "both"]]
    (pair,) = paired(grid, cells)
    assert pair["tasks"] == "b" and math.isnan(pair["a"])
    assert (pair["overall"], pair["overall_ci"]) == pytest.approx(interval([-0.1, -0.09]))
    table = markdown(grid, list(rows.values()), pairs=[pair])
    assert "(b only)" in table and "| `alone` | 2 | — | 0.805" in table and "| a accuracy | b accuracy |" in table
    assert "| `alone − both` | 2 | — | -0.095 ± 0.064 | -0.095 ± 0.064 (worse) (b only) |" in table
    with pytest.raises(GridError, match="'tasks' must be a non-empty subset"):
        Grid.from_dict({"tasks": ["a"], "arms": {"x": {"tasks": ["z"]}}, "seeds": [0], "splits": [0]})


def test_cost_columns_are_medians_over_seeds():
    grid = {"tasks": ["a"], "arms": {"m": {}}, "reference": None, "baseline": None}

    def cell(seed, seconds):
        return {"arm": "m", "seed": seed, "split": 1, "peak_rss_mb": 100.0 + seed,
                "metrics": {"eval_a_accuracy": 0.5, "eval_a_score": 0.5, "train_seconds": seconds,
                            "train_examples": 2000, "train_global_steps": 20}}  # fmt: skip

    # seed 1 shared the machine with other work and took 10x as long: the median ignores it
    (row,) = summarise(grid, [cell(0, 100.0), cell(1, 1000.0), cell(2, 110.0)])
    assert row["s_per_1k_examples"] == pytest.approx(55.0) and row["s_per_step"] == pytest.approx(5.5)
    assert row["peak_rss_mb"] == 102.0


def test_cost_columns_count_an_auxiliary_phase_and_leave_out_one_left_untimed():
    grid = {"tasks": ["a"], "arms": {"m": {}}, "reference": None, "baseline": None}

    def cell(seed, args, **phase):
        return {"arm": "m", "seed": seed, "split": 1, "peak_rss_mb": 100.0, "args": args, "protocol": ["--max_length", "64"],
                "metrics": {"eval_a_accuracy": 0.5, "eval_a_score": 0.5, "train_seconds": 100.0,
                            "train_examples": 2000, "train_global_steps": 20, **phase}}  # fmt: skip

    stilts = ["--intermediate_steps", "30"]
    timed = cell(0, stilts, intermediate_seconds=200.0, intermediate_examples=1000, intermediate_global_steps=30)
    (row,) = summarise(grid, [timed])
    assert row["s_per_1k_examples"] == pytest.approx(100.0) and row["s_per_step"] == pytest.approx(6.0)
    # a run that timed its phase but not its steps (older runs): the phase ran exactly its flag's steps
    steps_from_flag = cell(0, stilts, intermediate_seconds=200.0, intermediate_examples=1000)
    (row,) = summarise(grid, [steps_from_flag])
    assert row["s_per_1k_examples"] == pytest.approx(100.0) and row["s_per_step"] == pytest.approx(6.0)
    # a run with the phase that did not time it is left out, not counted as cheap
    (row,) = summarise(grid, [cell(0, stilts)])
    assert math.isnan(row["s_per_1k_examples"]) and math.isnan(row["s_per_step"])
    for spelling in (["--intermediate-steps", "30"], ["--intermediate_steps=30"]):  # the parser takes these too
        (row,) = summarise(grid, [cell(0, spelling)])
        assert math.isnan(row["s_per_1k_examples"]), spelling
        (row,) = summarise(grid, [cell(0, spelling, intermediate_seconds=200.0, intermediate_examples=1000)])
        assert row["s_per_step"] == pytest.approx(6.0), spelling
    (row,) = summarise(grid, [cell(0, ["--intermediate_steps", "0"]), cell(1, [])])
    assert row["s_per_1k_examples"] == pytest.approx(50.0) and row["s_per_step"] == pytest.approx(5.0)


def test_a_cell_run_with_other_flags_is_refused_not_reused(tiny_backbone, tiny_data, tmp_path):
    """A finished cell is reused only while the grid still gives it the same flags: after an
    arm's args (or the protocol) change, its old result would silently stand for the new arm."""
    grid = _grid(tiny_backbone, tiny_data, arms={"pcgrad": {"args": ["--aggregator", "pcgrad"]}}, reference=None, baseline=None,
                 seeds=[0])  # fmt: skip
    cell = tmp_path / "o" / "runs" / "split1" / "pcgrad" / "seed0" / "result.json"
    cell.parent.mkdir(parents=True)
    stale = {"metrics": {}, "arm": "pcgrad", "seed": 0, "split": 1, "args": ["--aggregator", "sum"], "tasks": ["sst", "sts"]}
    cell.write_text(json.dumps(stale))
    said = []
    with pytest.raises(GridError, match=r"result.json was run with args \['--aggregator', 'sum'\].*'pcgrad'.*delete"):
        run_grid(grid, tmp_path / "o", say=said.append)
    assert said == [], "nothing ran"
    # the same flags (an older cell that records only args and tasks): reused as it is
    stale["args"] = ["--aggregator", "pcgrad"]
    cell.write_text(json.dumps(stale))
    assert run_grid(grid, tmp_path / "o", say=said.append) == [stale] and said == []
    # a changed protocol is caught too, once the cell records it
    cell.write_text(json.dumps({**stale, "protocol": [*grid.protocol[:-1], "true"]}))
    with pytest.raises(GridError, match="was run with protocol"):
        run_grid(grid, tmp_path / "o", say=said.append)


def test_narrow_intervals_are_shown_with_more_digits():
    from hf_multitask.compare.report import _fmt

    assert _fmt(0.7331, 0.0031) == "0.733 ± 0.003"
    assert _fmt(0.00034, 0.00034) == "0.0003 ± 0.0003", "not 0.000 ± 0.000"
    assert _fmt(0.5, 1e-9) == "0.50000 ± 0.00000" and _fmt(0.5, math.nan) == "0.500" and _fmt(math.nan, 0.1) == "—"


def test_unknown_arms_to_run_are_named(tiny_backbone, tiny_data, tmp_path):
    with pytest.raises(GridError, match=r"--arms: unknown arms \['nope'\]; the grid has \['separate', 'sum', 'pcgrad'\]"):
        run_grid(_grid(tiny_backbone, tiny_data), tmp_path / "o", arms=["sum", "nope"], say=lambda m: None)


def test_per_task_flags_are_cut_to_a_single_task_run():
    from hf_multitask.compare.run import _per_task_flags

    flags = ["--validation_files", '{"sst": "a.csv", "sts": "b.csv"}', "--task_batch_sizes", '{"sts": 8}', "--schedule_kwargs",
             '{"steps_per_epoch": 3}', "--lr", "1"]  # fmt: skip
    assert _per_task_flags(flags, ["sst", "sts"], ["sst"]) == [
        "--validation_files", '{"sst": "a.csv"}', "--schedule_kwargs", '{"steps_per_epoch": 3}', "--lr", "1"]  # fmt: skip
    assert _per_task_flags(flags, ["sst", "sts"], ["sst", "sts"])[:2] == ["--validation_files", '{"sst": "a.csv", "sts": "b.csv"}']


def test_a_single_task_arm_takes_the_protocols_validation_files(tiny_backbone, tiny_data, tmp_path):
    rows = [[f"v{i}", "good fun day", i % 5] for i in range(6)]
    write_tsv(tmp_path / "sst-dev.csv", ["id", "sentence", "sentiment"], rows)
    write_tsv(
        tmp_path / "sts-dev.csv", ["id", "sentence1", "sentence2", "similarity"], [[f"w{i}", "good", "fun day", i % 5] for i in range(6)]
    )
    files = json.dumps({"sst": str(tmp_path / "sst-dev.csv"), "sts": str(tmp_path / "sts-dev.csv")})
    grid = _grid(tiny_backbone, tiny_data, seeds=[0], tuning_split=None, baseline=None, pairs=[],
                 arms={"separate": {"single_task": True, "args": ["--aggregator", "sum", "--validation_files", files]}})  # fmt: skip
    results = run_grid(grid, tmp_path / "cmp", say=lambda m: None)
    assert {"eval_sst_accuracy", "eval_sts_pearson"} <= set(results[0]["metrics"])


def test_tuning_args_reach_the_tuning_runs_only(tiny_backbone, tiny_data, tmp_path):
    grid = _grid(tiny_backbone, tiny_data, seeds=[0], tuning_args=["--validation_fraction", "0.25"], reference=None, baseline="sum", pairs=[],
                 arms={"sum": {"args": ["--aggregator", "sum"], "candidates": {"a": ["--learning_rate", "1e-4"], "b": []}}})  # fmt: skip
    results = run_grid(grid, tmp_path / "cmp", say=lambda m: None)
    tuned = json.loads((tmp_path / "cmp" / "tuning" / "sum" / "a" / "result.json").read_text())
    assert tuned["args"][-2:] == ["--validation_fraction", "0.25"]
    assert "--validation_fraction" not in results[0]["args"]
    assert json.loads((tmp_path / "cmp" / "grid.json").read_text())["tuning_args"] == ["--validation_fraction", "0.25"]


def test_a_metric_groups_members_are_not_taken_for_the_groups_metric():
    """With stance as five target tasks, ``eval_stance_abortion_loss`` (sorted before the group's
    ``eval_stance_stance_f1``) was reported as stance's metric."""
    from hf_multitask.compare.stats import _primary

    metrics = {"eval_stance_abortion_loss": 0.9, "eval_stance_abortion_stance_f1": 0.4, "eval_stance_abortion_score": 0.4,
               "eval_stance_stance_f1": 0.6, "eval_stance_score": 0.6, "eval_stance_loss": 3.0}  # fmt: skip
    assert _primary(metrics, "stance") == ("stance_f1", 0.6)
    assert _primary({"eval_sts_pearson": 0.8, "eval_sts_spearman": 0.7, "eval_sts_score": 0.9}, "sts") == ("pearson", 0.8)
    with pytest.raises(GridError, match="no metric for task 'irony'"):
        _primary({"eval_irony_loss": 0.5, "eval_irony_score": 0.7}, "irony")


_FAKE_RECIPE = """
import json, pathlib, sys
argv = sys.argv[1:]
out = pathlib.Path(argv[argv.index("--output-dir") + 1])
out.mkdir(parents=True, exist_ok=True)
lr = float(argv[argv.index("--learning_rate") + 1])
# the larger learning rate is better for task a, worse for b, and worse on the mean of the two
a, b = (0.7, 0.2) if lr > 1e-3 else (0.5, 0.9)
primary = argv[argv.index("--primary_tasks") + 1 :] if "--primary_tasks" in argv else []
primary = primary[: next((i for i, v in enumerate(primary) if v.startswith("--")), len(primary))]
(out / "metrics.json").write_text(json.dumps({"eval_a_accuracy": a, "eval_a_score": a, "eval_b_accuracy": b, "eval_b_score": b,
                                              "train_seconds": 1.0, "train_examples": 10, "train_global_steps": 1,
                                              "seen_primary": primary}))
"""


def test_a_primary_arm_is_tuned_run_and_scored_on_its_primary_tasks(tmp_path):
    """Issue 25: the auxiliary tasks serve the primary, so a primary arm's candidate is chosen by
    the primary's score (here the mean over both tasks would choose the other candidate), its runs
    get ``--primary_tasks``, and the report compares it with other arms on the primary alone."""
    script = tmp_path / "fake_recipe.py"
    script.write_text(_FAKE_RECIPE)
    grid = Grid.from_dict({
        "tasks": ["a", "b"], "seeds": [0, 1], "splits": [1], "tuning_split": 0, "command": [sys.executable, str(script)],
        "reference": "separate", "baseline": "symmetric", "pairs": [["primary_a", "symmetric"], ["primary_a", "separate"]],
        "arms": {"separate": {"single_task": True, "args": ["--learning_rate", "1e-4"]},
                 "symmetric": {"args": ["--learning_rate", "1e-4"], "candidates": {"low": [], "high": ["--learning_rate", "1e-2"]}},
                 "primary_a": {"primary": ["a"], "candidates": {"low": ["--learning_rate", "1e-4"], "high": ["--learning_rate", "1e-2"]}}},
    })  # fmt: skip
    out = tmp_path / "cmp"
    cells = run_grid(grid, out, say=lambda m: None)
    choice = json.loads((out / "tuning" / "primary_a" / "choice.json").read_text())
    assert choice["chosen"] == "high" and choice["scored_on"] == ["a"] and choice["scores"] == {"low": 0.5, "high": 0.7}
    assert json.loads((out / "tuning" / "symmetric" / "choice.json").read_text())["chosen"] == "low", "mean over a and b"
    mine = [c for c in cells if c["arm"] == "primary_a"]
    assert [c["metrics"]["seen_primary"] for c in mine] == [["a"], ["a"]] and all(c["primary"] == ["a"] for c in mine)
    assert all(c["metrics"]["seen_primary"] == [] and "primary" not in c for c in cells if c["arm"] == "symmetric")
    assert json.loads((out / "grid.json").read_text())["arms"]["primary_a"]["primary"] == ["a"]

    recorded = json.loads((out / "grid.json").read_text())
    rows = {r["arm"]: r for r in summarise(recorded, cells)}
    # scored on a alone: 0.7, and +0.2 on a against both symmetric and separate (whose overall is over a and b)
    assert rows["primary_a"]["overall"] == pytest.approx(0.7) and rows["primary_a"]["tasks"] == "a"
    assert rows["primary_a"]["vs_baseline"] == pytest.approx(0.2) and rows["primary_a"]["vs_reference"] == pytest.approx(0.2)
    assert rows["primary_a"]["b"] == pytest.approx(0.2), "the auxiliary task's metric is still shown"
    assert rows["symmetric"]["overall"] == pytest.approx(0.7) and rows["symmetric"]["tasks"] == "a b"
    pairs = {r["pair"]: r for r in paired(recorded, cells)}
    for name in ("primary_a − symmetric", "primary_a − separate"):
        assert pairs[name]["tasks"] == "a" and pairs[name]["overall"] == pytest.approx(0.2) and math.isnan(pairs[name]["b"])
    assert "(a only)" in markdown(recorded, list(rows.values()), pairs=list(pairs.values()))


@pytest.mark.parametrize(
    ("arm", "message"),
    [
        ({"primary": ["z"]}, "'primary' must be a non-empty subset of the arm's tasks"),
        ({"primary": [], "args": []}, "'primary' must be a non-empty subset"),
        ({"tasks": ["b"], "primary": ["a"]}, "'primary' must be a non-empty subset of the arm's tasks \\['b'\\]"),
        ({"single_task": True, "primary": ["a"]}, "a single_task arm has no auxiliary tasks"),
        ({"args": ["--primary_tasks", "a"]}, "--primary_tasks is set by the harness from the arm's 'primary' key"),
        ({"candidates": {"c": ["--primary_tasks", "a"]}}, "--primary_tasks is set by the harness"),
        ({"choice_of": "tuned_for_a"}, r"'choice_of' 'tuned_for_a' chose its candidate for the primary tasks \['a'\]; give this arm"),
        ({"choice_of": "tuned_for_a", "primary": ["b"]}, r"give this arm the same 'primary' \(it has \['b'\]\)"),
    ],
)
def test_a_primary_arm_is_refused_when_it_cannot_be_scored(arm, message):
    with pytest.raises(GridError, match=message):
        Grid.from_dict({"tasks": ["a", "b"], "seeds": [0], "splits": [1], "tuning_split": 0,
                        "arms": {"x": arm, "tuned_for_a": {"primary": ["a"], "candidates": {"c": []}}}})  # fmt: skip


def test_a_choice_of_arm_serving_the_same_primary_reuses_the_choice():
    grid = Grid.from_dict({"tasks": ["a", "b"], "seeds": [0], "splits": [1], "tuning_split": 0,
                           "arms": {"x": {"primary": ["a"], "choice_of": "tuned_for_a"},
                                    "tuned_for_a": {"primary": ["a"], "candidates": {"c": []}}}})  # fmt: skip
    assert grid.arm("x").choice_of == "tuned_for_a" and grid.arm("x").primary == ["a"]


def test_a_teachers_from_arm_trains_the_teacher_arms_runs_then_distils_and_keeps_the_cache(tiny_backbone, tiny_data, tmp_path):
    """BAM!'s arm: each cell trains the same seed's single-task runs of the teacher arm (they reproduce
    that arm's cells), distils them into one student, and keeps their outputs; a later attempt that
    has the cache trains no teacher again."""
    grid = _grid(tiny_backbone, tiny_data, arms={"separate": {"single_task": True, "args": ["--aggregator", "sum"]},
                                                 "sum": {"args": ["--aggregator", "sum"]},
                                                 "bam": {"args": ["--aggregator", "sum"], "teachers_from": "separate"}},
                 baseline=None, tuning_split=None)  # fmt: skip
    out, said = tmp_path / "cmp", []
    plain = run_grid(grid, out, arms=["sum"], seeds=[0], say=lambda m: None)[0]
    bam = run_grid(grid, out, arms=["bam"], seeds=[0], say=said.append)[0]
    # measured: 0.261 against 0.230; a twin would score the same to the last bit, a change of rounding is no proof
    assert "same_run_as" not in bam, "not the plain run's twin"
    assert abs(bam["metrics"]["eval_overall"] - plain["metrics"]["eval_overall"]) > 0.005, "distillation changed the run"
    separate = run_grid(grid, out, arms=["separate"], seeds=[0], say=lambda m: None)[0]
    cell = out / "runs" / "split1" / "bam" / "seed0"
    for task in ("sst", "sts"):
        teacher = json.loads((cell / "teachers" / task / "result.json").read_text())
        mine = {k: v for k, v in teacher["metrics"].items() if k.startswith(f"eval_{task}_")}
        assert mine and mine == {k: v for k, v in separate["metrics"].items() if k.startswith(f"eval_{task}_")}, (
            "the teachers are separate's runs"
        )
        meta = json.loads((cell / "teacher_outputs" / f"{task}.json").read_text())
        assert not meta["teacher"].startswith("/") and meta["examples"] > 0, "the committed cache names no machine's folder"
    assert bam["metrics"]["teacher_seconds"] > 0 and [m for m in said if "teacher" in m] == [
        "bam: seed 0, split 1: teacher sst (separate's run)",
        "bam: seed 0, split 1: teacher sts (separate's run)",
    ]
    # a fresh clone: the results and the cache, no run folders; the cell runs again without any teacher
    for path in [cell / "result.json", cell / "run", *(cell / "teachers").glob("*/run")]:
        subprocess.run(["rm", "-rf", str(path)], check=True)
    said.clear()
    again = run_grid(grid, out, arms=["bam"], seeds=[0], say=said.append)[0]
    assert said == ["bam: seed 0, split 1"] and again["metrics"]["teacher_seconds_sst"] == 0.0
    assert again["metrics"]["eval_overall"] == bam["metrics"]["eval_overall"]
    with pytest.raises(GridError, match="'teachers_from' must name another arm"):
        _grid(tiny_backbone, tiny_data, arms={"sum": {"args": []}, "bam": {"args": [], "teachers_from": "bam"}}, baseline=None,
              reference=None, tuning_split=None)  # fmt: skip
    with pytest.raises(GridError, match="not distilled itself"):
        _grid(tiny_backbone, tiny_data, arms={"sum": {"args": []}, "a": {"args": [], "teachers_from": "sum"},
                                               "b": {"args": [], "teachers_from": "a"}},
              baseline=None, reference=None, tuning_split=None)  # fmt: skip


@pytest.mark.parametrize("form", ["encoder", "pal"])
def test_a_specialised_teacher_arm_teaches_with_its_experts_trained_by_its_exact_command(form, tiny_backbone, tiny_data, tmp_path):
    """issue 49, bam_specialised: the teacher arm is a multitask arm with two-step specialisation; one
    run of it, by its own command, teaches every task with that task's expert."""
    from hf_multitask.compare.run import cell_folder, cell_plan

    special = ["--aggregator", "sum", "--specialise_steps", "2", "--specialise_keep", "better", "--specialise_form", form,
               "--specialise_rank", "4", "--pal_heads", "2"]  # fmt: skip
    grid = _grid(tiny_backbone, tiny_data, arms={"separate": {"single_task": True, "args": ["--aggregator", "sum"]},
                                                 "specialised": {"args": special},
                                                 "bam_specialised": {"args": ["--aggregator", "sum"], "teachers_from": "specialised"}},
                 baseline=None, tuning_split=None)  # fmt: skip
    out, said = tmp_path / "cmp", []
    arm = grid.arm("bam_specialised")
    folder = cell_folder(out, arm, 0, 1)
    teachers, cmd = cell_plan(grid, list(arm.args), arm, ["sst", "sts"], 0, 1, folder)
    own = cell_plan(grid, special, grid.arm("specialised"), ["sst", "sts"], 0, 1, folder / "teachers" / "specialised")[1]
    assert [(name, sub) for name, sub, _ in teachers] == [("specialised", folder / "teachers" / "specialised")]
    assert teachers[0][2] == [*own, "--test_predictions", "false"], "the teacher run is the specialised arm's own command"
    flags = json.loads(cmd[cmd.index("--teachers") + 1])
    where = {"encoder": "specialised/{}", "pal": "specialised/experts"}[form]
    assert flags == {t: os.path.relpath(folder / "teachers" / "specialised" / "run" / where.format(t)) for t in ("sst", "sts")}
    bam = run_grid(grid, out, arms=["bam_specialised"], seeds=[0], say=said.append)[0]
    assert [m for m in said if "teacher" in m] == ["bam_specialised: seed 0, split 1: teacher specialised (specialised's run)"]
    teacher = json.loads((folder / "teachers" / "specialised" / "result.json").read_text())
    reference = run_grid(grid, out, arms=["specialised"], seeds=[0], say=lambda m: None)[0]
    for key in ("eval_overall", "experts_eval_overall", "multitask_eval_overall"):
        assert teacher["metrics"][key] == reference["metrics"][key], f"the teacher run reproduces the specialised cell ({key})"
    assert bam["metrics"]["teacher_seconds"] > 0 and teacher["args"] == special


def test_a_teacher_run_trained_by_other_flags_is_refused_not_distilled_from(tiny_backbone, tiny_data, tmp_path):
    # review: a teachers_from cell reused any teacher run with a best/ folder, whatever flags trained it
    from hf_multitask.compare.run import cell_folder, teacher_plan

    grid = _grid(tiny_backbone, tiny_data, arms={"separate": {"single_task": True, "args": ["--aggregator", "sum"]},
                                                 "specialised": {"args": ["--aggregator", "sum", "--specialise_steps", "2"]},
                                                 "bam_specialised": {"args": ["--aggregator", "sum"], "teachers_from": "specialised"}},
                 baseline=None, tuning_split=None)  # fmt: skip
    arm = grid.arm("bam_specialised")
    folder = cell_folder(tmp_path, arm, 0, 1)
    sub = folder / "teachers" / "specialised"
    (sub / "run" / "best").mkdir(parents=True)
    (sub / "result.json").write_text(json.dumps({"args": ["--aggregator", "sum", "--specialise_steps", "3"], "tasks": ["sst", "sts"]}))
    with pytest.raises(GridError, match="specialise_steps"):
        teacher_plan(grid, arm, ["sst", "sts"], 0, 1, folder)
    (sub / "result.json").write_text(json.dumps({"args": ["--aggregator", "sum", "--specialise_steps", "2"], "tasks": ["sst", "sts"]}))
    assert teacher_plan(grid, arm, ["sst", "sts"], 0, 1, folder)[0] == [], "the same flags: the teacher is reused"
    (sub / "result.json").unlink()
    assert [name for name, _, _ in teacher_plan(grid, arm, ["sst", "sts"], 0, 1, folder)[0]] == ["specialised"], "no result: trained"
