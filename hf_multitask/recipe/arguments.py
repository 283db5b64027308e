"""The recipe's arguments: one dataclass per concern, all parsed by one ``HfArgumentParser``.

[`ModelArguments`][hf_multitask.recipe.arguments.ModelArguments] (the model), [`DataArguments`][hf_multitask.recipe.arguments.DataArguments] (the data), [`RecipeTrainingArguments`][hf_multitask.recipe.arguments.RecipeTrainingArguments]
(``MultitaskTrainingArguments`` with the recipe's defaults and its outputs), and one small
dataclass per optional phase: [`SimCSEArguments`][hf_multitask.recipe.arguments.SimCSEArguments], [`HeadPretrainArguments`][hf_multitask.recipe.arguments.HeadPretrainArguments],
[`IntermediateArguments`][hf_multitask.recipe.arguments.IntermediateArguments], [`LPFTArguments`][hf_multitask.recipe.arguments.LPFTArguments], [`SmartArguments`][hf_multitask.recipe.arguments.SmartArguments],
[`SpecialiseArguments`][hf_multitask.recipe.arguments.SpecialiseArguments], [`EnsembleArguments`][hf_multitask.recipe.arguments.EnsembleArguments] and [`DistillationArguments`][hf_multitask.recipe.arguments.DistillationArguments]. Every flag keeps its name; a YAML
``--config`` gives the same keys.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..training_args import MultitaskTrainingArguments, json_flag
from ..tweeteval import TWEETEVAL_TASKS

BENCHMARKS = {"tweeteval": TWEETEVAL_TASKS}  # --benchmark: its tasks


class RecipeError(ValueError):
    """A recipe setting that cannot work; [`main()`][hf_multitask.recipe.run.main] prints it as one line and exits non-zero."""


def _json_arg(value: Any, flag: str) -> Any:
    """[`json_flag()`][hf_multitask.training_args.json_flag], its error a [`RecipeError`][hf_multitask.recipe.arguments.RecipeError]."""
    try:
        return json_flag(value, flag)
    except ValueError as err:
        raise RecipeError(str(err)) from None


@dataclass
class ModelArguments:
    """The model: backbone, pair encoding and heads."""

    backbone: str = field(default="packaged", metadata={"help": "'packaged' (the offline MiniLM), a local model folder or a Hub id"})
    # None: not given (the default below, or what a --backbone multitask checkpoint has, see recipe.model.load_model)
    pair_encoding: str | None = field(default=None, metadata={"help": "cross (default), bi or cosine"})
    task_pair_encodings: dict | str | None = field(default=None, metadata={"help": 'Per-task pair encoding, e.g. {"sts": "cosine"}'})
    head_type: str | None = field(default=None, metadata={"help": "linear (default), mlp or lstm (an LSTM over token states plus [CLS])"})
    head_hidden_sizes: list[int] | None = field(default=None, metadata={"help": "Hidden sizes of the MLP heads (default none)"})
    head_dropout: float | None = field(default=None, metadata={"help": "Dropout before every head layer (default 0.1)"})
    pooling: str | None = field(default=None, metadata={"help": "cls (default) or mean"})
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
        from ..tasks import PAIR_ENCODINGS

        self.task_pair_encodings = _json_arg(self.task_pair_encodings, "task_pair_encodings")
        encodings = self.task_pair_encodings
        if encodings is not None and not (isinstance(encodings, dict) and all(v in PAIR_ENCODINGS for v in encodings.values())):
            raise RecipeError(f"--task_pair_encodings: expected a mapping {{task: one of {list(PAIR_ENCODINGS)}}}, got {encodings!r}")


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
    stance: str = field(
        default="pair",
        metadata={"help": "With --benchmark tweeteval: 'pair' (stance is one task, the target as the pair's first text) or "
                  "'targets' (five tasks stance_<target>, one head each, scored pooled as the official stance metric)"},
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
        if self.stance not in ("pair", "targets"):
            raise RecipeError(f"--stance must be 'pair' or 'targets', got {self.stance!r}")
        if self.max_length < 1:
            raise RecipeError(f"--max_length must be a positive number of tokens, got {self.max_length} (it counts the special tokens)")


@dataclass
class RecipeTrainingArguments(MultitaskTrainingArguments):
    """MultitaskTrainingArguments with the recipe's defaults, and what the run writes."""

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
    push_to_hub_repo: str | None = field(
        default=None,
        metadata={"help": "Push the best model once, at the end, with its model card, to this Hub repo id (private with "
                  "--hub_private_repo). Unlike the Trainer's --push_to_hub, no checkpoint is pushed during training"},
    )  # fmt: skip
    hub_private: bool = field(default=False, metadata={"help": "Deprecated alias of the Trainer's --hub_private_repo"})
    write_predictions: bool = True
    test_predictions: bool = field(
        default=True,
        metadata={"help": "With --benchmark and --data-dir: write the official test prediction files of the best model to "
                  "predictions/test/ ({task}.txt, stance/{target}.txt); with --primary_tasks, the primary tasks' only"},
    )  # fmt: skip
    plot_telemetry: bool = True
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete the checkpoints another run left in --output_dir instead of refusing to start"}
    )

    def __post_init__(self) -> None:
        if self.hub_private:  # a duplicate of the Trainer's own field: one name for one setting
            warnings.warn("--hub_private is an alias of the Trainer's --hub_private_repo, and will go: use --hub_private_repo",
                          FutureWarning, stacklevel=3)  # fmt: skip
            self.hub_private_repo, self.hub_private = True, False  # cleared: phases copy these arguments
        super().__post_init__()


