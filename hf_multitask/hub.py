"""Model cards and pushing trained checkpoints to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData

from .configuration import MultitaskConfig
from .metrics import METRIC_DISPLAY
from .tasks import metric_groups

__all__ = ["make_model_card", "save_for_hub", "push_to_hub", "upload_folder"]

_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A multitask model trained with [hf-multitask](https://pypi.org/project/hf-multitask/): one shared
`{{ encoder_type }}` encoder{% if base_model %} (from `{{ base_model }}`){% endif %} with one head per task.

## Tasks

| task | kind | labels | text columns | metric |
|---|---|---|---|---|
{% for t in tasks -%}
| `{{ t.name }}` | {{ t.kind }} | {{ t.num_labels }} | {{ t.text_columns | join(", ") }} | {{ t.metric }} |
{% endfor %}
## Results
{% if metrics_rows %}
| task | metric | value |
|---|---|---|
{% for row in metrics_rows -%}
| {{ row[0] }} | {{ row[1] }} | {{ row[2] }} |
{% endfor %}{% if overall is not none %}
Overall score (mean of per-task scores in [0, 1], correlations as (r + 1) / 2): **{{ overall }}**
{% endif %}{% else %}
No evaluation results were recorded.
{% endif %}
## Training

{{ training }}

## How to use

```python
from transformers import pipeline

pipe = pipeline(model="{{ repo_id }}", trust_remote_code=True)  # the pipeline code ships with the model
pipe("a gripping, funny film")  # every one-sentence task answers: {task: {"label": ..., "score": ...}, ...}
pipe([("a man plays", "someone is playing")], batch_size=8)  # sentence pairs go to the pair tasks
pipe({"{{ first_task }}": "a gripping, funny film"})  # or name the tasks and give each its input
```

With `hf_multitask` installed, `pipeline("multitask-text", model="{{ repo_id }}")` builds the
same pipeline from the package.

## How to load

```python
import hf_multitask  # registers the model with AutoModel
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("{{ repo_id }}")
tokenizer = AutoTokenizer.from_pretrained("{{ repo_id }}")
batch = tokenizer(["a gripping, funny film"], return_tensors="pt")
logits = model(task="{{ first_task }}", **batch).logits
```

Without the package installed (only `torch` and `transformers` needed), the model code shipped in
this repository loads the model. Pass `trust_remote_code=True` to the tokenizer too: it reads the
same config, whose model type is this repository's code.

```python
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("{{ repo_id }}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{{ repo_id }}", trust_remote_code=True)
batch = tokenizer(["a gripping, funny film"], return_tensors="pt")
logits = model(task="{{ first_task }}", **batch).logits
```
"""


def make_model_card(
    config: MultitaskConfig,
    repo_id: str,
    metrics: dict[str, float] | None = None,
    *,
    dataset_name: str = "validation split",
    training: str = "",
    license: str = "apache-2.0",
) -> ModelCard:
    """A model card with the tasks, a metrics table and ``model-index`` results in the metadata.

    ``metrics`` are the keys [`hf_multitask.evaluate()`][hf_multitask.predict.evaluate] returns (``{task}_{metric}``,
    ``overall``), optionally prefixed with ``eval_``.
    """
    metrics = {k.removeprefix("eval_"): float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
    specs = config.task_specs
    rows, results = [], []
    by_name = {s.name: s for s in specs}
    # each task, then each metric group's pooled metric (TaskSpec.metric_group), the score that counts in overall
    entries = [(s.name, s.name, s) for s in specs]
    entries += [(group, f"{group} (pooled: {', '.join(members)})", by_name[members[0]]) for group, members in metric_groups(specs).items()]
    for key_name, shown, spec in entries:
        key = f"{key_name}_{spec.metric}"
        if key in metrics:
            value = metrics[key]
            rows.append((shown, spec.metric, f"{value:.4f}"))
            results.append(
                EvalResult(
                    task_type=spec.task_type.card_type,
                    dataset_type=key_name,
                    dataset_name=f"{key_name} ({dataset_name})",
                    metric_type=METRIC_DISPLAY.get(spec.metric, spec.metric),
                    metric_name=f"{key_name} {spec.metric}",
                    metric_value=value,
                )
            )
    base = getattr(config, "name_or_path", "") or ""
    data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        license=license,
        library_name="transformers",
        tags=["hf-multitask", "multitask", "text-classification"],
        base_model=base if base and not os.path.isabs(base) else None,
        eval_results=results or None,
    )
    return ModelCard.from_template(
        data,
        template_str=_CARD_TEMPLATE,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        encoder_type=config.encoder_config.model_type,
        base_model=base if base and not os.path.isabs(base) else "",
        tasks=specs,
        metrics_rows=rows,
        overall=f"{metrics['overall']:.4f}" if "overall" in metrics else None,
        training=training or "See the hf-multitask recipe used to train it.",
        first_task=specs[0].name,
    )


def save_for_hub(
    model: Any,
    tokenizer: Any,
    folder: str | os.PathLike[str],
    repo_id: str,
    metrics: dict[str, float] | None = None,
    **card_kwargs: Any,
) -> Path:
    """Write everything a Hub repo needs into ``folder``: weights, config, model code
    (for ``trust_remote_code``), tokenizer, ``README.md`` (the card) and ``metrics.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    card = make_model_card(model.config, repo_id, metrics, **card_kwargs)
    card.save(folder / "README.md")
    if metrics:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return folder


def push_to_hub(
    model: Any,
    tokenizer: Any,
    repo_id: str,
    metrics: dict[str, float] | None = None,
    *,
    folder: str | os.PathLike[str] | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload hf-multitask model",
    **card_kwargs: Any,
) -> str:
    """Save the model with a generated card (see [`save_for_hub()`][hf_multitask.hub.save_for_hub]) and upload the folder.

    Returns the commit URL. Needs the network and a write token; with no network the
    error comes from ``huggingface_hub`` and the folder is kept for a later upload
    (``huggingface-cli upload REPO_ID FOLDER``).
    """
    import tempfile

    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="hf-multitask-push-"))
    save_for_hub(model, tokenizer, folder, repo_id, metrics, **card_kwargs)
    return upload_folder(folder, repo_id, private=private, token=token, commit_message=commit_message)


def upload_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload hf-multitask model",
) -> str:
    """Upload a folder written by [`save_for_hub()`][hf_multitask.hub.save_for_hub] to ``repo_id`` (created if missing) in
    one commit; returns the commit URL."""
    folder = Path(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(folder).as_posix(), path_or_fileobj=str(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    ]
    info = api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message, repo_type="model")
    return str(getattr(info, "commit_url", info))
