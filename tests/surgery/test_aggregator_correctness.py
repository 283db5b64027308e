"""Aggregator correctness beyond the formulas: CAGrad solved to optimality, Aligned-MTL's
rank cut-off, no overflow at the ends of float64, and a cross-check against torchjd."""

import pytest
import torch
from conftest import make_aggregator

from hf_multitask.surgery import AGGREGATORS, get_aggregator
from hf_multitask.surgery.cagrad import cagrad_objective, kkt_residual, solve_cagrad_dual


def _worst_improvement(grads: torch.Tensor, d: torch.Tensor) -> float:
    return float((grads @ d).min())


def _cagrad_certificate(grads: torch.Tensor, c: float) -> None:
    """Our d is optimal for max_{||d - g0|| <= c||g0||} min_i g_i.d: it is feasible, and its
    worst-task improvement equals the dual value F(w*) (zero duality gap), which no point of
    the simplex undercuts."""
    agg = get_aggregator("cagrad", c=c)
    d = agg(grads)
    g0 = grads.mean(0)
    scale = float((grads @ grads.T).diagonal().max())
    assert float((d - g0).norm()) <= c * float(g0.norm()) * (1 + 1e-9) + 1e-12
    if "simplex_weights" not in agg.last_info:
        return
    w = agg.last_info["simplex_weights"]
    gram = (grads @ grads.T).double()
    dual = cagrad_objective(gram, w, c)
    assert kkt_residual(gram, w, c) < 1e-8
    assert _worst_improvement(grads, d) >= dual - 1e-8 * scale, "duality gap: d is not optimal"
    torch.manual_seed(0)
    samples = torch.distributions.Dirichlet(torch.ones(grads.shape[0], dtype=torch.float64)).sample((2000,))
    vertices = torch.eye(grads.shape[0], dtype=torch.float64)
    for other in torch.cat([samples, vertices]):
        assert dual <= cagrad_objective(gram, other, c) + 1e-9 * scale
    assert _worst_improvement(grads, d) >= _worst_improvement(grads, g0) - 1e-9 * scale, "never worse than the plain mean"


def test_cagrad_reaches_the_exact_step_on_the_cycling_repro():
    # mirror descent with lr 1 cycled here: 100 steps gave [2.929, -1, 1.259], task 1 got worse
    grads = torch.tensor([[-2.0, 0, 2], [3, -2, 1], [3, 0, -2], [1, -2, 3]], dtype=torch.float64)
    d = get_aggregator("cagrad", c=0.9)(grads)
    torch.testing.assert_close(d, torch.tensor([2.0138351, -1.0, 2.5172939], dtype=torch.float64), rtol=0, atol=1e-6)
    assert _worst_improvement(grads, d) > 0, "the exact step improves every task"
    _cagrad_certificate(grads, 0.9)


@pytest.mark.parametrize("seed", range(60))
def test_cagrad_is_optimal_on_random_and_adversarial_matrices(seed):
    gen = torch.Generator().manual_seed(seed)
    t = 2 + seed % 5
    p = [3, 5, 40][seed % 3]
    grads = torch.randn(t, p, generator=gen, dtype=torch.float64)
    kind = seed % 6
    if kind == 1:  # near rank deficient: one task is almost a combination of two others
        grads[-1] = 0.7 * grads[0] - 0.3 * grads[1] + 1e-9 * grads[-1]
    elif kind == 2:  # strongly conflicting pair
        grads[1] = -2.0 * grads[0] + 0.01 * grads[1]
    elif kind == 3:  # wildly different scales
        grads = grads * torch.logspace(-3, 3, t, dtype=torch.float64)[:, None]
    elif kind == 4:  # duplicated task
        grads[-1] = grads[0]
    c = [0.2, 0.5, 0.9][seed % 3]
    _cagrad_certificate(grads, c)


def test_cagrad_with_zero_in_the_hull_returns_the_mean():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    d = get_aggregator("cagrad", c=0.5)(grads)
    # min over the simplex of ||g_w|| is 0 (w = (1/2, 1/2, 0)): no conflict-averse correction is left, d = g0
    torch.testing.assert_close(d, grads.mean(0), rtol=0, atol=1e-12)


def test_cagrad_dual_is_exact_for_more_tasks_than_the_enumeration_handles():
    gen = torch.Generator().manual_seed(3)
    grads = torch.randn(12, 30, generator=gen, dtype=torch.float64)
    w, residual = solve_cagrad_dual(grads @ grads.T, 0.4)
    assert residual < 1e-6 and abs(float(w.sum()) - 1) < 1e-12 and bool((w >= 0).all())


def test_aligned_mtl_drops_float32_noise_eigenvalues_on_the_repro():
    grads = torch.tensor([[-0.87, 3.07, -0.08], [-2.02, -0.65, 0.68], [-2.89, 2.42, 0.60]], dtype=torch.float32)
    expected = torch.tensor([-3.4548, 2.2039, 0.7940])
    torch.testing.assert_close(get_aggregator("aligned_mtl")(grads), expected, rtol=0, atol=2e-3)
    torch.testing.assert_close(get_aggregator("aligned_mtl")(grads.double()).float(), expected, rtol=0, atol=2e-3)


