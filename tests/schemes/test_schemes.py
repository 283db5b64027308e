"""Ensembles, EDA, SimCSE and LP-FT."""

from collections import Counter
from dataclasses import replace

import datasets
import numpy as np
import pytest
import torch
from conftest import WORDS, deterministic_model, tiny_model, toy_encoded, train_args

import hf_multitask as hm
from hf_multitask.schemes import EDA, EnsembleModel, simcse_loss, simcse_pretrain

SYN = {"good": ["fine", "nice"], "film": ["movie"], "bad": ["poor"], "plot": ["story"]}


def test_ensemble_of_identical_checkpoints_equals_the_single_model(tokenizer):
    model = deterministic_model().eval()
    ens = EnsembleModel([model, deterministic_model().eval(), deterministic_model().eval()])
    data = toy_encoded(tokenizer, model, n=16)
    single = hm.evaluate(model, data, pad_token_id=tokenizer.pad_token_id, progress=False)
    combined = hm.evaluate(ens, data, pad_token_id=tokenizer.pad_token_id, progress=False)
    assert combined == pytest.approx(single)
    x = {"input_ids": torch.tensor([[2, 10, 11, 3]])}
    assert torch.allclose(ens(task="sts", **x).logits, model(task="sts", **x).logits)
    assert torch.allclose(ens(task="sst", **x).logits.exp(), model(task="sst", **x).logits.softmax(-1), atol=1e-6)


class Fixed(torch.nn.Module):
    """A stand-in member whose sst logits are fixed per example."""

    def __init__(self, logits, config):
        super().__init__()
        self.logits, self.config = torch.tensor(logits), config

    def forward(self, task, **inputs):
        return hm.MultitaskOutput(logits=self.logits)


def test_ensemble_accuracy_on_a_hand_made_case():
    config = tiny_model().config
    # 3 examples, 2 of 5 classes matter; gold = [0, 1, 1]
    a = Fixed([[4.0, 0, 0, 0, 0], [0, 1.0, 0.9, 0, 0], [3.0, 0, 0, 0, 0]], config)
    b = Fixed([[0, 4.0, 0, 0, 0], [0, 3.0, 0, 0, 0], [0, 0.2, 0, 0, 0]], config)
    c = Fixed([[3.0, 0, 0, 0, 0], [0, 0, 5.0, 0, 0], [0, 2.0, 0, 0, 0]], config)
    ens = EnsembleModel.__new__(EnsembleModel)
    torch.nn.Module.__init__(ens)
    ens.members, ens.vote = torch.nn.ModuleList([a, b, c]), "majority"
    gold = np.array([0, 1, 1])
    votes = ens(task="sst").logits.argmax(-1).numpy()
    # member classes: ex1 (0, 1, 0), ex2 (1, 1, 2), ex3 (0, 1, 1)
    assert votes.tolist() == [0, 1, 1] and hm.accuracy(votes, gold) == 1.0
    ens.vote = "mean"
    probs = torch.stack([m.logits.softmax(-1) for m in (a, b, c)]).mean(0)
    mean_pred = ens(task="sst").logits.argmax(-1)
    # averaged probabilities: c's confident class 2 wins ex2, a's confident class 0 wins ex3
    assert torch.equal(mean_pred, probs.argmax(-1)) and mean_pred.tolist() == [0, 2, 0]
    assert hm.accuracy(mean_pred.numpy(), gold) == pytest.approx(1 / 3)


def test_ensemble_rejects_mismatched_members():
    with pytest.raises(ValueError, match="same tasks"):
        EnsembleModel([tiny_model(), tiny_model(tasks=[hm.sst_task()])])
    with pytest.raises(ValueError, match="vote"):
        EnsembleModel([tiny_model()], vote="max")


def test_ensemble_refuses_members_that_encode_pairs_differently():
    """The inputs are encoded once for every member: a cross-encoding member fed a bi-encoded pair
    would score the first sentence alone (the ensemble took member 0's encoding, silently)."""
    with pytest.raises(ValueError, match=r"encode task 'quora'.s pairs differently \(\['cross', 'bi'\]"):
        EnsembleModel([tiny_model(), tiny_model(pair_encoding="bi")])
    sts_cosine = [replace(s, pair_encoding="cosine") if s.name == "sts" else s for s in hm.reference_tasks()]
    with pytest.raises(ValueError, match=r"task 'sts'.s pairs differently \(\['cosine', 'cross'\]"):
        EnsembleModel([tiny_model(tasks=sts_cosine), tiny_model()])
    assert len(EnsembleModel([tiny_model(pair_encoding="bi"), tiny_model(pair_encoding="bi", seed=1)]).members) == 2


