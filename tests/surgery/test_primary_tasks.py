"""Primary tasks (issue 25): the primary-aware gradient methods against hand-computed cases, the
checkpoint choice that follows the primary, and intermediate-task transfer in the recipe."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from conftest import WORKERS, deterministic_model, launch_distributed, recipe_flags, toy_encoded, train_args
from hypothesis import given, settings
from hypothesis import strategies as st

import hf_multitask as hm
from hf_multitask.metrics import primary_overall
from hf_multitask.recipe import RecipeError, run
from hf_multitask.surgery import get_aggregator

F64 = torch.float64
G_P = torch.tensor([1.0, 0.0, 0.0], dtype=F64)
G_AGREE = torch.tensor([1.0, 1.0, 0.0], dtype=F64)  # cos with g_P = 1/sqrt(2)
G_CONFLICT = torch.tensor([-1.0, 0.0, 2.0], dtype=F64)  # cos with g_P = -1/sqrt(5)
TASKS = ["aux1", "prim", "aux2"]
GRADS = torch.stack([G_AGREE, G_P, G_CONFLICT])


def test_gradsim_drops_exactly_the_disagreeing_auxiliaries():
    agg = get_aggregator("gradsim", primary="prim")
    out = agg(GRADS, tasks=TASKS)
    assert torch.equal(out, G_P + G_AGREE), "the conflicting auxiliary is dropped, the agreeing one kept whole"
    assert agg.last_info["cosine_to_primary"] == pytest.approx({"aux1": 1 / math.sqrt(2), "aux2": -1 / math.sqrt(5)})
    weighted = get_aggregator("gradsim", primary="prim", weighted=True)(GRADS, tasks=TASKS)
    torch.testing.assert_close(weighted, G_P + G_AGREE / math.sqrt(2), rtol=1e-15, atol=1e-15)


def test_pcgrad_primary_projects_only_conflicting_auxiliaries_and_never_the_primary():
    agg = get_aggregator("pcgrad_primary", primary=["prim"])
    out = agg(GRADS, tasks=TASKS)
    projected = G_CONFLICT - (G_CONFLICT @ G_P) / (G_P @ G_P) * G_P  # [0, 0, 2]
    torch.testing.assert_close(out, G_P + G_AGREE + projected, rtol=1e-15, atol=1e-15)
    coeffs = agg.last_info["coeffs"]
    assert torch.equal(coeffs[1], torch.tensor([0.0, 1.0, 0.0], dtype=F64)), "the primary's row is exactly its own gradient"
    assert torch.equal(coeffs[0], torch.tensor([1.0, 0.0, 0.0], dtype=F64)), "an agreeing auxiliary is untouched"


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.integers(2, 12), st.integers(0, 10_000), st.integers(1, 2))
def test_pcgrad_primary_leaves_no_auxiliary_against_the_primary(t, p, seed, n_primary):
    grads = torch.randn(t, p, generator=torch.Generator().manual_seed(seed), dtype=F64)
    tasks = [f"t{i}" for i in range(t)]
    primary = tasks[:n_primary]
    agg = get_aggregator("pcgrad_primary", primary=primary)
    agg(grads, tasks=tasks)
    rows = agg.last_info["coeffs"] @ grads
    g_p = grads[:n_primary].sum(0)
    assert torch.equal(rows[:n_primary], grads[:n_primary]), "primary rows bit-unchanged"
    assert all(float(rows[i] @ g_p) >= -1e-9 * float(g_p @ g_p + 1) for i in range(n_primary, t))


def test_metabalance_relaxes_auxiliary_norms_toward_the_primary_and_keeps_moving_averages():
    g_small = torch.tensor([0.0, 0.5, 0.0], dtype=F64)  # norm 0.5
    g_big = torch.tensor([0.0, 0.0, 4.0], dtype=F64)  # norm 4
    grads = torch.stack([torch.tensor([2.0, 0.0, 0.0], dtype=F64), g_small, g_big])  # primary norm 2
    agg = get_aggregator("metabalance", primary="p", relax=0.5, beta=0.9)
    out = agg(grads, tasks=["p", "small", "big"])
    scale_small, scale_big = 0.5 * 2 / 0.5 + 0.5, 0.5 * 2 / 4 + 0.5  # 2.5 and 0.75
    torch.testing.assert_close(out, grads[0] + scale_small * g_small + scale_big * g_big, rtol=1e-12, atol=1e-12)
    # second step: the averages move with beta (the primary's norm is now 4)
    grads2 = torch.stack([torch.tensor([4.0, 0.0, 0.0], dtype=F64), g_small, g_big])
    agg(grads2, tasks=["p", "small", "big"])
    m_p = 0.9 * 2 + 0.1 * 4
    assert agg.norms["__primary__"] == pytest.approx(m_p) and agg.norms["big"] == pytest.approx(4.0)
    assert agg.last_info["auxiliary_scales"]["big"] == pytest.approx(0.5 * m_p / 4 + 0.5)
    reduce_only = get_aggregator("metabalance", primary="p", relax=0.5, strategy="reduce")
    reduce_only(grads, tasks=["p", "small", "big"])
    assert reduce_only.last_info["auxiliary_scales"] == pytest.approx({"small": 1.0, "big": 0.75})
    restored = get_aggregator("metabalance", primary="p")
    restored.load_state_dict(agg.state_dict())
    assert restored.norms == agg.norms


def test_the_update_is_scale_free_for_metabalance_averages():
    """The Gram matrix reaches methods scaled by a per-step factor; MetaBalance must average true norms."""
    grads = torch.tensor([[3e-3, 0.0], [0.0, 1e-3]], dtype=F64)
    agg = get_aggregator("metabalance", primary="p", relax=1.0)
    out = agg(grads, tasks=["p", "a"])
    torch.testing.assert_close(out, torch.tensor([3e-3, 3e-3], dtype=F64), rtol=1e-12, atol=0.0)
    assert agg.norms["__primary__"] == pytest.approx(3e-3)


@pytest.mark.parametrize("name", ["gradsim", "pcgrad_primary", "metabalance"])
def test_a_step_without_the_primary_sums_its_rows(name):
    grads = torch.stack([G_AGREE, G_CONFLICT])
    out = get_aggregator(name, primary="prim")(grads, tasks=["aux1", "aux2"])
    assert torch.equal(out, G_AGREE + G_CONFLICT)


def test_primary_methods_need_a_primary():
    with pytest.raises(ValueError, match="needs the primary task"):
        get_aggregator("gradsim")


# --- the trainer and the checkpoint choice --------------------------------------------------------


def test_primary_overall_is_the_primary_mean_and_keeps_the_all_task_mean():
    results = {"a_score": 0.2, "b_score": 0.6, "c_score": 1.0, "overall": 0.6}
    out = primary_overall(results, ["a", "c"])
    assert out["overall"] == pytest.approx(0.6) and out["overall_all"] == 0.6
    assert primary_overall(results, ["b"])["overall"] == 0.6 and primary_overall(results, None) is results
    assert primary_overall(results, ["zzz"]) is results  # a phase that did not evaluate the primary


def test_the_best_checkpoint_follows_the_primary_task(tmp_path, tokenizer):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=24)
    args = train_args(tmp_path, primary_tasks=["sts"], aggregator="pcgrad_primary", eval_strategy="steps", eval_steps=1,
                      save_strategy="steps", save_steps=1, load_best_model_at_end=True, metric_for_best_model="overall",
                      greater_is_better=True, max_steps=4, save_total_limit=1)  # fmt: skip
    trainer = hm.MultitaskTrainer(model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer)
    trainer.train()
    evals = [r for r in trainer.state.log_history if "eval_overall" in r]
    assert len(evals) == 4
    for r in evals:
        assert r["eval_overall"] == pytest.approx(r["eval_sts_score"])
        assert r["eval_overall_all"] == pytest.approx((r["eval_sst_score"] + r["eval_quora_score"] + r["eval_sts_score"]) / 3)
    assert trainer.state.best_metric == pytest.approx(max(r["eval_sts_score"] for r in evals))


def test_the_trainer_refuses_a_primary_method_without_primary_and_an_unknown_primary(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="--aggregator gradsim serves primary tasks: name them with --primary_tasks"):
        train_args(tmp_path, aggregator="gradsim")
    model = deterministic_model()
    with pytest.raises(ValueError, match=r"--primary_tasks names unknown task\(s\) \['irony'\]"):
        hm.MultitaskTrainer(model=model, args=train_args(tmp_path, primary_tasks=["irony"]), train_dataset=toy_encoded(tokenizer, model))
    # an aggregator built by hand with a primary the model lacks would sum every row as if no primary were in the step
    with pytest.raises(ValueError, match=r"aggregator 'gradsim': primary task\(s\) \['irony'\] are not the model's tasks"):
        hm.MultitaskTrainer(model=model, args=train_args(tmp_path), aggregator=get_aggregator("gradsim", primary=["irony"]))


def test_no_primary_task_trains_as_before_bit_for_bit(tmp_path, tokenizer):
    def weights(**extra):
        model = deterministic_model()
        trainer = hm.MultitaskTrainer(model=model, args=train_args(tmp_path / str(len(extra)), aggregator="pcgrad", **extra),
                                      train_dataset=toy_encoded(tokenizer, model), processing_class=tokenizer)  # fmt: skip
        trainer.train()
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    plain, unset = weights(), weights(primary_tasks=None)
    assert all(torch.equal(plain[n], unset[n]) for n in plain)


# --- DDP: the stateful method keeps one state across ranks -----------------------------------------


def test_metabalance_under_two_gloo_processes_equals_one_process(tmp_path, tokenizer):
    worker = WORKERS / "ddp_worker.py"
    vocab = Path(tokenizer.vocab_file)
    over = json.dumps({"primary_tasks": ["sts"]})
    runs = {}
    for nproc, batch in ((2, 4), (1, 8)):
        out = tmp_path / f"{nproc}.pt"
        proc = launch_distributed(nproc, worker, out, vocab, batch, "metabalance", over, "train")
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[nproc] = torch.load(out)
    assert runs[2]["world"] == 2 and runs[1]["world"] == 1
    for name, p in runs[1]["params"].items():
        torch.testing.assert_close(runs[2]["params"][name], p, atol=1e-6, rtol=1e-5, msg=name)
    rank1 = torch.load(tmp_path / "2.pt.rank1")
    assert runs[2]["state"]["norms"] == pytest.approx(rank1["norms"]), "both ranks keep the same moving averages"
    assert runs[2]["state"]["norms"] == pytest.approx(runs[1]["state"]["norms"], rel=1e-4)


# --- the recipe: primary tasks and intermediate-task transfer --------------------------------------


def test_recipe_intermediate_transfer_trains_the_auxiliaries_then_the_primary(tiny_backbone, tiny_data, tmp_path):
    flags = recipe_flags(tiny_backbone, tiny_data, tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = run([*flags, "--primary_tasks", "sts", "--intermediate_steps", "2", "--aggregator", "sum"])
    assert (tmp_path / "out" / "intermediate").is_dir()
    assert metrics["train_examples_sst"] == 0 or "train_examples_sst" not in metrics, "the main run trains the primary only"
    assert metrics["train_examples_sts"] > 0
    # the auxiliary phase's cost is reported too (2 steps of batch 4 of sst and quora; sts does not train in it)
    assert metrics["intermediate_seconds"] > 0 and metrics["intermediate_examples"] == 2 * 4 * 2
    assert metrics["intermediate_global_steps"] == 2
    assert metrics["eval_overall"] == pytest.approx(metrics["eval_sts_score"])
    card = (tmp_path / "out" / "best" / "README.md").read_text()
    assert "Primary task(s): `sts`" in card
    with pytest.raises(RecipeError, match="--primary_tasks"):
        run([*recipe_flags(tiny_backbone, tiny_data, tmp_path / "o2"), "--intermediate_steps", "2", "--aggregator", "sum"])