@pytest.mark.parametrize("seed", range(40))
def test_aligned_mtl_agrees_in_float32_and_float64_on_rank_deficient_inputs(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    p = 3 + seed % 5
    base = torch.randn(2, p, generator=gen, dtype=torch.float64)
    mix = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    grads = mix @ base  # 3 tasks of rank 2
    ours64 = get_aggregator("aligned_mtl")(grads)
    ours32 = get_aggregator("aligned_mtl")(grads.float())
    torch.testing.assert_close(ours32.double(), ours64, rtol=1e-3, atol=1e-4 * float(ours64.abs().max()))


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_float64_entries_beyond_1e154_do_not_overflow(name):
    gen = torch.Generator().manual_seed(1)
    grads = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    small = make_aggregator(name, seed=0)(grads, counts=[1, 2, 3])
    big = make_aggregator(name, seed=0)(grads * 1e200, counts=[1, 2, 3])
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big / 1e200, small, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- torchjd cross-check
# Conventions (torchjd 0.18): rows are tasks in both. PCGrad and GradVac draw their
# projection orders from torch.randperm, patched here to the identity for both sides.
# Aligned-MTL: torchjd weights the aligned gradients by the mean (1/T), ours by ones, so
# ours = T x theirs. GradVac: same beta (0.01 here), targets start at 0 in both; torchjd adds
# an eps to denominators, ours clamps the cosine (equal on well-conditioned matrices).
# CAGrad: same dual (theirs solved by cvxpy/Clarabel), no rescaling in either.


def _well_conditioned(seed: int, t: int, p: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(t, p, generator=gen, dtype=torch.float64)
    grads[1] = -0.6 * grads[0] + 0.8 * grads[1]  # make sure some pairs conflict
    return grads


@pytest.fixture
def torchjd():
    """torchjd's aggregators, or a skip saying why (a dev dependency: pip install -e '.[dev]')."""
    return pytest.importorskip("torchjd.aggregation", reason="the cross-checks against torchjd need the dev extra: pip install -e '.[dev]'")


@pytest.fixture
def identity_orders(monkeypatch):
    real = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda n, *a, **k: torch.arange(n) if not a else real(n, *a, **k))


@pytest.mark.parametrize("seed", range(10))
def test_pcgrad_matches_torchjd(seed, identity_orders, torchjd):
    grads = _well_conditioned(seed, 2 + seed % 4, 50)
    torch.testing.assert_close(get_aggregator("pcgrad")(grads), torchjd.PCGrad()(grads), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_gradvac_matches_torchjd_over_steps(seed, identity_orders, torchjd):
    ours, theirs = get_aggregator("gradvac", beta=0.01), torchjd.GradVac(beta=0.01)
    for step in range(4):
        grads = _well_conditioned(100 * seed + step, 3 + seed % 3, 40)
        torch.testing.assert_close(ours(grads), theirs(grads), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("seed", range(10))
def test_aligned_mtl_is_t_times_torchjd(seed, torchjd):
    grads = _well_conditioned(seed, 2 + seed % 4, 30)
    t = grads.shape[0]
    torch.testing.assert_close(get_aggregator("aligned_mtl")(grads), t * torchjd.AlignedMTL()(grads), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", range(10))
def test_cagrad_matches_torchjd(seed, torchjd):
    # torchjd solves the dual with Clarabel to its default tolerance (about 1e-8 in the
    # objective, which leaves the weights ~1e-4 loose); ours is solved in closed form
    grads = _well_conditioned(seed, 2 + seed % 4, 30)
    ours = get_aggregator("cagrad", c=0.5)(grads)
    theirs = torchjd.CAGrad(c=0.5, norm_eps=0.0)(grads)
    torch.testing.assert_close(ours, theirs, rtol=5e-3, atol=5e-3 * float(ours.abs().max()))
    scale = float((grads @ grads.T).diagonal().max())
    assert _worst_improvement(grads, ours) >= _worst_improvement(grads, theirs) - 1e-9 * scale


# ---------------------------------------------------------------- UPGrad
@pytest.mark.parametrize("seed", range(30))
def test_upgrad_conflicts_with_no_task_and_is_the_mean_without_conflict(seed):
    gen = torch.Generator().manual_seed(seed)
    t = 2 + seed % 5
    grads = torch.randn(t, 20, generator=gen, dtype=torch.float64)
    if seed % 3 == 0:
        grads[1] = -1.5 * grads[0] + 0.1 * grads[1]  # a strong conflict
    d = get_aggregator("upgrad")(grads)
    scale = float((grads @ grads.T).diagonal().max())
    assert float((grads @ d).min()) >= -1e-9 * scale, "d is in the dual cone: it worsens no task"
    aligned = grads.abs()  # all pairwise dot products positive: nothing to project
    torch.testing.assert_close(get_aggregator("upgrad")(aligned), aligned.mean(0), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_upgrad_matches_torchjd(seed, torchjd):
    grads = _well_conditioned(seed, 2 + seed % 4, 30)
    # torchjd regularises the Gram matrix for its QP solver (reg_eps 1e-4 on the diagonal by
    # default): with reg_eps=0 both solve the same problem
    from torchjd.linalg import QuadprogProjector

    ours = get_aggregator("upgrad")(grads)
    theirs = torchjd.UPGrad(projector=QuadprogProjector(reg_eps=0.0))(grads)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9 * float(ours.abs().max()))
