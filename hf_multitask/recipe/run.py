"""Running the recipe: settings checked, the output folder claimed, then every phase in turn.

``run(argv)`` is the whole recipe as a function; ``main()`` is the command line (one error
line and exit status 2 for a bad setting, file or checkpoint).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

from transformers import set_seed

from ..checkpoints import checkpoint_folders
from .arguments import RecipeArguments, RecipeError, RecipeTrainingArguments
from .data import build_tasks, check_task_names, encode_data, load_raw_data
from .model import load_model
from .outputs import OutputsPhase, run_ensemble
from .parser import RecipeParser, _take_bare_debug
from .phases import TRAINING_PHASES, RecipeContext

__all__ = ["PHASES", "main", "resume_setting", "run"]

logger = logging.getLogger("hf_multitask.recipe")

PHASES = (*TRAINING_PHASES, OutputsPhase())


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

    Raises [`RecipeError`][hf_multitask.recipe.arguments.RecipeError] / [`DataError`][hf_multitask.reading.DataError] (both ``ValueError``) for
    settings and data that cannot work, before anything is trained where it can tell.
    """
    arguments, _ = RecipeParser().parse(list(sys.argv[1:] if argv is None else argv))
    return run_arguments(arguments)


def run_arguments(arguments: RecipeArguments) -> dict[str, float]:
    """[`run()`][hf_multitask.recipe.run.run] on parsed arguments."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args, data = arguments.training, arguments.data
    set_seed(args.seed)
    if arguments.ensemble.ensemble:
        return run_ensemble(arguments)
    _check_settings(args)
    resume = resume_setting(args.resume_from_checkpoint)
    if data.demo:
        if data.data_dir:
            raise RecipeError("--demo trains on the built-in examples; it does not take --data-dir")
        from ..demo import write_demo_data

        data.data_dir = str(write_demo_data(Path(args.output_dir) / "demo-data"))
        logger.info("--demo: %s holds the built-in examples", data.data_dir)
    tasks = build_tasks(data)
    check_task_names(arguments, [s.name for s, _, _ in tasks])
    lock = _claim_output_dir(args, resuming=resume is not None)
    try:
        ctx = RecipeContext(arguments, tasks, load_raw_data(data, tasks), resume)
        ctx.model, ctx.tokenizer = load_model(arguments.model, [s for s, _, _ in tasks], max_length=data.max_length)
        ctx.train, ctx.validation, ctx.raw_texts = encode_data(data, tasks, ctx.raw, ctx.model, ctx.tokenizer)
        if resume is not None and (arguments.simcse.simcse_steps or arguments.head_pretrain.head_pretrain_steps
                                   or arguments.lpft.lp_steps):  # fmt: skip
            logger.info("resuming: SimCSE, head pretraining and LP are skipped (their result is in the checkpoint's weights)")
        for phase in PHASES:
            if phase.runs(ctx):
                phase.run(ctx)
        return ctx.metrics
    finally:
        if lock is not None:
            lock.release()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: run the recipe; a bad setting, file or checkpoint ends in one line on
    stderr and exit status 2, without a traceback (``--traceback``, or a bare ``--debug``, shows it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--traceback" in argv or _take_bare_debug(argv)[1]
    try:
        run(argv)
    except (ValueError, OSError, KeyError) as err:
        if debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"hf-multitask: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
