"""Every kind of checkpoint the recipe writes (plain, routed experts, one backbone with per-task PALs or
LoRA) is served the same four ways: the pipeline from the folder, ``.pipeline(tokenizer)``,
``hf-multitask predict`` and ``hf-multitask tweeteval-test`` (issue 49)."""

from __future__ import annotations

import json
import warnings

import pytest
from transformers import AutoModel, AutoTokenizer, pipeline
from tweeteval_fixtures import recipe_args, tweet, write_tweeteval

import hf_multitask as hm
from hf_multitask.cli import main
from hf_multitask.recipe import run

TASKS = ["irony", "emotion", "stance"]  # two single-text tasks and a (target, tweet) pair task
KINDS = {
    "plain": [],
    "routed": ["--specialise_steps", "2", "--specialise_learning_rate", "1e-3"],
    "pal": ["--specialise_steps", "2", "--specialise_learning_rate", "1e-3", "--specialise_form", "pal", "--specialise_rank", "8",
            "--pal_heads", "2"],
    "lora": ["--specialise_steps", "2", "--specialise_learning_rate", "1e-3", "--specialise_form", "lora", "--specialise_rank", "4"],
}  # fmt: skip


@pytest.fixture(scope="module")
def tweeteval_dir(tmp_path_factory):
    return write_tweeteval(tmp_path_factory.mktemp("tweeteval"))


def _same(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for task in a:
        assert a[task].get("label") == b[task].get("label"), (what, task, a[task], b[task])
        for key in ("score", "value"):
            if key in a[task]:
                assert abs(a[task][key] - b[task][key]) < 1e-5, (what, task, key)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_of_checkpoint_is_served_the_same_four_ways(kind, tiny_backbone, tweeteval_dir, tmp_path):
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = run(recipe_args(tiny_backbone, tweeteval_dir, out, "--tasks", *TASKS, *KINDS[kind]))
    best = out / "best"
    model = AutoModel.from_pretrained(best)
    expected_type = hm.RoutedMultitaskModel if kind == "routed" else hm.MultitaskModel
    assert isinstance(model, expected_type)
    counts = model.parameter_counts()
    if kind in ("pal", "lora"):
        assert model.routed_tasks == TASKS and counts["pals" if kind == "pal" else "lora"] > 0
        assert metrics["serving_encoders"] == 1 and metrics["serving_parameters"] == counts["total"]
    if kind == "routed":
        assert counts["encoders"] == len(TASKS) and metrics["serving_encoders"] == len(TASKS)
    texts = [tweet(i) for i in range(5)]
    inputs = [*texts, ("abortion", texts[0]), ("hillary", texts[1])]
    tokenizer = AutoTokenizer.from_pretrained(best)
    in_memory = model.pipeline(tokenizer)(inputs)
    from_folder = pipeline(model=str(best), trust_remote_code=True)(inputs)
    source = tmp_path / "inputs.jsonl"
    source.write_text("".join(json.dumps({"id": str(i), "inputs": list(x) if isinstance(x, tuple) else x}) + "\n"
                              for i, x in enumerate(inputs)))  # fmt: skip
    main(["predict", "--model", str(best), "--input", str(source), "--output", str(tmp_path / "answers.jsonl"), "--quiet"])
    command = [json.loads(line)["answers"] for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    for i, answer in enumerate(in_memory):
        assert set(answer) == ({"stance"} if isinstance(inputs[i], tuple) else {"irony", "emotion"})
        _same(from_folder[i], answer, f"{kind}: pipeline from the folder, input {i}")
        _same(command[i], answer, f"{kind}: hf-multitask predict, input {i}")
    main(["tweeteval-test", "--model", str(best), "--data-dir", str(tweeteval_dir), "--output-dir", str(tmp_path / "test"), "--quiet"])
    written = sorted(p.relative_to(tmp_path / "test") for p in (tmp_path / "test").rglob("*.txt"))
    recipe = out / "predictions" / "test"
    assert written == sorted(p.relative_to(recipe) for p in recipe.rglob("*.txt")) and written
    for path in written:
        assert (tmp_path / "test" / path).read_text() == (recipe / path).read_text(), f"{kind}: {path}"
