"""Model cards and pushing trained checkpoints to the Hugging Face Hub."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData

from .metrics import METRIC_DISPLAY
from .tasks import metric_groups

__all__ = ["describe_architecture", "make_model_card", "push_to_hub", "remote_code_requirements", "save_for_hub", "upload_folder"]

_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A multitask model trained with [hf-multitask](https://pypi.org/project/hf-multitask/): {{ summary }}

## Architecture

{% for line in architecture -%}
- {{ line }}
{% endfor %}
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

Without the package, the model code shipped in this repository loads it; it needs only
{{ requirements_text }} (`pip install {{ requirements | join(" ") }}`). Pass `trust_remote_code=True`
to the tokenizer too: it reads the same config, whose model type is this repository's code.

```python
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("{{ repo_id }}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{{ repo_id }}", trust_remote_code=True)
batch = tokenizer(["a gripping, funny film"], return_tensors="pt")
logits = model(task="{{ first_task }}", **batch).logits
```
"""


def _config_of(config: Any) -> Any:
    """The multitask config holding the tasks (a routed model's shared expert config)."""
    return getattr(config, "expert_config", None) or config


def _expert_configs(config: Any) -> dict[str, Any]:
    """``{expert: config}`` of a routed config, or ``{"": config}`` for a plain multitask config."""
    if getattr(config, "expert_config", None) is None:
        return {"": config}
    return {name: config.config_of(name) for name in config.experts}


def remote_code_requirements(config: Any) -> list[str]:
    """The packages a saved model needs to load and run without ``hf_multitask`` installed
    (``trust_remote_code=True``): ``torch`` and ``transformers``, and ``peft`` for LoRA adapters.
    The shipped code imports nothing else outside a guard (tested against transformers' own check)."""
    needs = ["torch", "transformers"]
    if any(c.lora for c in _expert_configs(config).values()):
        needs.append("peft")
    return needs


def _modules(config: Any) -> list[str]:
    """One line each for the task-specific modules (PALs, LoRA) of a multitask config."""
    lines = []
    if config.pal_tasks:
        shared = "shared across layers" if config.pal_shared_projections else "per layer"
        lines.append(f"Projected attention layers (PALs; rank {config.pal_rank}, {config.pal_heads} heads, projections {shared}) for "
                     f"{_tasks(config.pal_tasks)}: a task's encoder pass runs its own PALs")  # fmt: skip
    if config.lora:
        lora = config.lora
        where = f"r {lora['r']}, alpha {lora['alpha']}, on {', '.join(lora['target_modules'])}"
        if lora.get("per_task"):
            owners = lora.get("tasks") or config.task_names
            lines.append(f"LoRA adapters ({where}), one per task for {_tasks(owners)}: a task's encoder pass runs its own adapter")
        else:
            lines.append(f"One LoRA adapter ({where}) shared by every task")
    return lines


def _tasks(names: list[str]) -> str:
    return ", ".join(f"`{t}`" for t in names)


