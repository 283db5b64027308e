"""What the front door does with bad settings: one clear line from ``main()``, no traceback, nothing trained."""

import json

import pytest
import torch
import yaml
from conftest import recipe_flags, write_tsv

import hf_multitask as hm
from hf_multitask.recipe import ModelArguments, load_model, main, parse_args, run


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("hf-multitask: error:")]
    assert len(lines) == 1, err[-2000:]
    return err


def test_yaml_syntax_error_names_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "broken.yaml"
    config.write_text("aggregator: pcgrad\nlearning_rate: [1e-4\n")
    err = _fails(["--config", str(config)], capsys)
    assert "broken.yaml: line 3, column 1: invalid YAML" in err and "<unicode string>" not in err


def test_unknown_config_key_is_named(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("aggregatr: pcgrad\n")
    assert "c.yaml: unknown setting(s) ['aggregatr']" in _fails(["--config", str(config)], capsys)


def test_config_equals_form_is_honoured(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("aggregator: cagrad\ntasks: [sts]\n")
    parsed = parse_args([f"--config={config}", "--output_dir", str(tmp_path)])
    assert parsed.training.aggregator == "cagrad" and parsed.data.tasks == ["sts"]


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--train_limits", '{"sst": 8', "--train_limits: not valid JSON"),
        ("--aggregator_kwargs", "{'c': 0.5}", "--aggregator_kwargs: not valid JSON"),
        ("--task_pair_encodings", "[sts", "--task_pair_encodings: not valid JSON"),
        ("--train_limits", '{"sst": 0}', "--train_limits: the limit of task 'sst' must be a positive whole number of rows, got 0"),
        ("--custom_tasks", '"topic"', "--custom_tasks: expected a list of task mappings"),
        ("--max_length", "0", "--max_length must be a positive number of tokens, got 0"),
    ],
)
def test_malformed_flag_values_name_the_flag(flag, value, message, tmp_path, capsys):
    assert message in _fails([flag, value, "--output_dir", str(tmp_path / "out")], capsys)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--aggregator", "pcgard"], "--aggregator: unknown aggregator 'pcgard'; choose from"),
        (["--schedule", "round-robin"], "--schedule: unknown schedule 'round-robin'; choose from"),
        (["--aggregator", "cagrad", "--aggregator_kwargs", '{"alpha": 1}'], "do not fit aggregator 'cagrad'"),
    ],
)
def test_method_names_are_checked_before_any_data_is_read(flags, message, tmp_path, capsys):
    # the data folder does not exist: the name error must come first
    err = _fails([*flags, "--data-dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")], capsys)
    assert message in err and "nowhere" not in err


def test_max_length_beyond_the_encoders_positions(tiny_backbone, tiny_data, tmp_path, capsys):
    err = _fails([*recipe_flags(tiny_backbone, tiny_data, tmp_path / "out"), "--max_length", "1024"], capsys)
    assert "--max_length 1024 does not fit the encoder (bert)" in err and "between 1 and 128" in err
    assert not (tmp_path / "out" / "best").exists()


def test_fp16_on_cpu_is_refused(tiny_backbone, tiny_data, tmp_path, capsys):
    err = _fails([*recipe_flags(tiny_backbone, tiny_data, tmp_path / "out"), "--fp16", "true"], capsys)
    assert "--fp16 needs a CUDA GPU" in err and "--bf16" in err


def test_missing_data_file_is_one_line(tiny_backbone, tmp_path, capsys):
    err = _fails([*recipe_flags(tiny_backbone, tmp_path, tmp_path / "out")], capsys)
    assert "No such data file" in err and "ids-sst-train.csv" in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="unknown aggregator"):
        main(["--aggregator", "nope", "--output_dir", str(tmp_path), "--debug"])


def _topic_files(folder):
    rows = [[f"x{i}", f"{['good', 'bad', 'fun'][i % 3]} story {i}", i % 3] for i in range(30)]
    write_tsv(folder / "topic-train.tsv", ["id", "text", "topic"], rows, cs224n=False)
    write_tsv(folder / "topic-dev.tsv", ["id", "text", "topic"], rows[:7], cs224n=False)


