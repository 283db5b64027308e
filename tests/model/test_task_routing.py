"""Task routing of PALs and per-task LoRA is part of each call: checkpointed recomputation, encode(),
threads, and routed experts with their own settings (issue 54, items 1-5)."""

from __future__ import annotations

import threading

import pytest
import torch
from conftest import assert_same_outputs, deterministic_model, toy_encoded

import hf_multitask as hm

TASKS = ("sst", "quora")


def _enable_checkpointing(model, reentrant: bool) -> None:
    kwargs = {"use_reentrant": reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23 (what the Trainer calls)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover - older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _perturb(model, names: tuple[str, ...], seed: int = 1) -> None:
    """Give the task modules (zero at first: PAL V_D, LoRA B) values, so each task's encoder differs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in names):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _adapter_model(kind: str):
    model = deterministic_model(seed=3)
    if kind == "pal":
        model.add_pal(list(TASKS), rank=8, heads=2)
        _perturb(model, ("pals.",))
    else:
        model.add_lora(r=4, alpha=8, per_task=True)
        _perturb(model, ("lora_B",))
    return model


def _one_backward_grads(model, batches: dict, checkpointing: bool, reentrant: bool = False) -> dict[str, torch.Tensor]:
    """The one-backward step of `sum`: every task's forward first, then one backward of the summed loss."""
    model.zero_grad(set_to_none=True)
    model.train()
    if checkpointing:
        _enable_checkpointing(model, reentrant)
    losses = [model(task=t, **b).loss for t, b in batches.items()]
    torch.stack(losses).sum().backward()
    if checkpointing:
        model.gradient_checkpointing_disable() if not hasattr(
            model, "activation_checkpointing_disable"
        ) else model.activation_checkpointing_disable()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _batches(tokenizer, model) -> dict:
    data = toy_encoded(tokenizer, model, n=8)
    collate = hm.MultitaskCollator(tokenizer.pad_token_id)
    return {t: collate([data[t][i] for i in range(8)]) for t in TASKS}


@pytest.mark.parametrize("kind,reentrant", [("lora", False), ("lora", True), ("pal", False), ("pal", True)])
def test_checkpointed_layers_recompute_with_the_task_they_ran_with(kind, reentrant, tokenizer):
    # item 1 and 2: the recomputation runs in the backward pass, after the last forward (quora's) has returned
    model = _adapter_model(kind)
    batches = _batches(tokenizer, model)
    plain = _one_backward_grads(model, batches, checkpointing=False)
    checkpointed = _one_backward_grads(model, batches, checkpointing=True, reentrant=reentrant)
    own = "pals." if kind == "pal" else "lora_"
    assert sum(own in n for n in plain) > 4, "the task modules get gradients"
    assert plain.keys() == checkpointed.keys(), sorted(set(plain) ^ set(checkpointed))
    for name, grad in plain.items():
        # a task module trained under another task's route differs by O(1); the recomputation by rounding only
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["lora", "pal"])
def test_encode_runs_the_shared_encoder_unless_given_a_task(kind, tokenizer):
    # item 3: encode() used whichever task's adapter ran last
    model = _adapter_model(kind).eval()
    batch = _batches(tokenizer, model)["sst"]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        shared = model.encode(ids, mask)
        model(task="quora", **_batches(tokenizer, model)["quora"])
        after_quora = model.encode(ids, mask)
        model(task="sst", **batch)
        after_sst = model.encode(ids, mask)
        sst = model.encode(ids, mask, task="sst")
        quora = model.encode(ids, mask, task="quora")
        states = model.encode_tokens(ids, mask, task="sst")
    assert torch.equal(after_quora, shared) and torch.equal(after_sst, shared)
    assert (sst - shared).abs().max() > 1e-2 and (quora - sst).abs().max() > 1e-2, "each task's modules change its encoding"
    assert_same_outputs(model.pool(states, mask), sst)
    with pytest.raises(KeyError, match="nope"):
        model.encode(ids, mask, task="nope")


@pytest.mark.parametrize("kind", ["lora", "pal"])
def test_concurrent_forwards_on_one_model_each_run_their_own_task(kind, tokenizer):
    # item 4: the router and the active adapter were state of the whole instance
    model = _adapter_model(kind).eval()
    batches = _batches(tokenizer, model)
    with torch.no_grad():
        expected = {t: model(task=t, **b).logits for t, b in batches.items()}
    wrong: dict[str, int] = {t: 0 for t in TASKS}
    errors: list[BaseException] = []
    start = threading.Barrier(len(TASKS))

    def serve(task: str) -> None:
        try:
            start.wait()
            for _ in range(60):
                with torch.no_grad():
                    out = model(task=task, **batches[task]).logits
                if not torch.allclose(out, expected[task], rtol=1e-5, atol=1e-6):
                    wrong[task] += 1
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=serve, args=(t,)) for t in TASKS]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert wrong == {t: 0 for t in TASKS}


def test_routed_experts_keep_their_own_settings(tmp_path, tokenizer):
    # item 5: every expert was rebuilt from the base model's config (LoRA alpha, pooling lost)
    base = deterministic_model(seed=5)
    lora = deterministic_model(seed=6)
    lora.add_lora(r=4, alpha=64, per_task=True)
    _perturb(lora, ("lora_B",))
    mean = deterministic_model(seed=7, pooling="mean")
    routed = hm.RoutedMultitaskModel.from_models({"sst": lora, "quora": mean}, base).eval()
    assert routed.config.config_of("sst").lora["alpha"] == 64 and routed.config.config_of("quora").pooling == "mean"
    routed.save_pretrained(tmp_path)
    loaded = hm.RoutedMultitaskModel.from_pretrained(tmp_path).eval()
    batches = {**_batches(tokenizer, base), "sts": None}
    batches["sts"] = toy_encoded(tokenizer, base, n=8)["sts"]
    batches["sts"] = hm.MultitaskCollator(tokenizer.pad_token_id)([batches["sts"][i] for i in range(8)])
    with torch.no_grad():
        for task, expert in (("sst", lora), ("quora", mean), ("sts", base)):
            want = expert.eval()(task=task, **batches[task]).logits
            assert_same_outputs(routed(task=task, **batches[task]).logits, want, task)
            assert_same_outputs(loaded(task=task, **batches[task]).logits, want, f"{task} after loading")
    assert loaded.config.config_of("sst").lora["alpha"] == 64


def test_routed_config_refuses_an_expert_with_other_tasks():
    config = deterministic_model().config
    other = hm.MultitaskConfig(encoder_config=config.encoder_config, tasks=[hm.reference_tasks()[0]])
    with pytest.raises(ValueError, match="other tasks"):
        hm.RoutedMultitaskConfig(expert_config=config, specialised_tasks=["sst"], expert_configs={"sst": other})
    with pytest.raises(ValueError, match="not an expert"):
        hm.RoutedMultitaskConfig(expert_config=config, specialised_tasks=["sst"], expert_configs={"sts": config})
