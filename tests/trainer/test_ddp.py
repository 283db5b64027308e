"""Two real gloo processes on CPU give the same update as one process on the combined batch."""

import json
from pathlib import Path

import pytest
import torch
from conftest import WORKERS, launch_distributed

WORKER = WORKERS / "ddp_worker.py"


def _run(nproc: int, out: Path, vocab: Path, batch: int, aggregator: str, overrides: dict | None = None, mode: str = "train") -> dict:
    proc = launch_distributed(nproc, WORKER, out, vocab, batch, aggregator, json.dumps(overrides or {}), mode)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


@pytest.mark.parametrize("aggregator", ["pcgrad"])
def test_two_process_ddp_equals_one_process_on_the_combined_batch(tmp_path, tokenizer, aggregator):
    """SGD without clipping, as in the tests below: the two runs sum the examples' gradients in another
    order, and AdamW turned that rounding into weight differences of up to 0.86 of the tolerance (avx2
    kernels; 0.72 avx512, 0.36 default); SGD's step is linear in the gradient."""
    vocab = Path(tokenizer.vocab_file)
    sgd = {"optim": "sgd", "max_grad_norm": 0.0, "learning_rate": 0.05}
    two = _run(2, tmp_path / "two.pt", vocab, 4, aggregator, sgd)
    one = _run(1, tmp_path / "one.pt", vocab, 8, aggregator, sgd)
    assert two["world"] == 2 and one["world"] == 1, "the 2-process run must really be distributed"
    moved = 0
    for name, p in one["params"].items():
        q = two["params"][name]
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-5), (name, (p - q).abs().max())
    init = __import__("conftest").deterministic_model()
    for name, p in init.named_parameters():
        moved += int(not torch.allclose(p, one["params"][name]))
    assert moved > 10, "training must have changed the parameters"
    assert [r["conflict/cos_sst_quora"] for r in two["history"]] == pytest.approx(
        [r["conflict/cos_sst_quora"] for r in one["history"]], abs=1e-5
    )


@pytest.mark.parametrize("ddp_surgery", ["all_reduce", "reduce_scatter"])
def test_ddp_with_sgd_accumulation_and_task_batch_sizes_equals_one_process(tmp_path, tokenizer, ddp_surgery):
    """No AdamW and no clipping to hide a global scale: summing instead of averaging the ranks
    doubles the SGD step and fails here. Both DDP reductions (all-reduce of the task rows, or
    reduce-scatter + Gram all-reduce + all-gather of the update) give the one-process update."""
    vocab = Path(tokenizer.vocab_file)
    common = {"optim": "sgd", "max_grad_norm": 0.0, "gradient_accumulation_steps": 2, "learning_rate": 0.05, "aggregator": "pcgrad",
              "length_grouping": False}  # fmt: skip
    two = _run(2, tmp_path / "two.pt", vocab, 2, "pcgrad", {**common, "task_batch_sizes": {"sst": 2, "quora": 3, "sts": 1},
                                                             "ddp_surgery": ddp_surgery})  # fmt: skip
    one = _run(1, tmp_path / "one.pt", vocab, 4, "pcgrad", {**common, "task_batch_sizes": {"sst": 4, "quora": 6, "sts": 2}})
    assert two["world"] == 2 and one["world"] == 1
    init = __import__("conftest").deterministic_model()
    moved = 0
    for name, p in one["params"].items():
        torch.testing.assert_close(two["params"][name], p, atol=1e-6, rtol=1e-5, msg=name)
        moved += int(not torch.allclose(p, dict(init.named_parameters())[name]))
    assert moved > 10


@pytest.mark.parametrize("ddp_surgery", ["all_reduce", "reduce_scatter"])
def test_tasks_missing_on_a_rank_and_unequal_counts_give_the_pooled_gradient(tmp_path, tokenizer, ddp_surgery):
    """Rank 0 holds sst and 4 quora examples, rank 1 sts and 2 quora: every task's gradient must be
    the mean over its examples on all ranks (stale rows of absent tasks never leak in)."""
    vocab = Path(tokenizer.vocab_file)
    got = _run(2, tmp_path / "missing.pt", vocab, 4, "sum", {"ddp_surgery": ddp_surgery}, mode="missing")
    assert got["world"] == 2
    assert got["grads"].keys() == got["expected"].keys()
    for name, expected in got["expected"].items():
        torch.testing.assert_close(got["grads"][name], expected, atol=1e-6, rtol=1e-5, msg=name)


def test_the_one_backward_sum_step_pools_a_missing_task_and_unequal_counts_by_their_counts(tmp_path, tokenizer):
    """Issue 51: the default sum step (no telemetry: one backward of the summed loss, no per-task
    rows) under DDP weights each task's loss by its share of the task's examples on all ranks, so
    DDP's mean over ranks is the pooled gradient, as on the per-task path. Unweighted, the tasks
    held by one rank only (sst, sts) got half their gradient, and quora (4 and 2 examples) the
    mean of the ranks' means instead of the mean over its 6 examples."""
    vocab = Path(tokenizer.vocab_file)
    got = _run(2, tmp_path / "missing.pt", vocab, 4, "sum", {"telemetry_steps": 0}, mode="missing")
    assert got["world"] == 2 and not got["per_task_path"], "the step must take the one-backward path"
    assert got["grads"].keys() == got["expected"].keys()
    for name, expected in got["expected"].items():
        torch.testing.assert_close(got["grads"][name], expected, atol=1e-6, rtol=1e-5, msg=name)
    assert got["examples_seen"] == {"sst": 4, "quora": 6, "sts": 3}, "the step's counts are the examples on all ranks"


