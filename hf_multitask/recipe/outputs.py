"""What a recipe run writes: ``best/`` with its model card, ``metrics.json``, prediction files,
the conflict plot, the Hub push; and the ensemble mode, which only evaluates and writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import AutoTokenizer

from ..configuration import trained_max_length
from ..hub import save_for_hub, upload_folder
from ..metrics import prefixed_metrics
from ..precision import eval_dtype
from ..predict import write_predictions
from ..tasks import member_tasks
from .arguments import RecipeArguments, RecipeError
from .data import build_tasks, check_task_names, encode_data, load_raw_data
from .phases import Phase, RecipeContext

__all__ = ["OutputsPhase", "run_ensemble", "write_prediction_files"]

logger = logging.getLogger("hf_multitask.recipe")


def write_prediction_files(out: Path, tasks: list, predictions: dict, raw: dict | None = None) -> None:
    """CS224N-format ``predictions/{task}-dev-output.csv`` for every task of the run, and a
    CoNLL-style ``predictions/{task}-dev-output.conll`` (word, predicted tag, gold tag) for
    token-classification tasks."""
    from ..predict import write_conll

    for spec, _, _ in tasks:
        write_predictions(out / "predictions" / f"{spec.name}-dev-output.csv", spec, predictions[spec.name])
        if spec.task_type.sequence_labels and raw is not None and raw.get(spec.name) is not None:
            validation = raw[spec.name][1]
            # the predictions are in the validation rows' order: sentences go by position (two sentences may share an id)
            if list(validation["id"]) != list(predictions[spec.name].ids):
                raise ValueError(f"Task {spec.name!r}: the predictions are not in the order of the validation rows")
            write_conll(out / "predictions" / f"{spec.name}-dev-output.conll", spec, predictions[spec.name],
                        list(validation[spec.text_columns[0]]))  # fmt: skip


class OutputsPhase(Phase):
    """On the main process: ``best/`` (model, tokenizer, card), ``metrics.json``, the prediction
    files (and a benchmark's official test files), the conflict plot, then the Hub push."""

    name = "outputs"

    def runs(self, ctx: RecipeContext) -> bool:
        return ctx.trainer is not None and ctx.trainer.is_world_process_zero()

    def run(self, ctx: RecipeContext) -> None:
        args, data, out, metrics = ctx.args, ctx.arguments.data, ctx.out, ctx.metrics
        final = out / "best"
        repo_id = args.push_to_hub_repo or f"hf-multitask/{out.name}"
        save_for_hub(ctx.final_model, ctx.tokenizer, final, repo_id, metrics, training=ctx.training_note)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        if args.write_predictions:
            write_prediction_files(out, ctx.tasks, ctx.predictions, ctx.raw)
        if args.test_predictions and data.benchmark and data.data_dir:
            from ..tweeteval import write_test_predictions

            written = write_test_predictions(ctx.final_model, ctx.tokenizer, data.data_dir, out / "predictions" / "test",
                                             tasks=member_tasks(args.primary_tasks or [], [spec for spec, _, _ in ctx.tasks]) or None, max_length=data.max_length,
                                             batch_size=args.per_device_eval_batch_size, progress=not args.disable_tqdm)  # fmt: skip
            logger.info("test predictions (official layout): %s", sorted(written))
        if args.plot_telemetry and args.telemetry_steps > 0:
            try:
                from ..telemetry import plot_conflicts

                plot_conflicts(ctx.trainer.state.log_history, out / "conflicts.png")
            except (ImportError, ValueError) as err:
                logger.warning("No telemetry plot: %s", err)
        logger.info("metrics: %s", json.dumps(metrics))
        if args.push_to_hub_repo:
            try:
                url = upload_folder(final, args.push_to_hub_repo, private=bool(args.hub_private_repo))
            except Exception as err:  # offline, auth, quota: the results on disk stay, say where
                raise RecipeError(
                    f"pushing to the Hub repo {args.push_to_hub_repo!r} failed ({type(err).__name__}: {err}). "
                    f"The run's results are kept: {final} and {out / 'metrics.json'}; upload them later with "
                    f"hf_multitask.hub.upload_folder({str(final)!r}, {args.push_to_hub_repo!r})"
                ) from err
            logger.info("pushed to %s", url)


def run_ensemble(arguments: RecipeArguments) -> dict[str, float]:
    """``--ensemble dir1 dir2 ...``: evaluate the ensemble on the validation data and write
    ``metrics.json`` and the prediction files (no training)."""
    from ..predict import evaluate
    from ..schemes import EnsembleModel

    args, data, ensemble_args = arguments.training, arguments.data, arguments.ensemble
    missing = [p for p in ensemble_args.ensemble if not Path(p).is_dir()]
    if missing:
        raise RecipeError(f"--ensemble: no such checkpoint folder(s) {missing}")
    try:
        ensemble = EnsembleModel.from_pretrained(ensemble_args.ensemble, vote=ensemble_args.ensemble_vote).eval()
    except ValueError as err:
        raise RecipeError(f"--ensemble: {err}") from None
    tokenizer = AutoTokenizer.from_pretrained(ensemble_args.ensemble[0])
    # the inputs are tokenised once, with the first member's tokenizer: every member must read the same token ids
    for folder in ensemble_args.ensemble[1:]:
        if AutoTokenizer.from_pretrained(folder).get_vocab() != tokenizer.get_vocab():
            raise RecipeError(f"--ensemble: {folder} has another tokenizer than {ensemble_args.ensemble[0]}; the inputs are encoded "
                              "once, so every member must share one")  # fmt: skip
    trained = {trained_max_length(m.config) for m in ensemble.members} - {None, data.max_length}
    if trained:
        logger.warning("--ensemble: members were trained at max_length %s; the ensemble is evaluated at --max_length %d",
                       sorted(trained), data.max_length)  # fmt: skip
    tasks = build_tasks(data)
    check_task_names(arguments, [s.name for s, _, _ in tasks])
    raw = load_raw_data(data, tasks)
    _, validation, _ = encode_data(data, tasks, raw, ensemble.members[0], tokenizer)
    predictions: dict = {}
    scores = evaluate(ensemble, validation, pad_token_id=tokenizer.pad_token_id, batch_size=args.per_device_eval_batch_size,
                      progress=not args.disable_tqdm, predictions=predictions, dtype=eval_dtype(args))  # fmt: skip
    metrics = prefixed_metrics(scores, args.primary_tasks)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    if args.write_predictions:
        write_prediction_files(out, tasks, predictions, raw)
    logger.info("ensemble of %d: %s", len(ensemble_args.ensemble), json.dumps(metrics))
    return metrics
