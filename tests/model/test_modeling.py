import pytest
import torch
from conftest import assert_loads_without_package, assert_same_outputs, assert_same_weights, tiny_encoder_config, tiny_model
from transformers import AutoConfig, AutoModel, BertModel

import hf_multitask as hm

ENCODINGS = ["cross", "bi", "cosine"]


def _inputs(encoding: str, batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 60, (batch, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if encoding in ("bi", "cosine"):
        ids_b = torch.randint(5, 60, (batch, 6), generator=g)
        out.update(input_ids_b=ids_b, attention_mask_b=torch.ones_like(ids_b))
    return out


LABELS = {"sst": torch.tensor([0, 4, 2, 1]), "quora": torch.tensor([0, 1, 1, 0]), "sts": torch.tensor([0.0, 5.0, 2.5, 1.2])}


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("head_type", ["linear", "mlp"])
def test_forward_backward_every_task_kind_and_encoding(arch, encoding, head_type):
    model = tiny_model(arch=arch, pair_encoding=encoding, head_type=head_type, head_hidden_sizes=[16])
    for task in model.task_names:
        spec = model.get_task(task)
        model.zero_grad()
        out = model(task=task, labels=LABELS[task], **_inputs(encoding if spec.is_pair else "cross"))
        assert out.logits.shape == (4, spec.num_labels)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        enc_grad = sum(p.grad.abs().sum() for p in model.shared_parameters() if p.grad is not None)
        assert enc_grad > 0, "the shared encoder must receive gradient"
        head_grads = [p.grad for p in model.task_parameters(task)]
        if head_grads:  # the cosine regression head has no parameters
            assert all(g is not None for g in head_grads)
        other = [t for t in model.task_names if t != task][0]
        assert all(p.grad is None for p in model.task_parameters(other)), "other heads must get no gradient"


def test_losses_match_their_definitions():
    model = tiny_model().eval()
    out = model(task="sst", labels=LABELS["sst"], **_inputs("cross"))
    assert torch.allclose(out.loss, torch.nn.functional.cross_entropy(out.logits, LABELS["sst"]))
    out = model(task="sts", labels=LABELS["sts"], **_inputs("cross"))
    assert torch.allclose(out.loss, ((out.logits.view(-1) - LABELS["sts"]) ** 2).mean())


def test_cosine_regression_head_maps_into_label_range():
    model = tiny_model(pair_encoding="cosine").eval()
    x = _inputs("cosine")
    same = model(task="sts", input_ids=x["input_ids"], input_ids_b=x["input_ids"]).logits
    assert torch.allclose(same, torch.full_like(same, 5.0), atol=1e-4), "identical sentences: cos=1 -> top of the range"
    out = model(task="sts", **x).logits
    assert ((out >= 0) & (out <= 5)).all()


def test_siamese_batching_equals_encoding_each_side_alone():
    model = tiny_model(pair_encoding="bi").eval()
    x = _inputs("bi")
    u = model.encode(x["input_ids"], x["attention_mask"])
    v = model.encode(x["input_ids_b"], x["attention_mask_b"])
    expected = model.heads["sts"](hm.heads.pair_features(u, v))
    assert torch.allclose(model(task="sts", **x).logits, expected, atol=1e-5)


def test_mean_pooling_ignores_padding():
    model = tiny_model(pooling="mean").eval()
    ids = torch.randint(5, 60, (1, 5))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    assert torch.allclose(model.encode(ids), model.encode(padded, mask), atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    model = tiny_model(pair_encoding="bi")
    x = _inputs("cross")
    with pytest.raises(KeyError, match="Unknown task 'mnli'"):
        model(task="mnli", **x)
    with pytest.raises(ValueError, match=r"labels must be in 0..4"):
        model(task="sst", labels=torch.tensor([0, 5, 1, 1]), **x)
    with pytest.raises(ValueError, match="input_ids_b"):
        model(task="sts", **x)
    with pytest.raises(ValueError, match="whole numbers"):
        model(task="sst", labels=torch.tensor([0.5, 1.0, 1.0, 1.0]), **x)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_save_and_automodel_roundtrip_gives_identical_logits(tmp_path, arch, encoding):
    model = tiny_model(arch=arch, pair_encoding=encoding, head_type="mlp", head_hidden_sizes=[8]).eval()
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "hf_multitask"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, hm.MultitaskModel)
    assert loaded.config.task_specs == model.config.task_specs
    assert loaded.config.encoder_config.model_type == arch
    assert_same_weights(loaded, model)
    for task in model.task_names:
        x = _inputs(encoding if model.get_task(task).is_pair else "cross")
        assert_same_outputs(model(task=task, **x).logits, loaded(task=task, **x).logits, task)


def test_saved_folder_loads_with_trust_remote_code_without_the_package(tmp_path):
    model = tiny_model(pair_encoding="bi").eval()
    model.save_pretrained(tmp_path)
    for name in ("modeling.py", "configuration.py", "tasks.py", "heads.py"):
        assert (tmp_path / name).is_file(), f"{name} must ship with the checkpoint for trust_remote_code"
    x = _inputs("bi")
    assert_loads_without_package(tmp_path, "sts", x, model(task="sts", **x).logits)


def test_from_encoder_loads_pretrained_weights_and_fresh_heads(tmp_path):
    torch.manual_seed(3)
    encoder = BertModel(tiny_encoder_config("bert"))
    encoder.save_pretrained(tmp_path)
    model = hm.MultitaskModel.from_encoder(tmp_path, tasks=hm.reference_tasks(), head_type="mlp", head_hidden_sizes=[8])
    theirs = encoder.state_dict()
    for name, value in model.encoder.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    assert model.encoder.pooler is None
    assert model.config.head_type == "mlp"
    weight = model.heads["sst"].net[1].weight
    assert 0 < weight.std() < 0.1, "heads are initialised with the encoder's initializer_range"


def test_from_encoder_unknown_path_raises():
    with pytest.raises(OSError):
        hm.MultitaskModel.from_encoder("/nonexistent/encoder-folder", tasks=hm.reference_tasks())


def test_model_needs_tasks():
    with pytest.raises(ValueError, match="at least one"):
        hm.MultitaskModel(hm.MultitaskConfig(encoder_config=tiny_encoder_config(), tasks=[]))


@pytest.mark.parametrize("encoding", ["cross", "bi"])
def test_lstm_head_and_adjustment_matrix(tmp_path, encoding):
    model = tiny_model(head_type="lstm", head_hidden_sizes=[8], pair_encoding=encoding, adjustment_tasks=["sst"])
    assert torch.equal(model.adjustments["sst"].matrix, torch.eye(5)), "the adjustment starts as the identity"
    x = _inputs("cross")
    model.eval()
    out = model(task="sst", labels=LABELS["sst"], **x)
    head = model.heads["sst"]
    states = model.encode_tokens(x["input_ids"], x["attention_mask"])
    plain = head(states, x["attention_mask"])
    assert torch.allclose(out.logits.exp(), plain.softmax(-1), atol=1e-6), "identity adjustment = the head's probabilities"
    model.train()
    model(task="sst", labels=LABELS["sst"], **x).loss.backward()
    assert model.adjustments["sst"].matrix.grad is not None and head.lstm.weight_ih_l0.grad is not None
    assert {id(p) for p in model.adjustments["sst"].parameters()} <= {id(p) for p in model.task_parameters("sst")}
    # the padded tail of example 0 does not change the LSTM's result
    ids = x["input_ids"][:1, :6]
    trimmed = head(model.eval().encode_tokens(ids, torch.ones_like(ids)), torch.ones_like(ids))
    assert torch.allclose(
        trimmed, head(model.encode_tokens(x["input_ids"][:1], x["attention_mask"][:1]), x["attention_mask"][:1]), atol=1e-5
    )
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert_same_outputs(loaded(task="sst", **x).logits, model(task="sst", **x).logits)
    with pytest.raises(ValueError, match="not a classification task"):
        tiny_model(adjustment_tasks=["sts"])