def test_the_one_backward_sum_step_under_ddp_with_accumulation_ends_where_the_per_task_path_ends(tmp_path, tokenizer):
    """Issue 51: two processes on the default sum step (one backward, no telemetry), with gradient
    accumulation and unequal per-task batch sizes, end with the weights of one process taking the
    per-task path on the combined batch (SGD, no clipping: a wrong scale of any task shows)."""
    vocab = Path(tokenizer.vocab_file)
    common = {"optim": "sgd", "max_grad_norm": 0.0, "gradient_accumulation_steps": 2, "learning_rate": 0.05, "length_grouping": False}
    two = _run(
        2, tmp_path / "two.pt", vocab, 2, "sum", {**common, "telemetry_steps": 0, "task_batch_sizes": {"sst": 2, "quora": 3, "sts": 1}}
    )
    one = _run(
        1, tmp_path / "one.pt", vocab, 4, "sum", {**common, "telemetry_steps": 1, "task_batch_sizes": {"sst": 4, "quora": 6, "sts": 2}}
    )
    assert two["world"] == 2 and one["world"] == 1 and not two["history"] and one["history"], "one-backward against per-task"
    init = dict(__import__("conftest").deterministic_model().named_parameters())
    moved = 0
    for name, p in one["params"].items():
        torch.testing.assert_close(two["params"][name], p, atol=1e-6, rtol=1e-5, msg=name)
        moved += int(not torch.allclose(p, init[name]))
    assert moved > 10


def test_fsdp_that_accelerate_leaves_off_on_cpu_is_refused(tmp_path, tokenizer):
    """Two CPU processes with --fsdp: transformers keeps FSDP off without a word (the run would be
    plain DDP); the trainer refuses at construction instead."""
    overrides = json.dumps({"fsdp": True, "fsdp_config": {"version": 2}})
    proc = launch_distributed(2, WORKER, tmp_path / "out.pt", tokenizer.vocab_file, 4, "pcgrad", overrides)
    assert proc.returncode != 0 and "accelerate did not enable FSDP" in proc.stderr


def test_a_checkpoint_marker_waits_for_every_ranks_files(tmp_path, tokenizer):
    """Each rank writes its own RNG state into the checkpoint; the main process must record the
    files' sizes only once the other rank has finished, or the marker lists a file half-written
    (or not at all) and resuming refuses the checkpoint as truncated. Rank 1 writes a second late."""
    got = _run(2, tmp_path / "out.pt", Path(tokenizer.vocab_file), 4, "pcgrad", mode="slow_rank_checkpoint")
    assert got["world"] == 2
    assert "rng_state_1.pth" in got["on_disk"] and got["recorded"] == got["on_disk"]


def _assert_same_state(a, b, where: str, exact: bool) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}", exact)
    elif isinstance(a, torch.Tensor):
        if exact or not a.is_floating_point():
            assert torch.equal(a, b), where
        else:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=where)
    else:
        assert a == b, where


STATEFUL = ["rlw", "uw", "famo", "db_mtl"]


@pytest.fixture(scope="module")
def stateful_runs(tmp_path_factory, tokenizer):
    """Each stateful method for 3 SGD steps: 2 processes (batch 4 each) and 1 (batch 8); one launch each."""
    folder = tmp_path_factory.mktemp("stateful")
    vocab = Path(tokenizer.vocab_file)
    common = {"optim": "sgd", "max_grad_norm": 0.0, "learning_rate": 0.05, "length_grouping": False, "telemetry_steps": 0}
    two = _run(2, folder / "two.pt", vocab, 4, ",".join(STATEFUL), common)
    one = _run(1, folder / "one.pt", vocab, 8, ",".join(STATEFUL), common)
    return two, torch.load(str(folder / "two.pt") + ".rank1"), one


@pytest.mark.parametrize("method", STATEFUL)
def test_loss_weighting_and_stateful_methods_ddp_equal_one_process(stateful_runs, method):
    """RLW, UW and FAMO train through one backward of the weighted sum; under DDP the ranks see
    the losses averaged over ranks, so their weights and state agree with each other and with one
    process on the combined batch. DB-MTL (gradient moving averages) likewise."""
    two, rank1, one = (runs[method] for runs in stateful_runs)
    assert two["world"] == 2
    for name, p in one["params"].items():
        torch.testing.assert_close(two["params"][name], p, atol=1e-6, rtol=1e-5, msg=name)
    _assert_same_state(two["state"], rank1, "rank0 vs rank1", exact=True)
    _assert_same_state(two["state"], one["state"], "two vs one process", exact=False)