def test_custom_tasks_only_as_a_mapping_with_files_in_the_data_dir(tiny_backbone, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _topic_files(data)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"tasks": [], "custom_tasks": {"topic": {"kind": "classification", "num_labels": 3,
        "text_columns": ["text"], "label_column": "topic", "train_file": "topic-train.tsv", "validation_file": "topic-dev.tsv"}}}))  # fmt: skip
    out = tmp_path / "out"
    metrics = run(["--config", str(config), *recipe_flags(tiny_backbone, data, out)])
    assert metrics["train_steps_topic"] == 3 and "eval_topic_accuracy" in metrics
    assert len((out / "predictions" / "topic-dev-output.csv").read_text().splitlines()) == 1 + 7, "the validation file, not a split"


def test_backbone_can_be_an_earlier_runs_best_model(tiny_backbone, tiny_data, tmp_path):
    first = tmp_path / "first"
    run(recipe_flags(tiny_backbone, tiny_data, first))
    trained = hm.MultitaskModel.from_pretrained(first / "best")
    topic = hm.TaskSpec(name="topic", kind="classification", num_labels=3, text_columns=("text",), label_column="topic")
    model, _ = load_model(ModelArguments(backbone=str(first / "best")), [*hm.reference_tasks(), topic])
    assert model.task_names == ["sst", "quora", "sts", "topic"]
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), f"{name} is kept from the trained model"
    metrics = run([*recipe_flags(first / "best", tiny_data, tmp_path / "second"), "--max-steps", "2"])
    assert "eval_overall" in metrics
    with pytest.raises(ValueError, match="its task 'sts' is .* but this run defines it as"):
        load_model(
            ModelArguments(backbone=str(first / "best")), [hm.TaskSpec(name="sts", kind="regression", num_labels=1, text_columns=("a",))]
        )


