"""Property tests of the gradient aggregators against the papers' formulas."""

import math

import pytest
import torch
from conftest import REPO, make_aggregator
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_multitask.surgery import AGGREGATORS, get_aggregator, gram_matrix

ALL = sorted(AGGREGATORS)


def naive_pcgrad(grads: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Algorithm 1 of Yu et al. on full vectors, with the given per-task orders."""
    out = []
    for i, order in enumerate(orders):
        g = grads[i].clone()
        for j in order:
            dot = g @ grads[j]
            if dot < 0 and grads[j] @ grads[j] > 0:
                g = g - dot / (grads[j] @ grads[j]) * grads[j]
        out.append(g)
    return torch.stack(out).sum(0)


def orders_from(seed: int, t: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [[j for j in torch.randperm(t, generator=gen).tolist() if j != i] for i in range(t)]


matrices = st.integers(min_value=2, max_value=5).flatmap(
    lambda t: st.tuples(st.just(t), st.integers(min_value=1, max_value=40), st.integers(0, 10_000))
)


def _grads(t, p, seed, dtype=torch.float64):
    return torch.randn(t, p, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@settings(max_examples=60, deadline=None)
@given(matrices)
def test_pcgrad_matches_algorithm_1_on_full_vectors(shape):
    t, p, seed = shape
    grads = _grads(t, p, seed)
    got = get_aggregator("pcgrad", seed=seed)(grads)
    assert torch.allclose(got, naive_pcgrad(grads, orders_from(seed, t)), atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(matrices)
def test_pcgrad_without_conflict_is_the_sum(shape):
    t, p, seed = shape
    grads = _grads(t, p, seed).abs()  # non-negative rows: every dot product >= 0
    assert torch.allclose(get_aggregator("pcgrad")(grads), grads.sum(0), atol=1e-12)


def test_two_conflicting_tasks_closed_form_and_no_conflict_left():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    agg = get_aggregator("pcgrad")
    out = agg(torch.stack([g1, g2]))
    p1 = g1 - (g1 @ g2) / (g2 @ g2) * g2  # [0.5, 0.5]
    p2 = g2 - (g2 @ g1) / (g1 @ g1) * g1  # [0, 1]
    assert torch.allclose(out, p1 + p2)
    projected = agg.last_info["coeffs"] @ torch.stack([g1, g2])
    assert projected[0] @ g2 >= -1e-12 and projected[1] @ g1 >= -1e-12
    assert torch.allclose(agg.last_info["removed"], torch.stack([(g1 - p1).norm(), (g2 - p2).norm()]))


@settings(max_examples=40, deadline=None)
@given(matrices, st.lists(st.integers(1, 64), min_size=5, max_size=5))
def test_weighted_pcgrad_is_pcgrad_on_the_per_sample_mean_rows(shape, ns):
    """The paper's rule: g^_i = g_i / n_i for rows of losses summed over n_i samples, i.e. PCGrad on
    each task's per-sample mean gradient; rows that already are means get no further scaling."""
    t, p, seed = shape
    mean_rows = _grads(t, p, seed)
    counts = torch.tensor(ns[:t], dtype=torch.float64)
    expected = get_aggregator("pcgrad", seed=seed)(mean_rows)
    summed = get_aggregator("weighted_pcgrad", seed=seed, rows="sum")
    out = summed(mean_rows * counts[:, None], counts)  # summed-loss rows: divided by n_i exactly once
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(summed.loss_weights(summed.last_info["weights"]), 1.0 / counts, rtol=1e-15, atol=0.0)
    mean = get_aggregator("weighted_pcgrad", seed=seed)  # the trainer's rows: mean losses
    assert torch.equal(mean(mean_rows, counts), expected), "mean rows: exactly PCGrad"
    assert torch.equal(mean.loss_weights(mean.last_info["weights"]), torch.ones(t, dtype=torch.float64))
    with pytest.raises(ValueError, match="counts"):
        get_aggregator("weighted_pcgrad", rows="sum")(mean_rows)


@pytest.mark.parametrize("rows", ["mean", "sum"])
def test_weighted_pcgrad_never_weights_the_task_with_more_samples_above_the_other(rows):
    # counts 10 : 30, orthogonal rows (no projection), each the task's gradient as the rows convention gives it
    per_sample = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    counts = torch.tensor([10.0, 30.0], dtype=torch.float64)
    grads = per_sample * counts[:, None] if rows == "sum" else per_sample
    agg = get_aggregator("weighted_pcgrad", rows=rows)
    out = agg(grads, counts)
    assert out[1] <= out[0], "the 30-sample task moves the update no more than the 10-sample one"
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0], dtype=torch.float64))  # every task counts equally
    weights = agg.loss_weights(agg.last_info["weights"])
    assert weights[1] <= weights[0]