def test_eda_operations_keep_labels_respect_rates_and_are_seeded():
    words = "a good film with a bad plot and good acting".split()
    eda = EDA(SYN, alpha_sr=0.2, alpha_ri=0.2, alpha_rs=0.2, p_rd=0.5, seed=1)
    sr = eda.synonym_replacement(words)
    assert len(sr) == len(words) and sum(a != b for a, b in zip(sr, words)) == 2  # round(0.2 * 10)
    assert all(b in SYN.get(a, []) for a, b in zip(words, sr) if a != b)
    ri = eda.random_insertion(words)
    assert len(ri) == len(words) + 2 and Counter(ri) - Counter(words) <= Counter({s: 9 for v in SYN.values() for s in v})
    rs = eda.random_swap(words)
    assert sorted(rs) == sorted(words)
    deleted = [len(EDA(SYN, p_rd=0.5, seed=s).random_deletion(words)) for s in range(200)]
    assert 4.0 < np.mean(deleted) < 6.0, "about half the words survive p_rd = 0.5"
    assert EDA(SYN, seed=7).augment("good film") == EDA(SYN, seed=7).augment("good film")
    with pytest.raises(ValueError, match="alpha_sr"):
        EDA(SYN, alpha_sr=1.5)


def test_eda_rebalances_classes_and_keeps_labels():
    ds = datasets.Dataset.from_dict(
        {"id": [str(i) for i in range(7)], "sentence": ["good film"] * 5 + ["bad plot here", "bad film"], "label": [0] * 5 + [1, 1]}
    )
    out = EDA(SYN, seed=0).rebalance(ds, hm.sst_task())
    assert Counter(out["label"]) == {0: 5, 1: 5}
    new = out.select(range(7, 10))
    assert all(i.endswith(("-eda0", "-eda1", "-eda2")) for i in new["id"])
    assert all(set(s.split()) <= {"bad", "plot", "here", "film", "poor", "story", "movie"} for s in new["sentence"]), (
        "copies of class-1 rows"
    )
    with pytest.raises(ValueError, match="regression"):
        EDA(SYN).rebalance(ds, hm.sts_task())


def test_eda_without_a_synonym_source_says_how_to_provide_one(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_nltk(name, *args, **kwargs):
        if name.startswith("nltk"):
            raise ImportError("no nltk")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nltk)
    with pytest.raises(ImportError, match="pass synonyms="):
        EDA()


def test_simcse_loss_is_low_for_aligned_views_and_high_for_shuffled():
    z = torch.randn(8, 16)
    assert simcse_loss(z, z) < simcse_loss(z, z[torch.randperm(8)])


def test_simcse_improves_alignment_on_a_toy_corpus(tokenizer):
    import random

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 7))) for _ in range(64)]
    model = tiny_model(seed=1, pooling="mean")  # dropout 0.1 in the encoder: the only augmentation
    enc = tokenizer(corpus, padding=True, return_tensors="pt")

    def cosines():
        torch.manual_seed(0)
        with torch.no_grad():
            model.train()
            z1 = model.encode(enc["input_ids"], enc["attention_mask"])
            z2 = model.encode(enc["input_ids"], enc["attention_mask"])
        cos = torch.nn.functional.cosine_similarity(z1[:, None], z2[None], dim=-1)
        return cos.diagonal().mean().item(), (cos.sum() - cos.diagonal().sum()).item() / (64 * 63)

    pos0, neg0 = cosines()
    heads_before = {n: p.clone() for n, p in model.heads.named_parameters()}
    losses = simcse_pretrain(model, corpus, tokenizer, steps=40, batch_size=16, learning_rate=1e-3, progress=False)
    pos1, neg1 = cosines()
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # a random-init encoder maps every sentence to nearly the same point (all cosines ~0.96);
    # SimCSE spreads different sentences apart while dropout views of one sentence stay close
    assert neg1 < neg0 - 0.2 and pos1 > 0.9 and pos1 - neg1 > pos0 - neg0 + 0.2, ((pos0, neg0), (pos1, neg1))
    assert all(torch.equal(p, heads_before[n]) for n, p in model.heads.named_parameters())


def test_lp_ft_freezes_exactly_the_encoder_then_unfreezes(tmp_path, tokenizer):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model)
    enc_before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    heads_before = {n: p.detach().clone() for n, p in model.heads.named_parameters()}
    args = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    hm.schemes.lpft.linear_probe(
        model, data, hm.MultitaskTrainingArguments(max_steps=5, learning_rate=1e-2, **args), processing_class=tokenizer
    )
    assert all(torch.equal(p, enc_before[n]) for n, p in model.encoder.named_parameters()), "phase one leaves the encoder alone"
    assert any(not torch.equal(p, heads_before[n]) for n, p in model.heads.named_parameters())
    assert all(p.requires_grad for p in model.parameters()), "phase two trains everything again"
    hm.MultitaskTrainer(
        model=model,
        args=hm.MultitaskTrainingArguments(max_steps=3, learning_rate=1e-3, **args),
        train_dataset=data,
        processing_class=tokenizer,
    ).train()
    assert any(not torch.equal(p, enc_before[n]) for n, p in model.encoder.named_parameters())