@dataclass
class SimCSEArguments:
    """Unsupervised SimCSE on the tasks' own sentences, before anything else."""

    simcse_steps: int = field(default=0, metadata={"help": "Unsupervised SimCSE steps on the tasks' own sentences before training"})
    simcse_learning_rate: float = 3e-5


@dataclass
class HeadPretrainArguments:
    """Per-task head pretraining: each head alone on a frozen encoder, keeping its best."""

    head_pretrain_steps: int = field(
        default=0, metadata={"help": "Per-task head pretraining: frozen-encoder steps for each task alone, keeping its best head"}
    )
    head_pretrain_learning_rate: float = 1e-3
    head_pretrain_eval_steps: int = field(default=0, metadata={"help": "Per-task head pretraining: evaluate every N steps (0: steps/4)"})


@dataclass
class IntermediateArguments:
    """Intermediate-task transfer (STILTs): the auxiliary tasks first, then the primary ones."""

    intermediate_steps: int = field(
        default=0,
        metadata={"help": "Intermediate-task transfer (STILTs): train this many steps on the auxiliary tasks (all but "
                  "--primary_tasks) first; the main run then trains the primary tasks only"},
    )  # fmt: skip
    intermediate_learning_rate: float | None = field(
        default=None, metadata={"help": "Intermediate-task transfer: learning rate of the auxiliary phase (default --learning_rate)"}
    )


@dataclass
class LPFTArguments:
    """LP-FT: a head-only (linear probing) phase before full fine-tuning."""

    lp_steps: int = field(default=0, metadata={"help": "LP-FT: train only the heads (encoder frozen) for this many steps first"})
    lp_learning_rate: float = field(default=1e-3, metadata={"help": "LP-FT: learning rate of the head-only phase"})


@dataclass
class SmartArguments:
    """SMART: smoothness-inducing adversarial regularisation with a Bregman proximal term."""

    smart_lambda_s: float = field(default=0.0, metadata={"help": "SMART adversarial weight lambda_s (0: off)"})
    smart_mu: float = field(default=1.0, metadata={"help": "SMART Bregman proximal weight mu"})
    smart_epsilon: float = 1e-5
    smart_step_size: float = 1e-3
    smart_steps: int = 1


