"""LoRA through peft: shared and per-task adapters, routing, freezing, save/load."""

import pytest
import torch
from conftest import assert_same_outputs, deterministic_model, train_and_measure
from transformers import AutoModel


def _x():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 60, (3, 7), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_adding_lora_leaves_outputs_unchanged_and_counts_parameters():
    model = deterministic_model().eval()
    x = _x()
    before = model(task="sst", **x).logits
    model.add_lora(r=4, per_task=True)
    assert torch.equal(model.eval()(task="sst", **x).logits, before), "LoRA B starts at zero"
    counts = model.set_trainable("lora")
    # per task: 2 layers x (query, value) x (A: 32x4 + B: 4x32)
    assert counts["lora"] == 3 * 2 * 2 * (32 * 4 + 4 * 32) == counts["trainable"]
    with pytest.raises(ValueError, match="already"):
        model.add_lora()


def test_per_task_lora_routes_by_task_and_belongs_to_the_task():
    model = deterministic_model()
    model.add_lora(r=4, per_task=True)
    x = _x()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B.sst." in name:
                p.normal_()
    base = deterministic_model().eval()
    assert not torch.allclose(model.eval()(task="sst", **x).logits, base(task="sst", **x).logits)
    assert torch.equal(model(task="quora", **x).logits, base(task="quora", **x).logits), "quora's own LoRA is still zero"
    owned = {id(p) for p in model.task_parameters("sst")}
    lora_sst = {id(p) for n, p in model.named_parameters() if ".lora_A.sst." in n or ".lora_B.sst." in n}
    assert lora_sst and lora_sst <= owned
    assert not lora_sst & {id(p) for p in model.shared_parameters()}


def test_shared_lora_is_shared():
    model = deterministic_model()
    model.add_lora(r=4)
    shared_names = [n for n, p in model.named_parameters() if ".lora_" in n]
    assert shared_names and all(".shared." in n for n in shared_names)
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) in shared for n, p in model.named_parameters() if ".lora_" in n)


