"""The real packaged MiniLM backbone on a few real rows of ../shared/data."""

import pytest
import torch
from conftest import SHARED_DATA
from transformers import AutoTokenizer

import hf_multitask as hm


@pytest.mark.slow
def test_packaged_minilm_forward_on_shared_data():
    path = hm.default_backbone()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = hm.MultitaskModel.from_encoder(path, tasks=hm.reference_tasks(), pair_encoding="cross").eval()
    assert model.config.encoder_config.hidden_size == 384 and model.config.encoder_config.num_hidden_layers == 6
    files = {"sst": "ids-sst-train.csv", "quora": "quora-train.csv", "sts": "sts-train.csv"}
    for spec in model.config.task_specs:
        ds = hm.load_task_data(spec, SHARED_DATA / files[spec.name], limit=8)
        enc = hm.encode_task(ds, spec, tokenizer, pair_encoding=model.config.task_pair_encoding(spec), max_length=64)
        batch = hm.MultitaskCollator(tokenizer.pad_token_id, task=spec.name)([enc[i] for i in range(len(enc))])
        with torch.no_grad():
            out = model(**batch)
        assert out.logits.shape == (8, spec.num_labels)
        assert torch.isfinite(out.loss)
    # pretrained weights really arrived: embeddings of related sentences are closer than unrelated ones
    ids = tokenizer(
        ["a man is playing a guitar", "a person plays the guitar", "stock markets fell sharply"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        model.config.pooling = "mean"
        emb = model.encode(ids["input_ids"], ids["attention_mask"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb[0], emb[1], dim=0) > cos(emb[0], emb[2], dim=0) + 0.2