def test_failed_hub_push_says_the_results_are_kept(tiny_backbone, tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    err = _fails([*recipe_flags(tiny_backbone, tiny_data, out), "--push_to_hub_repo", "me/run"], capsys)
    assert "pushing to the Hub repo 'me/run' failed" in err and f"{out / 'best'} and {out / 'metrics.json'}" in err
    assert "hf_multitask.hub.upload_folder" in err
    assert (out / "best" / "model.safetensors").is_file() and json.loads((out / "metrics.json").read_text())["eval_overall"] >= 0


def test_a_running_output_dir_is_locked_and_old_checkpoints_need_overwrite(tiny_backbone, tiny_data, tmp_path, capsys):
    from hf_multitask.recipe import _OutputDirLock

    out = tmp_path / "out"
    held = _OutputDirLock(out).acquire()
    try:
        assert "is in use by another run" in _fails(recipe_flags(tiny_backbone, tiny_data, out), capsys)
    finally:
        held.release()
    flags = [
        *recipe_flags(tiny_backbone, tiny_data, out),
        "--save_strategy",
        "steps",
        "--save_steps",
        "3",
        "--load_best_model_at_end",
        "false",
    ]
    run(flags)
    assert (out / "checkpoint-3").is_dir()
    assert "already holds checkpoints of another run (checkpoint-3)" in _fails(flags, capsys)
    marker = out / "checkpoint-3" / "multitask_complete.json"
    before = marker.stat().st_mtime_ns
    run([*flags, "--overwrite_output_dir", "true"])
    assert marker.stat().st_mtime_ns != before, "the earlier run's checkpoint was replaced"


def test_traceback_flag_shows_the_traceback_and_debug_with_a_value_stays_transformers(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown aggregator"):
        main(["--aggregator", "nope", "--output_dir", str(tmp_path), "--traceback"])
    # TrainingArguments' own --debug takes a value; it is not our traceback flag
    err = _fails(["--aggregator", "nope", "--output_dir", str(tmp_path), "--debug", "underflow_overflow"], capsys)
    assert "unknown aggregator" in err


def test_hf_multitask_train_is_the_recipe_and_its_help_lists_every_flag(capsys):
    import dataclasses

    from hf_multitask.cli import main as cli
    from hf_multitask.recipe.arguments import ARGUMENT_CLASSES

    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: hf-multitask train")
    flags = {f.name for dc in ARGUMENT_CLASSES for f in dataclasses.fields(dc) if f.init}
    missing = sorted(f for f in flags if f"--{f}" not in text)
    assert not missing, missing
    assert "--config" in text and "--traceback" in text and "--lp_steps" in text and "--intermediate_steps" in text
    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--aggregator", "nope"])
    assert exit_info.value.code == 2 and "unknown aggregator" in capsys.readouterr().err


def test_an_ensemble_whose_members_read_their_inputs_differently_is_refused(tiny_data, tokenizer, tmp_path):
    """The ensemble encodes the inputs once, with the first member's tokenizer and pair encoding:
    members that tokenise or encode pairs otherwise would score other inputs than they were given."""
    from conftest import VOCAB, tiny_model
    from transformers import BertTokenizerFast

    from hf_multitask.recipe import RecipeError

    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB[:5] + VOCAB[5:][::-1]) + "\n")  # the same tokens, other ids
    shuffled = BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"), do_lower_case=True)
    members = {"a": (tiny_model(), tokenizer), "bi": (tiny_model(seed=1, pair_encoding="bi"), tokenizer),
               "other_ids": (tiny_model(seed=2), shuffled)}  # fmt: skip
    for name, (model, tok) in members.items():
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    flags = ["--data-dir", str(tiny_data), "--output-dir", str(tmp_path / "out"), "--disable_tqdm", "true"]
    with pytest.raises(RecipeError, match=r"--ensemble: .*encode task 'quora'.s pairs differently"):
        run(["--ensemble", str(tmp_path / "a"), str(tmp_path / "bi"), *flags])
    with pytest.raises(RecipeError, match=r"--ensemble: .*other_ids has another tokenizer"):
        run(["--ensemble", str(tmp_path / "a"), str(tmp_path / "other_ids"), *flags])


def test_demo_in_a_config_sizes_the_run_as_the_demo_flag_does(tmp_path):
    """`demo: true` in YAML loaded the demo data but kept the full-run sizes (output folder, epochs,
    batch size, validation fraction) that --demo sets; the config's own values and flags still win."""
    from hf_multitask.recipe import DEMO_DEFAULTS

    config = tmp_path / "c.yaml"
    config.write_text("demo: true\n")
    by_config, by_flag = parse_args(["--config", str(config)]), parse_args(["--demo"])
    for key, value in DEMO_DEFAULTS.items():
        where = by_config.data if key == "validation_fraction" else by_config.training
        assert getattr(where, key) == value == getattr(by_flag.data if key == "validation_fraction" else by_flag.training, key), key
    config.write_text("demo: true\nnum_train_epochs: 1\n")
    assert parse_args(["--config", str(config), "--per_device_train_batch_size", "2"]).training.num_train_epochs == 1.0
    assert parse_args(["--config", str(config), "--demo", "false"]).training.output_dir == "outputs/run", "the flag beats the config"


def test_a_reused_parser_forgets_the_last_parses_config_and_demo(tmp_path):
    from hf_multitask.recipe import RecipeParser

    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 0.5\naggregator: gradvac\n")
    parser = RecipeParser()
    fresh = parser.parse([])[0]
    assert parser.parse(["--config", str(config)])[0].training.learning_rate == 0.5
    assert parser.parse(["--demo"])[0].training.output_dir == "outputs/demo"
    again = parser.parse([])[0]
    assert (again.training.learning_rate, again.training.aggregator, again.training.output_dir) == (1e-4, "pcgrad", "outputs/run")
    assert again == fresh and again.training.length_grouping is True and again.training.load_best_model_at_end is True
