"""The evaluation side of TrainingArguments: ``bf16_full_eval`` and ``fp16_full_eval`` are
honoured (they were accepted and ignored: evaluation ran in fp32)."""

import pytest
import torch
from conftest import deterministic_model, toy_encoded, train_args

import hf_multitask as hm
import hf_multitask.trainer_evaluation as trainer_evaluation


@pytest.mark.parametrize("flag, dtype", [({}, None), ({"bf16_full_eval": True}, torch.bfloat16), ({"fp16_full_eval": True}, torch.float16)])
def test_evaluation_runs_in_the_asked_precision(flag, dtype, tokenizer, tmp_path, monkeypatch):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=8)
    trainer = hm.MultitaskTrainer(model=model, args=train_args(tmp_path, **flag), train_dataset=data, eval_dataset=data,
                                  processing_class=tokenizer)  # fmt: skip
    seen = []
    monkeypatch.setattr(trainer_evaluation, "evaluate_tasks", lambda *a, **k: seen.append(k.get("dtype")) or {"overall": 0.0})
    original = trainer_evaluation.predict_task
    monkeypatch.setattr(trainer_evaluation, "predict_task", lambda *a, **k: seen.append(k.get("dtype")) or original(*a, **k))
    trainer.evaluate()
    trainer.predict({"sst": data["sst"]})
    assert seen == [dtype, dtype]
    if dtype is not None:  # and the autocast really changes the numbers (fp32 weights, lower-precision products)
        plain = hm.evaluate(model, data, pad_token_id=tokenizer.pad_token_id, progress=False)["loss"]
        low = hm.evaluate(model, data, pad_token_id=tokenizer.pad_token_id, progress=False, dtype=dtype)["loss"]
        assert low != plain and low == pytest.approx(plain, rel=0.05)
