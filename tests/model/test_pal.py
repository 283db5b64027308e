"""Projected Attention Layers: no-influence init, routing, freezing, counts, save/load, errors."""

import pytest
import torch
from conftest import assert_same_outputs, assert_same_weights, deterministic_model, tiny_encoder_config, train_and_measure
from transformers import AutoModel

import hf_multitask as hm
from hf_multitask.pal import PALAdapter


def _x(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model, task, x):
    return model.eval()(task=task, **x).logits


def test_no_influence_init_leaves_outputs_exactly_unchanged():
    plain = deterministic_model()
    with_pal = deterministic_model(pal_tasks=["all"], pal_rank=8, pal_heads=2)
    with_pal.load_state_dict(plain.state_dict(), strict=False)
    x = _x()
    for task in ("sst", "quora", "sts"):
        assert_same_outputs(_logits(plain, task, x), _logits(with_pal, task, x), task)
    added = deterministic_model()
    added.load_state_dict(plain.state_dict())
    added.add_pal(["sst"], rank=8, heads=2)
    assert_same_outputs(_logits(plain, "sst", x), _logits(added, "sst", x))
    assert added.config.pal_tasks == ["sst"]


def test_xavier_init_changes_outputs_and_tasks_route_through_their_own_pal():
    model = deterministic_model(pal_tasks=["sst", "sts"], pal_rank=8, pal_heads=2, pal_init="xavier")
    plain = deterministic_model()
    plain.load_state_dict(model.state_dict(), strict=False)
    x = _x()
    assert not torch.allclose(_logits(model, "sst", x), _logits(plain, "sst", x))
    assert_same_outputs(_logits(model, "quora", x), _logits(plain, "quora", x), "quora has no PAL")
    before_sts = _logits(model, "sts", x)
    before_sst = _logits(model, "sst", x)
    with torch.no_grad():
        for p in model.pals["sst"].parameters():
            p.add_(0.1)
    assert torch.equal(_logits(model, "sts", x), before_sts), "changing sst's PAL leaves sts unchanged"
    assert not torch.allclose(_logits(model, "sst", x), before_sst)


def test_pal_only_mode_trains_pals_and_freezes_the_rest():
    model = deterministic_model(pal_tasks=["all"], pal_rank=8, pal_heads=2, pal_init="xavier")
    counts = model.set_trainable("pal")
    assert counts["trainable"] == counts["pals"] > 0 and counts["total"] == counts["encoder"] + counts["heads"] + counts["pals"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    out = model(task="sst", labels=torch.tensor([0, 1, 2]), **_x())
    out.loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p)
        if name.startswith("pals.sst."):
            assert changed or "up" not in name, name
        elif not name.startswith("pals."):
            assert not changed, f"{name} is frozen in PAL-only mode"
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n.startswith("pals.sst.up"))
    assert model.set_trainable("all")["trainable"] == counts["total"]
    with pytest.raises(ValueError, match="trainable mode"):
        model.set_trainable("encoder")


@pytest.mark.parametrize("shared", [True, False])
def test_parameter_counts_match_the_closed_form(shared):
    d, r, layers, tasks = 32, 8, 2, 3
    model = deterministic_model(pal_tasks=["all"], pal_rank=r, pal_heads=2, pal_shared_projections=shared)
    projections = 1 if shared else layers
    per_task = projections * 2 * d * r + layers * 3 * (r * r + r)
    assert PALAdapter.count(d, r, layers, shared) == per_task
    assert model.parameter_counts()["pals"] == tasks * per_task


def test_pal_parameters_are_task_parameters_not_shared():
    model = deterministic_model(pal_tasks=["sts"], pal_rank=8, pal_heads=2)
    shared = {id(p) for p in model.shared_parameters()}
    pal = {id(p) for p in model.pals["sts"].parameters()}
    assert not shared & pal
    assert pal <= {id(p) for p in model.task_parameters("sts")}


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_save_load_roundtrip_with_pals(tmp_path, arch):
    torch.manual_seed(0)
    config = hm.MultitaskConfig(
        encoder_config=tiny_encoder_config(arch),
        tasks=hm.reference_tasks(),
        pal_tasks=["sst", "quora"],
        pal_rank=8,
        pal_heads=2,
        pal_init="xavier",
    )
    model = hm.MultitaskModel(config).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert_same_weights(loaded, model)
    assert loaded.config.pal_tasks == ["sst", "quora"] and set(loaded.pals) == {"sst", "quora"}
    x = _x()
    for task in ("sst", "quora", "sts"):
        assert_same_outputs(model(task=task, **x).logits, loaded(task=task, **x).logits, task)


def test_unsupported_encoder_is_a_clear_error():
    config = hm.MultitaskConfig(
        encoder_config=tiny_encoder_config("distilbert"), tasks=hm.reference_tasks(), pal_tasks=["sst"], pal_rank=8, pal_heads=2
    )
    with pytest.raises(ValueError, match="PAL adapters support BERT-style encoders.*'distilbert'"):
        hm.MultitaskModel(config)
    with pytest.raises(ValueError, match="unknown task"):
        hm.MultitaskConfig(encoder_config=tiny_encoder_config(), tasks=hm.reference_tasks(), pal_tasks=["mnli"])
    with pytest.raises(ValueError, match="multiple of pal_heads"):
        hm.MultitaskConfig(encoder_config=tiny_encoder_config(), tasks=hm.reference_tasks(), pal_tasks=["sst"], pal_rank=10, pal_heads=4)


def test_pal_model_trains_with_surgery(tmp_path, tokenizer):
    model = deterministic_model(pal_tasks=["all"], pal_rank=8, pal_heads=2)
    _, before, after = train_and_measure(model, tokenizer, tmp_path, max_steps=20, learning_rate=3e-3, aggregator="pcgrad")
    assert all(after[t] < before[t] for t in before)
    assert any(p.abs().sum() > 0 for p in model.pals["sst"].up.parameters()), "PALs trained away from zero"


def test_deepcopy_routes_through_the_copys_own_pals():
    import copy

    model = deterministic_model(pal_tasks=["sst"], pal_rank=8, pal_heads=2, pal_init="xavier").eval()
    twin = copy.deepcopy(model)
    x = _x()
    assert_same_outputs(model(task="sst", **x).logits, twin(task="sst", **x).logits)
    with torch.no_grad():
        for p in twin.pals["sst"].parameters():
            p.mul_(3.0)
    assert not torch.allclose(model(task="sst", **x).logits, twin(task="sst", **x).logits), "the copy uses its own PALs"
    assert_same_outputs(model(task="sst", **x).logits, copy.deepcopy(model)(task="sst", **x).logits)


def test_a_row_with_no_token_never_reaches_attention_fully_masked(monkeypatch):
    # issue 54 (suspected): an all-zero mask row (a padding choice) gives NaN on some GPU attention kernels;
    # on the CPU it is finite, so the test checks the mask the PAL attention hands the kernel
    from hf_multitask.pal import LowRankSelfAttention

    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append(attn_mask)
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    attention = LowRankSelfAttention(rank=8, heads=2)
    x = torch.randn(3, 4, 8)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    out = attention(x, mask)
    assert torch.isfinite(out).all() and len(seen) == 1
    assert bool(seen[0].any(-1).all()), "every row attends to at least one token"
    reference = attention(x[[0, 2]], mask[[0, 2]])  # rows with tokens: unchanged
    torch.testing.assert_close(out[[0, 2]], reference)
    assert seen[1][:, 0, 0].tolist() == [[True, True, False, False], [True, True, True, True]]
