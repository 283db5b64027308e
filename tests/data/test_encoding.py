import datasets
import pytest
import torch

import hf_multitask as hm
from hf_multitask import MultitaskCollator, encode_task


def _pairs():
    return datasets.Dataset.from_dict(
        {"id": ["p0", "p1", "p2"], "sentence1": ["a b", "c d e f g", "h"], "sentence2": ["x", "y z", "w v u"], "label": [1.0, 2.0, 3.0]}
    )


def test_cross_encoding_joins_the_pair_with_segment_ids(tokenizer):
    enc = encode_task(_pairs(), hm.sts_task(), tokenizer, pair_encoding="cross")
    row = enc[0]
    assert row["input_ids"] == tokenizer("a b", "x")["input_ids"]
    assert row["input_ids"].count(tokenizer.sep_token_id) == 2
    assert row["token_type_ids"] == [0, 0, 0, 0, 1, 1]
    assert row["labels"] == 1.0 and row["id"] == "p0"
    assert "input_ids_b" not in enc.column_names


@pytest.mark.parametrize("encoding", ["bi", "cosine"])
def test_siamese_encoding_keeps_sentences_apart(tokenizer, encoding):
    enc = encode_task(_pairs(), hm.sts_task(), tokenizer, pair_encoding=encoding)
    assert enc[1]["input_ids"] == tokenizer("c d e f g")["input_ids"]
    assert enc[1]["input_ids_b"] == tokenizer("y z")["input_ids"]


def test_single_sentence_task_ignores_pair_encoding(tokenizer):
    ds = datasets.Dataset.from_dict({"id": ["s"], "sentence": ["a b c"], "label": [2]})
    enc = encode_task(ds, hm.sst_task(), tokenizer, pair_encoding=None)
    assert enc[0]["input_ids"] == tokenizer("a b c")["input_ids"] and enc[0]["labels"] == 2


def test_truncation_and_drop_longest(tokenizer):
    enc = encode_task(_pairs(), hm.sts_task(), tokenizer, pair_encoding="cross", max_length=5)
    assert max(len(x) for x in enc["input_ids"]) == 5
    kept = encode_task(_pairs(), hm.sts_task(), tokenizer, pair_encoding="bi", drop_longest=0.34)
    assert kept["id"] == ["p0", "p2"], "the single longest pair (p1: 7 + 4 tokens) is dropped"
    with pytest.raises(ValueError, match="drop_longest"):
        encode_task(_pairs(), hm.sts_task(), tokenizer, drop_longest=1.0)


def test_missing_text_column_is_reported(tokenizer):
    ds = datasets.Dataset.from_dict({"id": ["s"], "text": ["a"], "label": [2]})
    with pytest.raises(ValueError, match=r"lacks text column\(s\) \['sentence'\]"):
        encode_task(ds, hm.sst_task(), tokenizer)


def test_collator_pads_dynamically_and_types_labels(tokenizer):
    enc = encode_task(_pairs(), hm.sts_task(), tokenizer, pair_encoding="bi")
    batch = MultitaskCollator(tokenizer.pad_token_id, task="sts", keep_ids=True)([enc[0], enc[1]])
    assert batch["input_ids"].shape == (2, 7) and batch["input_ids_b"].shape == (2, 4)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert batch["input_ids"][0, 4:].tolist() == [tokenizer.pad_token_id] * 3
    assert batch["labels"].dtype == torch.float32 and batch["task"] == "sts" and batch["ids"] == ["p0", "p1"]
    cls_batch = MultitaskCollator(0, pad_to_multiple_of=8)([{"input_ids": [1, 2, 3], "labels": 1}, {"input_ids": [4], "labels": 0}])
    assert cls_batch["labels"].dtype == torch.long and cls_batch["input_ids"].shape == (2, 8)
    assert "ids" not in cls_batch and "task" not in cls_batch