@dataclass
class SpecialiseArguments:
    """Two-step specialisation: after multitask training, one fine-tuned copy per task, routed."""

    specialise_steps: int = field(
        default=0, metadata={"help": "Two-step specialisation: after multitask training, fine-tune one copy per task for this many steps"}
    )
    specialise_learning_rate: float = field(default=3e-5, metadata={"help": "Two-step specialisation: learning rate"})
    specialise_fresh_heads: bool = field(default=False, metadata={"help": "Two-step specialisation: re-initialise each task's head"})
    specialise_tasks: list[str] = field(default_factory=list, metadata={"help": "Two-step specialisation: only these tasks (default all)"})
    specialise_keep: str = field(
        default="all",
        metadata={
            "help": "Two-step specialisation: which experts the served model keeps: 'all'; 'better' (a task keeps its expert only "
            "where the expert's validation score beats the multitask model's on that task; a metric group decides together; chosen "
            "on the validation set it is scored on, so its score leans high); or the tasks to keep, comma-separated (chosen on other "
            "data, e.g. a tuning split's 'better'). Every expert is trained and scored either way (experts_eval_*)"
        },
    )
    specialise_form: str = field(
        default="encoder",
        metadata={
            "help": "Two-step specialisation: what each task's expert changes: 'encoder' (a whole fine-tuned copy per task, served "
            "routed: one encoder per kept expert), 'pal' or 'lora' (only its own zero-initialised PALs or LoRA adapter and its head: "
            "one backbone in memory; PAL heads/projections from --pal_heads/--pal_shared_projections, LoRA alpha/targets from "
            "--lora_alpha/--lora_targets)",
            "choices": ["encoder", "pal", "lora"],
        },
    )
    specialise_rank: int = field(
        default=0, metadata={"help": "Two-step specialisation, forms pal and lora: the PAL rank or LoRA r (0: --pal_rank, or r 8)"}
    )

    def keep_mode(self) -> str | list[str]:
        """``"all"``, ``"better"``, or the list of tasks to keep."""
        if self.specialise_keep in ("all", "better"):
            return self.specialise_keep
        return [t.strip() for t in self.specialise_keep.split(",") if t.strip()]


@dataclass
class DistillationArguments:
    """Multitask distillation from single-task teachers (BAM!, [`hf_multitask.distillation`][hf_multitask.distillation]);
    the gold weight and temperature are training arguments (``--distillation_gold_weight``,
    ``--distillation_temperature``)."""

    teachers: dict | str | None = field(
        default=None,
        metadata={
            "help": 'Distillation: {task: saved model folder} as JSON (\'{"emoji": "runs/emoji/best"}\') or a YAML/JSON file of it; '
            "each teacher's outputs over its task's training data are computed once and cached; tasks without one train on gold"
        },  # fmt: skip
    )
    teacher_cache: str | None = field(
        default=None, metadata={"help": "Distillation: folder of the cached teacher outputs (default OUTPUT_DIR/teacher_outputs)"}
    )

    def __post_init__(self) -> None:
        self.teachers = teachers_mapping(self.teachers)


def teachers_mapping(value: Any) -> dict[str, str] | None:
    """``--teachers``: a mapping, its JSON text, or the path of a YAML/JSON file holding it."""
    if value is None or isinstance(value, dict):
        mapping = value
    elif str(value).strip().startswith("{") or not str(value).strip():
        mapping = _json_arg(value, "teachers")
    else:
        import yaml

        from ..reading import read_text

        path = str(value)
        try:
            mapping = yaml.safe_load(read_text(path))
        except yaml.YAMLError as err:
            raise RecipeError(f"--teachers {path}: not valid YAML ({err})") from None
    if mapping is None:
        return None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise RecipeError(f"--teachers must map task names to model folders, got {mapping!r}")
    return mapping


@dataclass
class EnsembleArguments:
    """No training: evaluate and predict with an ensemble of saved checkpoints."""

    ensemble: list[str] = field(
        default_factory=list, metadata={"help": "No training: evaluate and predict with the ensemble of these checkpoint folders"}
    )
    ensemble_vote: str = field(default="mean", metadata={"help": "Ensemble: mean (averaged probabilities) or majority"})


PHASE_ARGUMENTS = (SimCSEArguments, HeadPretrainArguments, IntermediateArguments, LPFTArguments, SmartArguments, SpecialiseArguments,
                   EnsembleArguments, DistillationArguments)  # fmt: skip
ARGUMENT_CLASSES = (ModelArguments, DataArguments, RecipeTrainingArguments, *PHASE_ARGUMENTS)


@dataclass
class RecipeArguments:
    """Everything one run was given: ``model``, ``data``, ``training`` and one object per phase."""

    model: ModelArguments
    data: DataArguments
    training: RecipeTrainingArguments
    simcse: SimCSEArguments
    head_pretrain: HeadPretrainArguments
    intermediate: IntermediateArguments
    lpft: LPFTArguments
    smart: SmartArguments
    specialise: SpecialiseArguments
    ensemble: EnsembleArguments
    distillation: DistillationArguments


def recipe_fields() -> set[str]:
    """Every flag / YAML key of the recipe."""
    return {f.name for dc in ARGUMENT_CLASSES for f in dataclasses.fields(dc) if f.init}
