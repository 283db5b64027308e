"""One parser for the recipe: every dataclass's flags, ``--config``, ``--demo`` and ``--traceback``.

``--config file.yaml`` (or ``--config=file.yaml``) gives defaults and every other flag overrides
them: config values become the parser's defaults, so any value YAML can hold works, including
empty lists (``tasks: []`` for a run of custom tasks only) and nested mappings. ``--demo`` (or
``demo: true`` in the config) sizes the run for the built-in examples (flags and the config
override that too). Every parse starts from the parser's own defaults, so one parser can parse
several command lines. ``--traceback``
(or a bare ``--debug``, which TrainingArguments' own ``--debug <option>`` never is) shows an
error's full traceback instead of one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from ..reading import read_text
from .arguments import ARGUMENT_CLASSES, RecipeArguments, RecipeError, recipe_fields

__all__ = ["DEMO_DEFAULTS", "RecipeParser", "load_config", "parse_args"]

# --demo: a short run sized for a few dozen examples per task (flags and configs override these)
DEMO_DEFAULTS = {"output_dir": "outputs/demo", "num_train_epochs": 3.0, "per_device_train_batch_size": 8, "validation_fraction": 0.25,
                 "logging_steps": 5, "telemetry_steps": 2, "learning_rate": 1e-4}  # fmt: skip
_TRUE = ("true", "yes", "1")


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
    unknown = sorted(set(settings) - recipe_fields())
    if unknown:
        raise RecipeError(f"{path}: unknown setting(s) {unknown}; see `hf-multitask train --help`")
    return settings


def _take_bare_debug(argv: list[str]) -> tuple[list[str], bool]:
    """A bare ``--debug`` is the traceback flag; TrainingArguments' own ``--debug`` takes a value."""
    for i, token in enumerate(argv):
        if token == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            return argv[:i] + argv[i + 1 :], True
    return argv, False


class RecipeParser(HfArgumentParser):
    """``HfArgumentParser`` over every recipe dataclass, owning ``--config``, ``--demo`` and
    ``--traceback``; [`parse()`][hf_multitask.recipe.parser.RecipeParser.parse] returns a [`RecipeArguments`][hf_multitask.recipe.arguments.RecipeArguments] and the traceback flag."""

    def __init__(self) -> None:
        super().__init__(ARGUMENT_CLASSES, prog="hf-multitask train", allow_abbrev=False)
        self.add_argument("--config", default=None, help="A YAML file of settings (any flag's name as a key); flags given here override it")
        self.add_argument("--traceback", action="store_true", help="Show the full traceback of an error instead of one line")
        # each parse starts from these: a --config's or --demo's defaults must not outlive the parse that set them
        # (per action: a flag and its --no_ twin share a name but not a default)
        self._own_defaults = ([(action, action.default) for action in self._actions], dict(self._defaults))

    def parse(self, argv: list[str]) -> tuple[RecipeArguments, bool]:
        """``argv`` as a [`RecipeArguments`][hf_multitask.recipe.arguments.RecipeArguments] (a ``--config`` file's keys first, the flags over them) and whether to show tracebacks."""
        argv, debug = _take_bare_debug(list(argv))
        early = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
        early.add_argument("--config", default=None)
        early.add_argument("--demo", nargs="?", const="true", default=None)
        try:
            known, _ = early.parse_known_args(argv)
        except argparse.ArgumentError:
            raise RecipeError("--config needs a YAML file") from None
        if known.config is not None and (not known.config or known.config.startswith("--")):
            raise RecipeError("--config needs a YAML file")
        actions, parser_defaults = self._own_defaults
        for action, default in actions:
            action.default = default
        self._defaults = dict(parser_defaults)
        settings = load_config(Path(known.config)) if known.config is not None else {}
        # --demo on the command line, else the config's `demo:`, sizes the run for the demo data (the config and flags override)
        demo = known.demo.lower() in _TRUE if known.demo is not None else str(settings.get("demo", "")).lower() in _TRUE
        if demo:
            self.set_defaults(**DEMO_DEFAULTS)
        self.set_defaults(**settings)
        *parsed, extra = self.parse_args_into_dataclasses(args=argv)
        return RecipeArguments(*parsed), debug or bool(extra.traceback)


def parse_args(argv: list[str] | None = None) -> RecipeArguments:
    """Parse the recipe's command line (``sys.argv[1:]`` by default) into a [`RecipeArguments`][hf_multitask.recipe.arguments.RecipeArguments]."""
    import sys

    return RecipeParser().parse(list(sys.argv[1:] if argv is None else argv))[0]