@pytest.mark.parametrize("per_task", [False, True])
def test_lora_save_load_roundtrip(tmp_path, per_task):
    model = deterministic_model()
    model.add_lora(r=4, per_task=per_task, target_modules=["query", "key", "value"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.1)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert loaded.config.lora["per_task"] == per_task
    x = _x()
    for task in ("sst", "quora", "sts"):
        assert_same_outputs(model.eval()(task=task, **x).logits, loaded.eval()(task=task, **x).logits, task)


def test_bad_targets_are_a_clear_error():
    with pytest.raises(ValueError, match="not found in the encoder"):
        deterministic_model().add_lora(target_modules=["q_proj"])


def test_lora_only_training_changes_only_lora_and_heads(tmp_path, tokenizer):
    model = deterministic_model()
    model.add_lora(r=4, per_task=True)
    model.set_trainable("lora_and_heads")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    _, before, after = train_and_measure(model, tokenizer, tmp_path, max_steps=15, learning_rate=1e-2, aggregator="pcgrad")
    assert sum(after.values()) < sum(before.values())
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(frozen[name], p), name
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_B.sts." in n)


@pytest.mark.parametrize("per_task", [False, True])
def test_a_lora_model_and_its_reloaded_copy_train_the_same_parameters(tmp_path, per_task):
    # issue 54: peft's injection froze the encoder of the model built with add_lora, the reload did not
    model = deterministic_model()
    model.add_lora(r=4, per_task=per_task)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains == {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trains == {n for n, _ in model.named_parameters()}, "adding adapters leaves every parameter trainable"
    frozen = deterministic_model()
    frozen.set_trainable("heads")
    frozen.add_lora(r=4, per_task=per_task)  # what was frozen before stays frozen; the new adapters train
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {
        n for n, _ in frozen.named_parameters() if n.startswith("heads.") or ".lora_" in n
    }
    counts = loaded.set_trainable("lora_and_heads")
    assert counts["trainable"] == counts["lora"] + counts["heads"]


def test_per_task_lora_on_some_tasks_leaves_the_others_on_the_shared_encoder(tokenizer):
    from conftest import toy_encoded

    import hf_multitask as hm

    model = deterministic_model()
    plain = deterministic_model()
    model.add_lora(r=4, per_task=True, tasks=["sst"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.3)
    assert model.routed_tasks == ["sst"] and all(".lora_" not in n or ".sst." in n for n, _ in model.named_parameters())
    data = toy_encoded(tokenizer, model, n=8)
    collate = hm.MultitaskCollator(tokenizer.pad_token_id)
    model.eval(), plain.eval()
    with torch.no_grad():
        for task in ("sst", "quora", "sts"):
            batch = collate([data[task][i] for i in range(8)])
            ours, theirs = model(task=task, **batch).logits, plain(task=task, **batch).logits
            if task == "sst":
                assert (ours - theirs).abs().max() > 1e-3
            else:
                assert_same_outputs(ours, theirs, task)
    with pytest.raises(ValueError, match="nope"):
        deterministic_model().add_lora(per_task=True, tasks=["nope"])
    with pytest.raises(ValueError, match="per_task"):
        deterministic_model().add_lora(tasks=["sst"])


def test_merge_lora_folds_a_shared_adapter_into_a_plain_model(tmp_path, tokenizer):
    # issue 54 (suspected): there was no merge API, and a merge by hand then a save applied LoRA twice on load
    from conftest import toy_encoded

    import hf_multitask as hm

    model = deterministic_model()
    model.add_lora(r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)
    data = toy_encoded(tokenizer, model, n=8)
    batch = hm.MultitaskCollator(tokenizer.pad_token_id)([data["sst"][i] for i in range(8)])
    model.eval()
    with torch.no_grad():
        before = model(task="sst", **batch).logits
    for layer in model._lora_layers:  # a merge by hand, through peft
        layer.merge()
    with pytest.raises(ValueError, match="merge_lora"):
        model.save_pretrained(tmp_path / "by_hand")
    model.merge_lora()
    assert model.config.lora is None and not any(".lora_" in n or "base_layer" in n for n, _ in model.named_parameters())
    model.save_pretrained(tmp_path / "merged")
    loaded = AutoModel.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert_same_outputs(model(task="sst", **batch).logits, before, "merged in memory")
        assert_same_outputs(loaded(task="sst", **batch).logits, before, "merged, saved and loaded")


def test_per_task_lora_cannot_be_merged(tokenizer):
    from conftest import toy_encoded

    import hf_multitask as hm

    model = deterministic_model()
    model.add_lora(r=4, per_task=True)
    with pytest.raises(ValueError, match="per-task"):
        model.merge_lora()
    for layer in model._lora_layers:
        layer.merge(adapter_names=["sst"])
    data = toy_encoded(tokenizer, model, n=4)
    batch = hm.MultitaskCollator(tokenizer.pad_token_id)([data["quora"][i] for i in range(4)])
    with pytest.raises(ValueError, match="no task switch"):
        model(task="quora", **batch)
    with pytest.raises(ValueError, match="no task switch"):
        model.save_pretrained("unused")


def test_a_per_task_adapter_switched_through_peft_is_refused(tokenizer):
    # review: peft's layer.set_adapter replaced the per-call routing, so every task ran that one adapter
    from conftest import toy_encoded

    import hf_multitask as hm

    model = deterministic_model()
    model.add_lora(r=4, per_task=True)
    for layer in model._lora_layers:
        layer.set_adapter("sst")
    batch = hm.MultitaskCollator(tokenizer.pad_token_id)([toy_encoded(tokenizer, model, n=4)["quora"][i] for i in range(4)])
    with pytest.raises(ValueError, match="set_adapter"):
        model(task="quora", **batch)
