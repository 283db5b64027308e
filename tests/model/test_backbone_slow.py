"""The real packaged MiniLM backbone on a few real rows of ../shared/data."""

import pytest
import torch
from conftest import REPO
from transformers import AutoTokenizer

import hf_multitask as hm


@pytest.mark.slow
def test_packaged_minilm_forward_on_shared_data(shared_data):
    path = hm.default_backbone()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = hm.MultitaskModel.from_encoder(path, tasks=hm.reference_tasks(), pair_encoding="cross").eval()
    assert model.config.encoder_config.hidden_size == 384 and model.config.encoder_config.num_hidden_layers == 6
    files = {"sst": "ids-sst-train.csv", "quora": "quora-train.csv", "sts": "sts-train.csv"}
    for spec in model.config.task_specs:
        ds = hm.load_task_data(spec, shared_data / files[spec.name], limit=8)
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


@pytest.mark.slow
def test_front_door_command_on_the_packaged_backbone(tmp_path, shared_data):
    """The README's front door: `accelerate launch recipes/train_pcgrad.py --data-dir ../shared/data --max-steps 20`."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from transformers import AutoModel

    root = REPO
    accelerate = Path(sys.executable).with_name("accelerate")
    out = tmp_path / "run"
    cmd = [str(accelerate), "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "recipes/train_pcgrad.py", "--data-dir", str(shared_data), "--max-steps", "20", "--output-dir", str(out)]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 < metrics["eval_overall"] < 1.0 and metrics["train_examples"] == 20 * 3 * 32
    model = AutoModel.from_pretrained(out / "best")
    assert isinstance(model, hm.MultitaskModel) and model.config.encoder_config.hidden_size == 384
    for task in ("sst", "quora", "sts"):
        lines = (out / "predictions" / f"{task}-dev-output.csv").read_text().splitlines()
        assert len(lines) > 500 and lines[1].count(" , ") == 1


@pytest.mark.slow
def test_demo_command_runs_as_written_on_a_machine_without_shared(tmp_path):
    """The README's first command after setup, `accelerate launch recipes/train_pcgrad.py --demo`,
    in a fresh folder that has the recipes but no ../shared beside it."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from transformers import AutoModel

    root = REPO
    readme = (root / "README.md").read_text()
    command = "accelerate launch recipes/train_pcgrad.py --demo"
    assert readme.index(command) < readme.index("--data-dir ../shared/data"), "the demo is the first command after setup"
    work = tmp_path / "fresh"
    shutil.copytree(root / "recipes", work / "recipes")
    assert not (work.parent / "shared").exists()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    proc = subprocess.run(command.split(), cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = work / "outputs" / "demo"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["eval_overall"] <= 1.0 and metrics["train_steps_sst"] > 0
    assert isinstance(AutoModel.from_pretrained(out / "best"), hm.MultitaskModel)
    assert (out / "conflicts.png").is_file()
    for task in ("sst", "quora", "sts"):
        assert len((out / "predictions" / f"{task}-dev-output.csv").read_text().splitlines()) == 1 + 10


def _readme_section_code(title: str) -> list[str]:

    readme = (REPO / "docs" / "guides" / "tasks.md").read_text()
    start = readme.index(f"\n## {title}\n")
    end = readme.index("\n## ", start + 1)
    blocks = readme[start:end].split("```python\n")[1:]
    return [b.split("```")[0] for b in blocks]


@pytest.mark.slow
def test_readme_task_type_snippets_run(shared_data, monkeypatch, capsys):
    """Every runnable snippet of the README's "Task types" section (the registration sketch,
    with its `...`, excepted) runs as written from the repository root."""
    from pathlib import Path

    monkeypatch.chdir(REPO)
    assert (Path("..") / "shared" / "data").resolve() == shared_data.resolve()
    snippets = [code for code in _readme_section_code("Task types") if "..." not in code]
    assert len(snippets) == 3
    for code in snippets:
        exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "senti_accuracy" in printed and "qa_accuracy" in printed and "'" in printed