def test_lp_ft_leaves_a_parameter_free_head_out_and_the_engine_names_such_a_task(tmp_path, tokenizer):
    """A cosine pair head has no parameters: with the encoder frozen its task has nothing to
    train. linear_probe skips it; training it anyway is an error naming the task."""
    model = deterministic_model(pair_encoding="cosine")
    data = toy_encoded(tokenizer, model)
    assert not list(model.task_parameters("sts")), "the cosine head is parameter-free"
    args = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    probe = hm.MultitaskTrainingArguments(max_steps=2, learning_rate=1e-2, **args)
    heads_before = {n: p.detach().clone() for n, p in model.heads.named_parameters()}
    hm.schemes.lpft.linear_probe(model, data, probe, processing_class=tokenizer)
    assert any(not torch.equal(p, heads_before[n]) for n, p in model.heads.named_parameters())
    model.set_trainable("heads")
    trainer = hm.MultitaskTrainer(model=model, args=probe, train_dataset={"sts": data["sts"]}, processing_class=tokenizer)
    with pytest.raises(ValueError, match="task 'sts' has no trainable parameters"):
        trainer.train()


def _batch(task, encoding="cross"):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 60, (4, 6), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if encoding != "cross" and task != "sst":
        batch.update(input_ids_b=ids[:, :4], attention_mask_b=torch.ones_like(ids[:, :4]))
    labels = {"sst": torch.tensor([0, 1, 2, 3]), "quora": torch.tensor([0, 1, 1, 0]), "sts": torch.tensor([0.5, 1.0, 4.0, 2.0])}[task]
    return batch, labels


@pytest.mark.parametrize("encoding", ["cross", "bi"])
def test_smart_loss_is_zero_without_perturbation_and_positive_with_it(encoding):
    from hf_multitask.schemes import SmartRegularizer

    model = deterministic_model(pair_encoding=encoding).eval()  # no dropout: only delta changes the output
    for task in ("sst", "sts", "quora"):
        batch, _ = _batch(task, encoding)
        logits = model(task=task, **batch).logits
        zero = SmartRegularizer(model, epsilon=0.0, noise_std=0.0, mu=0.0)
        assert float(zero.adversarial_loss(model, task, batch, logits).detach()) == pytest.approx(0.0, abs=1e-10)
        zero.remove()
        smart = SmartRegularizer(model, epsilon=1.0, noise_std=0.5, step_size=0.5, mu=0.0)
        r = smart.adversarial_loss(model, task, batch, logits)
        assert r.item() > 1e-6
        r.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters()), "its gradient flows"
        model.zero_grad()
        smart.remove()


def test_smart_bregman_term_tracks_an_ema_teacher(tmp_path, tokenizer):
    from hf_multitask.schemes import SmartRegularizer

    model = deterministic_model()
    smart = SmartRegularizer(model, lambda_s=1.0, mu=1.0, beta=0.5)
    batch, labels = _batch("sst")
    out = model.eval()(task="sst", labels=labels, **batch)
    assert float(smart.bregman(model, "sst", batch, out.logits).detach()) == pytest.approx(0.0, abs=1e-10), "teacher starts as the model"
    data = toy_encoded(tokenizer, model)
    args = train_args(tmp_path, max_steps=6, learning_rate=3e-3, aggregator="pcgrad")
    hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, loss_hook=smart).train()
    teacher = dict(smart.ema.named_parameters())
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, teacher[n])]
    assert moved, "the EMA teacher lags the trained model"
    first = next(n for n, _ in model.encoder.named_parameters())
    assert not torch.equal(teacher["encoder." + first], deterministic_model().state_dict()["encoder." + first]), "the EMA teacher moved"


def test_head_pretraining_keeps_each_tasks_best_head(tmp_path, tokenizer):
    from hf_multitask.schemes import pretrain_heads

    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=32)
    encoder_before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    args = train_args(tmp_path, max_steps=6, learning_rate=5e-2, eval_strategy="steps", eval_steps=2, logging_steps=2)
    best = pretrain_heads(model, data, data, args, processing_class=tokenizer)
    assert set(best) == {"sst", "quora", "sts"}
    assert all(torch.equal(p, encoder_before[n]) for n, p in model.encoder.named_parameters()), "the encoder never changes"
    # batched as the trainer's evaluations were (another batch size pads differently: an untrained head's Pearson r
    # moves by 1e-5 with the padding on transformers 5.25)
    scores = hm.evaluate(model, data, pad_token_id=tokenizer.pad_token_id, progress=False, batch_size=args.per_device_eval_batch_size)
    for task, value in best.items():
        assert scores[f"{task}_score"] == pytest.approx(value, abs=1e-6), "the loaded head is the best-scoring one"


def test_two_step_gives_task_specific_encoders(tmp_path, tokenizer):
    from hf_multitask.schemes import specialise

    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=32)
    special = specialise(model, data, train_args(tmp_path, max_steps=3, learning_rate=1e-3), tasks=["sst", "sts"], fresh_heads=True,
                         save_dir=tmp_path / "special", processing_class=tokenizer)  # fmt: skip
    first = "encoder.embeddings.word_embeddings.weight"
    base = model.state_dict()[first]
    a, b = special["sst"].state_dict()[first], special["sts"].state_dict()[first]
    assert not torch.equal(a, b) and not torch.equal(a, base) and not torch.equal(b, base)
    from transformers import AutoModel

    loaded = AutoModel.from_pretrained(tmp_path / "special" / "sts")
    assert torch.equal(loaded.state_dict()[first], b)
