"""The front-door training recipe behind ``recipes/train_pcgrad.py`` and ``hf-multitask train``.

``accelerate launch recipes/train_pcgrad.py [--config recipes/configs/X.yaml] [--key value ...]``
(or plain ``python``, or ``hf-multitask train ...``). One parser (`parser`) reads every
dataclass of `arguments` (the model, the data, the training arguments and one small
dataclass per optional phase), ``--config``, ``--demo`` and ``--traceback``; a YAML config gives
the same keys and command-line flags override it.

The modules, in the order a run uses them: `arguments` and `parser` (what was
asked), `data` (tasks and their rows), `model` (backbone, heads; `continuation` when the
backbone is an earlier run's saved model), `phases` (SimCSE, head pretraining,
intermediate-task transfer, LP, multitask training, specialisation, each saying whether it
runs), `outputs` (``best/``, metrics, predictions, Hub push; the ensemble mode) and `run`
(``run`` and ``main``).
"""

from .arguments import (
    DataArguments,
    DistillationArguments,
    EnsembleArguments,
    HeadPretrainArguments,
    IntermediateArguments,
    LPFTArguments,
    ModelArguments,
    RecipeArguments,
    RecipeError,
    RecipeTrainingArguments,
    SimCSEArguments,
    SmartArguments,
    SpecialiseArguments,
)
from .data import build_tasks, encode_data, load_raw_data
from .model import check_max_length, load_model, resolve_backbone
from .outputs import run_ensemble
from .parser import DEMO_DEFAULTS, RecipeParser, load_config, parse_args
from .phases import Phase, RecipeContext
from .run import PHASES, _claim_output_dir, _OutputDirLock, main, resume_setting, run

__all__ = [
    "DEMO_DEFAULTS",
    "PHASES",
    "DataArguments",
    "EnsembleArguments",
    "HeadPretrainArguments",
    "IntermediateArguments",
    "LPFTArguments",
    "ModelArguments",
    "Phase",
    "RecipeArguments",
    "RecipeContext",
    "RecipeError",
    "RecipeParser",
    "RecipeTrainingArguments",
    "SimCSEArguments",
    "SmartArguments",
    "SpecialiseArguments",
    "DistillationArguments",
    "build_tasks",
    "check_max_length",
    "encode_data",
    "load_config",
    "load_model",
    "load_raw_data",
    "main",
    "parse_args",
    "resolve_backbone",
    "resume_setting",
    "run",
    "run_ensemble",
    "_OutputDirLock",
    "_claim_output_dir",
]
