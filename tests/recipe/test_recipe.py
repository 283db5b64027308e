"""The front-door recipe, every config in recipes/configs, and the Hub push (offline)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import RECIPE_WORDS, REPO, assert_same_outputs, assert_same_weights, recipe_flags, write_tsv
from huggingface_hub import HfApi
from transformers import AutoModel, BertTokenizerFast

import hf_multitask as hm
from hf_multitask.recipe import RecipeError, parse_args, run

CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))
WORDS = RECIPE_WORDS


_common = recipe_flags


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_runs_as_written(config, tiny_backbone, tiny_data, tmp_path):
    out = tmp_path / "run"
    metrics = run(["--config", str(config), *_common(tiny_backbone, tiny_data, out)])
    assert 0.0 <= metrics["eval_overall"] <= 1.0
    for key in ("eval_sst_accuracy", "eval_quora_accuracy", "eval_sts_pearson"):
        assert key in metrics
    best = AutoModel.from_pretrained(out / "best")
    settings = yaml.safe_load(config.read_text())
    assert isinstance(best, hm.RoutedMultitaskModel if settings.get("specialise_steps") else hm.MultitaskModel)
    if "pair_encoding" in settings:
        assert best.config.pair_encoding == settings["pair_encoding"]
    assert (out / "metrics.json").is_file() and (out / "conflicts.png").is_file()
    lines = (out / "predictions" / "sts-dev-output.csv").read_text().splitlines()
    assert lines[0] == "id \t Predicted_similarity " and len(lines) == 1 + 5  # 10 % of 48 rows


def test_yaml_values_are_overridden_by_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("aggregator: gradvac\nlearning_rate: 0.001\ntasks: [sst, sts]\nhead_hidden_sizes: [8, 4]\n")
    parsed = parse_args(["--config", str(config), "--learning_rate", "0.5", "--output_dir", str(tmp_path)])
    assert parsed.training.aggregator == "gradvac" and parsed.training.learning_rate == 0.5
    assert parsed.data.tasks == ["sst", "sts"] and parsed.model.head_hidden_sizes == [8, 4]
    with pytest.raises(RecipeError, match="no such file"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])


def test_custom_task_needs_no_code(tiny_backbone, tiny_data, tmp_path):
    write_tsv(tmp_path / "topic.tsv", ["id", "text", "topic"], [[f"x{i}", WORDS[i % 8] + " story", i % 3] for i in range(40)], cs224n=False)
    custom = [{"name": "topic", "kind": "classification", "num_labels": 3, "text_columns": ["text"], "label_column": "topic",
               "train_file": str(tmp_path / "topic.tsv")}]  # fmt: skip
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"tasks": ["sts"], "custom_tasks": custom}))
    metrics = run(["--config", str(config), *_common(tiny_backbone, tiny_data, tmp_path / "out")])
    assert "eval_topic_accuracy" in metrics and "eval_sts_pearson" in metrics


def test_unknown_task_and_offline_hub_backbone_errors(tiny_data, tmp_path, monkeypatch):
    with pytest.raises(RecipeError, match="unknown task .mnli."):
        run(["--tasks", "mnli", "--data-dir", str(tiny_data), "--output-dir", str(tmp_path)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecipeError, match="pass --backbone packaged"):
        run(["--backbone", "someone/not-cached-model", "--data-dir", str(tiny_data), "--output-dir", str(tmp_path)])


def _fake_hub(monkeypatch) -> dict:
    """Patch the two HfApi calls an upload makes; returns what they were called with."""
    calls = {}

    def fake_create_repo(self, repo_id, **kwargs):
        calls["repo"] = (repo_id, kwargs.get("private"))

    def fake_create_commit(self, repo_id, operations, **kwargs):
        calls["files"] = sorted(op.path_in_repo for op in operations)
        calls["repo_id"] = repo_id

        class Info:
            commit_url = f"https://hub.invalid/{repo_id}/commit/1"

        return Info()

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    return calls


def test_push_to_hub_uploads_weights_code_and_card(tiny_backbone, tmp_path, monkeypatch):
    calls = _fake_hub(monkeypatch)
    model = hm.MultitaskModel.from_encoder(tiny_backbone, tasks=hm.reference_tasks())
    tokenizer = BertTokenizerFast.from_pretrained(tiny_backbone)
    metrics = {"eval_sst_accuracy": 0.41, "eval_quora_accuracy": 0.77, "eval_sts_pearson": 0.63, "eval_overall": 0.665}
    folder = tmp_path / "push"
    url = hm.hub.push_to_hub(model, tokenizer, "me/tiny-mt", metrics, folder=folder, private=True)
    assert url.endswith("/commit/1") and calls["repo"] == ("me/tiny-mt", True)
    for name in ("README.md", "config.json", "model.safetensors", "modeling.py", "configuration.py", "tokenizer.json", "metrics.json"):
        assert name in calls["files"], name
    card = (folder / "README.md").read_text()
    assert "model-index:" in card and "value: 0.63" in card and "type: pearsonr" in card
    assert 'AutoModel.from_pretrained("me/tiny-mt")' in card and "| sts | pearson | 0.6300 |" in card
    loaded = AutoModel.from_pretrained(folder)
    ids = torch.tensor([[2, 10, 11, 3]])
    assert_same_weights(loaded, model)
    assert_same_outputs(loaded.eval()(task="sst", input_ids=ids).logits, model.eval()(task="sst", input_ids=ids).logits)


def test_quickstart_notebook_runs_on_a_tiny_checkpoint(tiny_backbone, tiny_data, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    run_dir = tmp_path / "run"
    run([*_common(tiny_backbone, tiny_data, run_dir), "--save_strategy", "steps", "--save_steps", "3", "--load_best_model_at_end", "false"])
    notebook = REPO / "notebooks" / "quickstart.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    env_cell = nbformat.v4.new_code_cell(
        f"import os\nos.environ['HF_MULTITASK_RUN'] = {str(run_dir)!r}\nos.environ['HF_MULTITASK_DATA'] = {str(tiny_data)!r}"
    )
    nb.cells.insert(0, env_cell)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "MultitaskModel tasks: ['sst', 'quora', 'sts']" in text
    assert "accuracy" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2, "the confusion matrix and the conflict curves are drawn"
    assert (run_dir / "conflicts-notebook.png").is_file()


def test_recipe_lp_ft_simcse_and_smart(tiny_backbone, tiny_data, tmp_path):
    metrics = run(
        [*_common(tiny_backbone, tiny_data, tmp_path / "out"), "--lp_steps", "2", "--simcse_steps", "2", "--smart_lambda_s", "1.0"]
    )
    assert "eval_overall" in metrics
    assert (tmp_path / "out" / "best" / "config.json").is_file()


def test_recipe_per_task_pair_encoding_and_mean_pooling(tiny_backbone, tiny_data, tmp_path):
    """--task_pair_encodings reaches the data encoding, not only the model: the STS pairs are
    encoded as two sequences for the cosine head (this failed at the first STS batch); LP-FT
    leaves the parameter-free cosine head out of its probing phase (this failed too)."""
    out = tmp_path / "out"
    flags = ["--task_pair_encodings", '{"sts": "cosine"}', "--pooling", "mean", "--layer_lr_decay", "0.9", "--head_learning_rate", "1e-3",
             "--lp_steps", "2"]  # fmt: skip
    metrics = run([*_common(tiny_backbone, tiny_data, out), *flags])
    assert "eval_sts_pearson" in metrics
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["pooling"] == "mean"
    assert {t["name"]: t.get("pair_encoding") for t in config["tasks"]}["sts"] == "cosine"


def test_recipe_distils_single_task_teachers_into_one_student(tiny_backbone, tiny_data, tmp_path, capsys):
    """--teachers (JSON or a YAML file): each teacher's outputs are computed once and cached beside the
    run; a second run reads them; the card says how it was trained; a task not in the run is refused."""
    teacher = tmp_path / "teacher"
    run([*_common(tiny_backbone, tiny_data, teacher)])
    out = tmp_path / "student"
    teachers = json.dumps({"sst": str(teacher / "best"), "sts": str(teacher / "best")})
    metrics = run([*_common(tiny_backbone, tiny_data, out), "--teachers", teachers, "--distillation_temperature", "2"])
    assert metrics["teacher_seconds_sst"] > 0 and metrics["teacher_seconds_sts"] > 0 and "teacher_seconds_quora" not in metrics
    assert sorted(p.name for p in (out / "teacher_outputs").iterdir()) == ["sst.json", "sst.npz", "sts.json", "sts.npz"]
    assert "Distilled from single-task teachers of `sst`, `sts` with teacher annealing" in (out / "best" / "README.md").read_text()
    mapping = tmp_path / "teachers.yaml"
    mapping.write_text(yaml.safe_dump({"sst": str(teacher / "best")}))
    again = run(
        [
            *_common(tiny_backbone, tiny_data, tmp_path / "again"),
            "--teachers",
            str(mapping),
            "--teacher_cache",
            str(out / "teacher_outputs"),
        ]
    )
    assert again["teacher_seconds_sst"] == 0.0, "the cache was read"
    with pytest.raises(RecipeError, match=r"--teachers names unknown task\(s\) \['nli'\]"):
        run([*_common(tiny_backbone, tiny_data, tmp_path / "bad"), "--teachers", json.dumps({"nli": str(teacher / "best")})])


def test_recipe_two_step_specialisation_saves_a_routed_model(tiny_backbone, tiny_data, tmp_path):
    out = tmp_path / "out"
    args = [*_common(tiny_backbone, tiny_data, out), "--specialise_steps", "3", "--specialise_tasks", "sst", "sts",
            "--specialise_learning_rate", "1e-2", "--specialise_fresh_heads", "true"]  # fmt: skip
    metrics = run(args)
    best = AutoModel.from_pretrained(out / "best")
    assert isinstance(best, hm.RoutedMultitaskModel) and list(best.experts) == ["sst", "sts", "multitask"]
    # quora was not specialised: it runs the multitask model and scores exactly what it scored
    assert metrics["eval_quora_accuracy"] == metrics["multitask_eval_quora_accuracy"]
    # a change by more than rounding (the experts are other instances than the multitask model): measured, the
    # Pearson r moves from -0.67 to -0.16 (on the avx512, avx2 and default kernels alike)
    assert (
        metrics["eval_sst_accuracy"] != metrics["multitask_eval_sst_accuracy"]
        or abs(metrics["eval_sts_pearson"] - metrics["multitask_eval_sts_pearson"]) > 0.05
    ), "specialisation changed nothing"
    assert metrics["specialise_examples"] == 2 * 3 * 4
    sst = AutoModel.from_pretrained(out / "specialised" / "sst")
    key = "encoder.embeddings.word_embeddings.weight"
    assert torch.equal(best.experts["sst"].state_dict()[key], sst.state_dict()[key])
    assert not torch.equal(best.experts["sst"].state_dict()[key], best.experts["multitask"].state_dict()[key])
    assert not torch.equal(best.experts["sst"].state_dict()[key], best.experts["sts"].state_dict()[key])
    card = (out / "best" / "README.md").read_text()
    assert "two-step specialisation" in card
    assert (out / "predictions" / "sst-dev-output.csv").is_file()


def test_recipe_specialise_keep_better_keeps_only_the_experts_that_beat_the_multitask_model(tiny_backbone, tiny_data, tmp_path):
    """MT-DNN's arm: each task keeps its expert only where the expert's validation score beats the
    multitask model's, and the run's scores are those of what it keeps."""
    out = tmp_path / "out"
    args = [*_common(tiny_backbone, tiny_data, out), "--specialise_steps", "3", "--specialise_learning_rate", "1e-3",
            "--specialise_keep", "better"]  # fmt: skip
    metrics = run(args)
    # the same run keeping every expert: its scores are the experts' own
    every = run([*_common(tiny_backbone, tiny_data, tmp_path / "all"), *args[args.index("--specialise_steps") : -2]])
    best = AutoModel.from_pretrained(out / "best")
    tasks = ["sst", "quora", "sts"]
    expected = [t for t in tasks if every[f"eval_{t}_score"] > every[f"multitask_eval_{t}_score"]]
    assert 0 < len(expected) < len(tasks), "the fixture should make some experts win and some lose"
    assert isinstance(best, hm.RoutedMultitaskModel) and best.config.specialised_tasks == expected
    assert metrics["specialise_kept"] == len(expected)
    for task in tasks:
        source = every if task in expected else metrics
        assert metrics[f"eval_{task}_score"] == source[f"{'' if task in expected else 'multitask_'}eval_{task}_score"], task
    assert metrics["serving_parameters"] == sum(p.numel() for p in best.parameters())
    # every expert's scores are recorded too (the kept model's are chosen on this validation set)
    for task in tasks:
        assert metrics[f"experts_eval_{task}_score"] == every[f"eval_{task}_score"], task
    assert metrics["experts_eval_overall"] == every["eval_overall"] <= metrics["eval_overall"], "each task kept the better of two"


def test_recipe_head_pretraining_eda_adjustment_and_lstm(tiny_backbone, tiny_data, tmp_path):
    import json

    synonyms = tmp_path / "synonyms.json"
    synonyms.write_text(json.dumps({w: [v for v in WORDS if v != w][:2] for w in WORDS}))
    out = tmp_path / "out"
    args = [*_common(tiny_backbone, tiny_data, out), "--head_pretrain_steps", "4", "--head_pretrain_eval_steps", "2",
            "--eda_tasks", "sst", "--eda_synonyms", str(synonyms), "--adjustment_tasks", "sst", "--head_type", "lstm",
            "--head_hidden_sizes", "8"]  # fmt: skip
    metrics = run(args)
    assert 0.0 <= metrics["eval_overall"] <= 1.0
    best = AutoModel.from_pretrained(out / "best")
    assert best.config.adjustment_tasks == ["sst"] and "sst" in best.adjustments
    assert type(best.heads["sst"]).__name__ == "LSTMHead"
    for task in ("sst", "quora", "sts"):
        assert (out / "head-pretraining" / f"heads-{task}").is_dir(), "each task's head was pretrained on its own"
    with pytest.raises(RecipeError, match="--eda_tasks names unknown"):
        run([*_common(tiny_backbone, tiny_data, tmp_path / "bad"), "--eda_tasks", "nli"])
    with pytest.raises(RecipeError, match="no such file"):
        run([*_common(tiny_backbone, tiny_data, tmp_path / "bad"), "--eda_tasks", "sst", "--eda_synonyms", str(tmp_path / "none.json")])


def test_recipe_eda_rebalances_the_training_classes(tiny_backbone, tiny_data, tmp_path, caplog):
    import logging

    from hf_multitask.recipe import DataArguments, build_tasks, encode_data, load_model, load_raw_data

    synonyms = tmp_path / "synonyms.json"
    synonyms.write_text('{"good": ["fine"], "bad": ["awful"]}')
    data_args = DataArguments(data_dir=str(tiny_data), eda_tasks=["sst"], eda_synonyms=str(synonyms), eda_alpha=0.2)
    tasks = build_tasks(data_args)
    model, tokenizer = load_model(hm.recipe.ModelArguments(backbone=str(tiny_backbone)), [s for s, _, _ in tasks])
    with caplog.at_level(logging.INFO, logger="hf_multitask.recipe"):
        train, validation, _ = encode_data(data_args, tasks, load_raw_data(data_args, tasks), model, tokenizer)
    labels = train["sst"]["labels"]
    counts = [labels.count(c) for c in range(5)]
    assert len(set(counts)) == 1, f"every SST class is as large as the largest: {counts}"
    assert len(train["quora"]) == 43 and len(validation["sst"]) == 5, "other tasks and the validation split are untouched"
    assert any("EDA rebalancing added" in r.getMessage() for r in caplog.records)


def test_recipe_ensemble_mode_evaluates_checkpoints_without_training(tiny_backbone, tiny_data, tmp_path):
    import json

    for seed in ("1", "2"):
        run([*_common(tiny_backbone, tiny_data, tmp_path / f"m{seed}"), "--seed", seed, "--write_predictions", "false"])
    members = [str(tmp_path / f"m{seed}" / "best") for seed in ("1", "2")]
    out = tmp_path / "ens"
    metrics = run(["--ensemble", *members, "--data-dir", str(tiny_data), "--output-dir", str(out), "--disable_tqdm", "true"])
    ensemble = hm.schemes.EnsembleModel.from_pretrained(members)
    from hf_multitask.recipe import DataArguments, build_tasks, encode_data, load_raw_data

    data_args = DataArguments(data_dir=str(tiny_data))
    tokenizer = BertTokenizerFast.from_pretrained(members[0])
    tasks = build_tasks(data_args)
    _, validation, _ = encode_data(data_args, tasks, load_raw_data(data_args, tasks), ensemble.members[0], tokenizer)
    expected = hm.evaluate(ensemble, validation, pad_token_id=tokenizer.pad_token_id, progress=False)
    assert metrics["eval_overall"] == pytest.approx(expected["overall"])
    assert json.loads((out / "metrics.json").read_text())["eval_overall"] == pytest.approx(expected["overall"])
    assert (out / "predictions" / "sst-dev-output.csv").is_file() and not (out / "best").exists()
    with pytest.raises(RecipeError, match="no such checkpoint"):
        run(["--ensemble", str(tmp_path / "nowhere"), "--data-dir", str(tiny_data), "--output-dir", str(out)])


def test_recipe_pushes_the_saved_best_folder_once(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    calls = _fake_hub(monkeypatch)
    saves = []
    original = hm.MultitaskModel.save_pretrained
    monkeypatch.setattr(hm.MultitaskModel, "save_pretrained", lambda self, *a, **k: saves.append(a[0]) or original(self, *a, **k))
    out = tmp_path / "out"
    run([*_common(tiny_backbone, tiny_data, out), "--push_to_hub_repo", "me/run", "--hub_private_repo", "true"])
    assert calls["repo"] == ("me/run", True) and calls["repo_id"] == "me/run"
    for name in ("README.md", "config.json", "model.safetensors", "metrics.json", "tokenizer.json"):
        assert name in calls["files"], name
    assert [Path(p) for p in saves].count(out / "best") == 1, "the best model is written once, then uploaded"
    assert "me/run" in (out / "best" / "README.md").read_text()


def test_the_recipe_is_phases_each_deciding_whether_it_runs(tiny_backbone, tiny_data, tmp_path, monkeypatch):
    """The recipe runs its phases in order on one context; a phase whose flag is off never runs."""
    from hf_multitask.recipe import PHASES
    from hf_multitask.recipe.phases import Phase

    ran = []
    for phase in PHASES:
        original = type(phase).run

        def spy(self, ctx, original=original):
            ran.append(self.name)
            return original(self, ctx)

        monkeypatch.setattr(type(phase), "run", spy)
    run([*_common(tiny_backbone, tiny_data, tmp_path / "a"), "--lp_steps", "1"])
    assert ran == ["lp", "multitask", "outputs"]
    ran.clear()
    run([*_common(tiny_backbone, tiny_data, tmp_path / "b"), "--simcse_steps", "1", "--specialise_steps", "1"])
    assert ran == ["simcse", "multitask", "specialise", "outputs"]
    assert all(isinstance(p, Phase) for p in PHASES) and [p.name for p in PHASES] == [
        "simcse", "head-pretraining", "intermediate", "lp", "multitask", "specialise", "outputs"]  # fmt: skip


def test_hub_private_is_an_alias_of_the_trainers_field_that_warns(tmp_path):
    with pytest.warns(FutureWarning, match="--hub_private_repo"):
        parsed = parse_args(["--hub_private", "true", "--output_dir", str(tmp_path)])
    assert parsed.training.hub_private_repo is True and parsed.training.hub_private is False
    assert parse_args(["--hub_private_repo", "true", "--output_dir", str(tmp_path)]).training.hub_private_repo is True