def describe_architecture(config: Any, parameters: dict[str, int] | None = None) -> tuple[str, list[str]]:
    """(a one-sentence summary, the card's architecture lines) of a
    [`MultitaskConfig`][hf_multitask.configuration.MultitaskConfig] or a routed model's config:
    encoders in memory, the task-specific modules (PALs, LoRA, routed experts), and, given the
    model's ``parameter_counts()``, the parameters in memory and what trains."""
    base = _config_of(config)
    encoder = base.encoder_config.model_type
    heads = f"`{base.head_type}` heads, `{base.pooling}` pooling"
    experts = _expert_configs(config)
    if "" in experts:
        summary = f"one shared `{encoder}` encoder with one head per task."
        lines = [f"One `{encoder}` encoder in memory, shared by every task; one head per task ({heads})", *_modules(base)]
        own = base.pal_tasks or (base.lora or {}).get("per_task")
        passes = ("a request for one task runs one encoder pass; a batch that mixes tasks runs one pass per task with modules of "
                  "its own and one shared pass for the others") if own else "one encoder pass answers every single-text task"  # fmt: skip
    else:
        summary = f"{len(experts)} `{encoder}` encoders behind one model, each task routed to one of them."
        special = [t for t in config.specialised_tasks]
        own = "runs a specialised copy of its own" if len(special) == 1 else "each run a specialised copy of their own"
        lines = [f"{len(experts)} encoders in memory (routed experts): {_tasks(special)} {own}"
                 + ("; the other tasks run the shared multitask model" if "multitask" in experts else "")]  # fmt: skip
        # the shared expert always (its settings are said nowhere else), the others when they differ from it
        for name, own_config in experts.items():
            extra = _modules(own_config)
            if name == "multitask" or extra or own_config.pooling != base.pooling or own_config.head_type != base.head_type:
                lines.append(f"Expert `{name}`{' (the shared multitask model)' if name == 'multitask' else ''}: `{own_config.head_type}` heads, "
                             f"`{own_config.pooling}` pooling" + (f"; {'; '.join(extra)}" if extra else ""))  # fmt: skip
        passes = "a request for one task runs one encoder pass (its expert's); a batch that mixes tasks runs one pass per expert it needs"
    lines.append(f"Encoder passes: {passes}")
    if parameters:
        lines.append(f"Parameters in memory: {parameters['total']:,}")
        if parameters.get("trainable") not in (None, parameters["total"]):
            lines.append(f"Parameters that train (as the model was saved): {parameters['trainable']:,}")
        parts = [f"{k} {parameters[k]:,}" for k in ("encoder", "heads", "pals", "lora") if parameters.get(k)]
        if parts:
            lines.append(f"Of which: {', '.join(parts)}")
    return summary, lines


def make_model_card(
    config: Any,
    repo_id: str,
    metrics: dict[str, float] | None = None,
    *,
    dataset_name: str = "validation split",
    training: str = "",
    license: str = "apache-2.0",
    parameters: dict[str, int] | None = None,
) -> ModelCard:
    """A model card: the architecture (encoders in memory, PALs, LoRA, routed experts, encoder
    passes per request, and with ``parameters`` (``model.parameter_counts()``) the parameter
    counts), the tasks, a metrics table with ``model-index`` results in the metadata, and how to
    load it with and without the package (with the packages that needs).

    ``metrics`` are the keys [`hf_multitask.evaluate()`][hf_multitask.predict.evaluate] returns (``{task}_{metric}``,
    ``overall``), optionally prefixed with ``eval_`` or ``test_`` (when both are given, the
    ``eval_`` ones).
    """
    metrics = _unprefixed(metrics or {})
    base = _config_of(config)
    specs = base.task_specs
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
    name_or_path = getattr(config, "name_or_path", "") or getattr(base, "name_or_path", "") or ""
    shown_base = name_or_path if name_or_path and not os.path.isabs(name_or_path) else None
    data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        license=license,
        library_name="transformers",
        tags=["hf-multitask", "multitask", "text-classification"],
        base_model=shown_base,
        eval_results=results or None,
    )
    summary, architecture = describe_architecture(config, parameters)
    needs = remote_code_requirements(config)
    if shown_base:
        architecture.insert(1, f"Encoder weights from `{shown_base}`")
    return ModelCard.from_template(
        data,
        template_str=_CARD_TEMPLATE,
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        summary=summary,
        architecture=architecture,
        tasks=specs,
        metrics_rows=rows,
        overall=f"{metrics['overall']:.4f}" if "overall" in metrics else None,
        training=training or "See the hf-multitask recipe used to train it.",
        first_task=specs[0].name,
        requirements=needs,
        requirements_text=", ".join(f"`{n}`" for n in needs[:-1]) + f" and `{needs[-1]}`",
    )


def _unprefixed(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric metrics without their ``eval_`` / ``test_`` prefix (``eval_`` first when both are there)."""
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for prefix in ("eval_", "test_"):
        found = {k.removeprefix(prefix): v for k, v in numeric.items() if k.startswith(prefix)}
        if found:
            return found
    return numeric


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
    counts = model.parameter_counts() if hasattr(model, "parameter_counts") else None
    card = make_model_card(model.config, repo_id, metrics, **{"parameters": counts, **card_kwargs})
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