def test_pooled_pcgrad_keeps_the_share_weighting_under_its_own_name():
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    out = get_aggregator("pooled_pcgrad")(grads, counts=[24, 8])
    torch.testing.assert_close(out, torch.tensor([1.5, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="counts"):
        get_aggregator("pooled_pcgrad")(grads)


def test_gradvac_matches_its_formula_and_updates_the_ema():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([0.6, 0.8], dtype=torch.float64)  # cos = 0.6
    agg = get_aggregator("gradvac", beta=0.5)
    agg.targets[("a", "b")] = 0.9
    agg.targets[("b", "a")] = 0.1
    out = agg(torch.stack([g1, g2]), tasks=["a", "b"])
    phi, target = 0.6, 0.9
    coef = 1.0 * (target * math.sqrt(1 - phi**2) - phi * math.sqrt(1 - target**2)) / (1.0 * math.sqrt(1 - target**2))
    expected_a = g1 + coef * g2
    assert torch.allclose(out, expected_a + g2), "b's cosine 0.6 is above its target 0.1: b unchanged"
    new_a = expected_a / expected_a.norm()
    assert new_a @ g2 == pytest.approx(target, abs=1e-9), "after the correction the cosine equals the target"
    assert agg.targets[("a", "b")] == pytest.approx(0.5 * 0.9 + 0.5 * 0.6)
    assert agg.targets[("b", "a")] == pytest.approx(0.5 * 0.1 + 0.5 * 0.6)
    state = agg.state_dict()
    other = get_aggregator("gradvac", beta=0.5)
    other.load_state_dict(state)
    assert other.targets == agg.targets


def test_gradvac_with_zero_targets_equals_pcgrad_on_first_step():
    grads = _grads(3, 20, 5)
    assert torch.allclose(get_aggregator("gradvac", seed=1)(grads), get_aggregator("pcgrad", seed=1)(grads), atol=1e-9)


def test_cagrad_c0_is_the_mean_and_improves_the_worst_task():
    g = torch.tensor([[1.0, 0.0], [-0.9, 0.3]], dtype=torch.float64)
    assert torch.allclose(get_aggregator("cagrad", c=0.0)(g), g.mean(0))
    d = get_aggregator("cagrad", c=0.5, steps=500)(g)
    assert (g @ d).min() > (g @ g.mean(0)).min(), "CAGrad raises the worst task's inner product"
    g0 = g.mean(0)
    assert (d - g0).norm() <= 0.5 * g0.norm() + 1e-6, "d stays in the ball of radius c ||g0|| around g0"


def test_aligned_mtl_equalises_singular_values():
    g = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    agg = get_aggregator("aligned_mtl")
    out = agg(g)
    assert torch.allclose(out, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    b = torch.tensor([[3.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(get_aggregator("aligned_mtl")(torch.tensor([[3.0, 1.0], [-3.0, -1.0]], dtype=torch.float64)), 0 * b[0])


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1.0, 1e30])
def test_results_are_finite_for_zero_tiny_and_huge_gradients(name, scale):
    grads = (_grads(3, 50, 0, torch.float32) * scale).contiguous()
    out = make_aggregator(name)(grads, counts=[8, 16, 32])
    assert out.shape == (50,) and torch.isfinite(out).all()
    if scale > 0 and name in ("pcgrad", "weighted_pcgrad", "gradvac", "sum"):
        # homogeneous: the same direction at every scale
        ref = make_aggregator(name)(_grads(3, 50, 0, torch.float32), counts=[8, 16, 32])
        assert torch.allclose(out / scale, ref, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_non_finite_gradients_propagate(name):
    grads = _grads(3, 10, 0, torch.float32)
    grads[1, 3] = float("inf")
    assert not torch.isfinite(make_aggregator(name)(grads, counts=[1, 2, 3])).all()


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_output_and_state_roundtrip(name):
    grads = _grads(4, 30, 1)
    a, b = make_aggregator(name, seed=3), make_aggregator(name, seed=3)
    for _ in range(3):
        assert torch.equal(a(grads, counts=[1, 2, 3, 4]), b(grads, counts=[1, 2, 3, 4]))
    c = make_aggregator(name, seed=99)
    c.load_state_dict(a.state_dict())
    assert torch.equal(a(grads, counts=[1, 2, 3, 4]), c(grads, counts=[1, 2, 3, 4]))


def test_gram_accumulates_half_precision_in_fp32():
    grads = torch.full((2, 4096), 0.01, dtype=torch.float16)
    assert gram_matrix(grads)[0, 0] == pytest.approx(4096 * float(torch.tensor(0.01, dtype=torch.float16)) ** 2, rel=1e-3)


def test_unknown_aggregator_name():
    with pytest.raises(KeyError, match="choose from"):
        get_aggregator("pcgradd")


def test_the_weighted_pcgrad_config_readme_and_docstring_say_the_same_thing():
    """The config's comment, the README's config row and aggregator row and the class docstring all
    describe the paper's rule (per-sample mean gradients, no further scaling on mean rows, the
    effect in the batch ratio), and none the old share weighting."""

    from hf_multitask.surgery import WeightedPCGrad

    repo = REPO
    comment = " ".join(line.lstrip("# ") for line in (repo / "recipes" / "configs" / "weighted_pcgrad.yaml").read_text().splitlines()
                       if line.startswith("#"))  # fmt: skip
    readme = [line for page in sorted((repo / "docs").rglob("*.md")) for line in page.read_text().splitlines()]
    config_row = next(line for line in readme if line.startswith("| `weighted_pcgrad.yaml`"))
    method_row = next(line for line in readme if line.startswith("| `weighted_pcgrad` |"))
    doc = " ".join(WeightedPCGrad.__doc__.split())
    for text in (comment, config_row, method_row, doc):
        flat = " ".join(text.split())
        assert "per-sample mean" in flat and "no further scaling" in flat, text
        assert "share of the step's samples" not in flat, text
    for text in (comment, config_row):
        assert "0:3:1" in text


def test_every_registry_speaks_one_style():
    """Task types, aggregators and schedules: one error type (a KeyError and a ValueError) listing the names."""
    from hf_multitask.mixing import SCHEDULES, build_schedule, register_schedule
    from hf_multitask.mixing.schedules import RoundRobin
    from hf_multitask.registry import RegistryError
    from hf_multitask.task_types import get_task_type

    for call, kind in ((lambda: get_task_type("nope"), "task type"), (lambda: get_aggregator("nope"), "aggregator"),
                       (lambda: build_schedule("nope"), "schedule")):  # fmt: skip
        with pytest.raises(RegistryError, match=f"Unknown {kind} 'nope'; choose from \\[") as err:
            call()
        assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    register_schedule("every_step_round_robin", lambda **kw: RoundRobin(**kw))
    try:
        assert isinstance(build_schedule("every_step_round_robin"), RoundRobin)
        assert hm_training_args_accepts_schedule("every_step_round_robin")
    finally:
        del SCHEDULES["every_step_round_robin"]


def hm_training_args_accepts_schedule(name):
    import tempfile

    import hf_multitask as hm

    return hm.MultitaskTrainingArguments(output_dir=tempfile.mkdtemp(), schedule=name, use_cpu=True, report_to=[]).schedule == name
