"""The training ``max_length`` travels with the model: the recipe records it in the config and
every serving path (the pipeline, ``hf-multitask predict``, ``tweeteval-test``) cuts inputs to
it unless told otherwise; checkpoints that do not record it keep each path's old default."""

import json

import pytest
import torch
from conftest import tiny_encoder_config
from test_pipeline import SCORE, SENTI, _model
from transformers import AutoModel, pipeline

import hf_multitask as hm

LONG = " ".join(["word"] * 24)  # 98 tokens of the test vocabulary (4 a word): far more than 12, within the tiny encoder's 128


def _saved(tmp_path, tokenizer, train_max_length):
    model = _model(train_max_length=train_max_length)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_the_recipe_records_its_max_length_and_it_survives_saving(tiny_backbone, tmp_path):
    from hf_multitask.configuration import serving_max_length
    from hf_multitask.recipe import ModelArguments, load_model

    model, _ = load_model(ModelArguments(backbone=str(tiny_backbone)), hm.reference_tasks(), max_length=12)
    model.save_pretrained(tmp_path / "m")
    assert AutoModel.from_pretrained(tmp_path / "m").config.train_max_length == 12
    routed = hm.schemes.route({"sst": model}, model)
    routed.save_pretrained(tmp_path / "r")
    assert serving_max_length(AutoModel.from_pretrained(tmp_path / "r").config) == 12, "a routed model's expert config carries it"


def test_the_pipeline_cuts_inputs_to_the_trained_length(tokenizer, tmp_path):
    pipe = pipeline("multitask-text", model=str(_saved(tmp_path, tokenizer, 12)))
    assert len(pipe.preprocess(LONG)["encoded"]["senti"]["input_ids"]) == 12, "the training length, not 512"
    assert len(pipe.preprocess(LONG, max_length=40)["encoded"]["senti"]["input_ids"]) == 40, "asked for: as asked"
    old = pipeline("multitask-text", model=str(_saved(tmp_path / "old", tokenizer, None)))
    assert len(old.preprocess(LONG)["encoded"]["senti"]["input_ids"]) == len(tokenizer(LONG)["input_ids"]) == 98, "none recorded: 512"


def test_predict_command_answers_as_the_pipeline_at_the_trained_length(tokenizer, tmp_path):
    from hf_multitask.cli import main

    folder = _saved(tmp_path, tokenizer, 12)
    (tmp_path / "in.tsv").write_text(f"id\ttext\nx\t{LONG}\n")
    main(["predict", "--model", str(folder), "--input", str(tmp_path / "in.tsv"), "--output", str(tmp_path / "out.jsonl"), "--quiet"])
    answer = json.loads((tmp_path / "out.jsonl").read_text())["answers"]["score"]["value"]
    pipe = pipeline("multitask-text", model=str(folder))
    assert answer == pytest.approx(pipe(LONG, max_length=12)["score"]["value"], rel=1e-5)
    assert answer != pytest.approx(pipe(LONG, max_length=512)["score"]["value"], rel=1e-5)


LONGER = " ".join(["word"] * 40)  # 162 tokens: past the tiny encoders' 128 positions


@pytest.mark.parametrize(("arch", "limit"), [("bert", 128), ("roberta", 127)])  # RoBERTa's positions start after pad_token_id (0)
def test_the_default_length_is_cut_to_what_the_encoder_takes(arch, limit, tokenizer, tmp_path):
    """A checkpoint that does not record its training length, on a 128-position encoder: the
    512-token default is cut to the encoder's limit (the pipeline failed on a long input with an
    index past the position embeddings)."""
    from hf_multitask.cli import main

    torch.manual_seed(0)
    model = hm.MultitaskModel(hm.MultitaskConfig(encoder_config=tiny_encoder_config(arch), tasks=[SENTI, SCORE])).eval()
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    assert len(tokenizer(LONGER)["input_ids"]) > 128
    pipe = pipeline("multitask-text", model=str(tmp_path / "m"))
    assert len(pipe.preprocess(LONGER)["encoded"]["score"]["input_ids"]) == limit
    assert pipe(LONGER)["score"]["value"] == pytest.approx(pipe(LONGER, max_length=limit)["score"]["value"], rel=1e-6)
    with pytest.raises(ValueError, match="max_length must be at least 1 token, got 0"):
        pipe(LONGER, max_length=0)
    (tmp_path / "in.tsv").write_text(f"id\ttext\nx\t{LONGER}\n")
    main(["predict", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "in.tsv"), "--output", str(tmp_path / "o.jsonl"), "--quiet"])
    assert "value" in json.loads((tmp_path / "o.jsonl").read_text())["answers"]["score"]
