"""The recipe's training phases, in the order they run on one shared [`RecipeContext`][hf_multitask.recipe.phases.RecipeContext].

Each phase says whether it runs ([`Phase.runs()`][hf_multitask.recipe.phases.Phase.runs]) and runs ([`Phase.run()`][hf_multitask.recipe.phases.Phase.run]):

1. [`SimCSEPhase`][hf_multitask.recipe.phases.SimCSEPhase] — unsupervised SimCSE on the tasks' own sentences;
2. [`HeadPretrainingPhase`][hf_multitask.recipe.phases.HeadPretrainingPhase] — each head alone on a frozen encoder;
3. [`IntermediatePhase`][hf_multitask.recipe.phases.IntermediatePhase] — STILTs: the auxiliary tasks first, then only the primary ones train;
4. [`LinearProbePhase`][hf_multitask.recipe.phases.LinearProbePhase] — LP-FT's head-only phase;
5. [`MultitaskPhase`][hf_multitask.recipe.phases.MultitaskPhase] — multitask training with ``MultitaskTrainer`` (SMART as its loss hook), evaluation;
6. [`SpecialisationPhase`][hf_multitask.recipe.phases.SpecialisationPhase] — two-step specialisation into one routed model;
7. [`OutputsPhase`][hf_multitask.recipe.outputs.OutputsPhase] — ``best/``, metrics, predictions, plot, Hub push.

The phases before multitask training do not run again on resume: their result is in the
checkpoint's weights.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..metrics import prefixed_metrics
from ..modeling import MultitaskModel
from ..precision import eval_dtype
from ..tasks import member_tasks
from ..trainer import MultitaskTrainer
from .arguments import RecipeArguments, RecipeError, RecipeTrainingArguments

__all__ = ["Phase", "RecipeContext", "TRAINING_PHASES", "phase_args"]

logger = logging.getLogger("hf_multitask.recipe")


@dataclass
class RecipeContext:
    """What the phases share: the arguments, the data, the model, and what training produced."""

    arguments: RecipeArguments
    tasks: list
    raw: dict
    resume: str | bool | None
    model: MultitaskModel | None = None
    tokenizer: Any = None
    train: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    raw_texts: dict = field(default_factory=dict)
    trainer: MultitaskTrainer | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    final_model: Any = None  # what best/ holds: the multitask model, or the routed model after specialisation
    predictions: dict = field(default_factory=dict)
    training_note: str = ""  # the model card's account of the training
    # what a phase before multitask training cost (e.g. ``intermediate_seconds``), added to the run's metrics
    phase_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def args(self) -> RecipeTrainingArguments:
        return self.arguments.training

    @property
    def out(self) -> Path:
        return Path(self.args.output_dir)


class Phase:
    """One step of the recipe: [`runs()`][hf_multitask.recipe.phases.Phase.runs] says whether, [`run()`][hf_multitask.recipe.phases.Phase.run] does it."""

    name = "phase"

    def runs(self, ctx: RecipeContext) -> bool:
        """Whether the phase runs in this run (its flags are set; some phases skip on resume)."""
        raise NotImplementedError

    def run(self, ctx: RecipeContext) -> None:
        """Do the phase's work on the shared context."""
        raise NotImplementedError


def phase_args(
    args: RecipeTrainingArguments, phase: str, steps: int, learning_rate: float, *, heads_only: bool = False, **overrides: Any
) -> RecipeTrainingArguments:
    """Training arguments of a phase around the main run: ``steps`` steps at ``learning_rate``
    into ``output_dir/phase``, no evaluation, saving or Hub push unless ``overrides`` say otherwise.

    The rest comes from the main run's arguments, except what does not fit a phase (the table in
    the recipe guide says what each phase takes): a warm-up ratio (``--warmup_steps`` below 1)
    is a ratio of the phase's own steps, as it is of the main run's. An absolute warm-up counts
    the multitask phase's steps: a phase that trains the heads alone (``heads_only``: head
    pretraining, LP) takes none of it, another phase takes it only when it is shorter than the
    phase (else the phase would never reach its learning rate: it runs without warm-up, and the
    log says so). A heads-only phase trains at its own ``learning_rate``: the main run's
    ``--head_learning_rate`` and ``--layer_lr_decay`` would replace it."""
    settings = {"max_steps": steps, "learning_rate": learning_rate, "eval_strategy": "no", "save_strategy": "no",
                "load_best_model_at_end": False, "output_dir": str(Path(args.output_dir) / phase), "push_to_hub": False}  # fmt: skip
    warmup = args.warmup_steps
    if warmup >= 1 and (heads_only or warmup >= steps):
        if not heads_only:
            logger.warning("--warmup_steps %g counts the multitask phase's steps; the %s phase has %d, so it runs without warm-up "
                           "(a ratio, e.g. --warmup_steps 0.1, warms every phase up over its own steps)", warmup, phase, steps)  # fmt: skip
        settings["warmup_steps"] = 0
    if heads_only:
        settings.update(head_learning_rate=None, layer_lr_decay=1.0)
    return replace(args, **{**settings, **overrides})


# single-task phases: plain batches of per_device_train_batch_size, one per optimizer step
SINGLE_TASK = {"schedule": "round_robin", "schedule_kwargs": None, "gradient_accumulation_steps": 1}


class SimCSEPhase(Phase):
    name = "simcse"

    def runs(self, ctx):
        return ctx.arguments.simcse.simcse_steps > 0 and ctx.resume is None

    def run(self, ctx):
        from ..schemes import simcse_pretrain

        simcse, args = ctx.arguments.simcse, ctx.args
        sentences = sorted({t for spec, _, _ in ctx.tasks for c in spec.text_columns for t in ctx.raw_texts[spec.name][c]})
        losses = simcse_pretrain(ctx.model, sentences, ctx.tokenizer, steps=simcse.simcse_steps, batch_size=args.per_device_train_batch_size,
                                 learning_rate=simcse.simcse_learning_rate, max_length=ctx.arguments.data.max_length, seed=args.seed,
                                 progress=not args.disable_tqdm)  # fmt: skip
        logger.info("SimCSE: loss %.4f -> %.4f", losses[0], losses[-1])


class HeadPretrainingPhase(Phase):
    name = "head-pretraining"

    def runs(self, ctx):
        return ctx.arguments.head_pretrain.head_pretrain_steps > 0 and ctx.resume is None

    def run(self, ctx):
        from ..schemes import pretrain_heads

        heads = ctx.arguments.head_pretrain
        every = heads.head_pretrain_eval_steps or max(1, heads.head_pretrain_steps // 4)
        head_args = phase_args(ctx.args, self.name, heads.head_pretrain_steps, heads.head_pretrain_learning_rate, heads_only=True,
                               eval_strategy="steps", eval_steps=every, save_strategy="steps", save_steps=every, **SINGLE_TASK)  # fmt: skip
        best = pretrain_heads(ctx.model, ctx.train, ctx.validation, head_args, processing_class=ctx.tokenizer)
        logger.info("per-task head pretraining: best scores %s", best)


class IntermediatePhase(Phase):
    """STILTs (Phang, Févry, Bowman 2018): train on the auxiliary tasks for ``intermediate_steps``
    (not again on resume: the checkpoint holds the result); from then on only the primary tasks
    train. Its time, examples and steps are the run's ``intermediate_seconds``, ``intermediate_examples``
    and ``intermediate_global_steps``."""

    name = "intermediate"

    def runs(self, ctx):
        return ctx.arguments.intermediate.intermediate_steps > 0

    def run(self, ctx):
        args, steps = ctx.args, ctx.arguments.intermediate.intermediate_steps
        primary = member_tasks(args.primary_tasks or [], [spec for spec, _, _ in ctx.tasks])  # a primary metric group trains as its tasks
        auxiliary = {t: d for t, d in ctx.train.items() if t not in primary}
        if not primary or not auxiliary:
            raise RecipeError("--intermediate_steps trains the auxiliary tasks first: name the primary task(s) with --primary_tasks "
                              "and train at least one other task")  # fmt: skip
        if ctx.resume is None:
            phase = phase_args(args, self.name, steps, ctx.arguments.intermediate.intermediate_learning_rate or args.learning_rate)
            trainer = MultitaskTrainer(model=ctx.model, args=phase, train_dataset=auxiliary, processing_class=ctx.tokenizer)
            start = time.perf_counter()
            trainer.train()
            # its cost, which the multitask phase's train_seconds does not cover (a resumed run has none: it skips the phase)
            ctx.phase_metrics.update(intermediate_seconds=time.perf_counter() - start,
                                     intermediate_examples=sum(trainer.examples_seen.values()),
                                     intermediate_global_steps=trainer.state.global_step)  # fmt: skip
            logger.info("intermediate-task transfer: %d steps on %s, then the primary task(s) %s", steps, sorted(auxiliary), primary)
        ctx.train = {t: d for t, d in ctx.train.items() if t in primary}


class LinearProbePhase(Phase):
    name = "lp"

    def runs(self, ctx):
        return ctx.arguments.lpft.lp_steps > 0 and ctx.resume is None

    def run(self, ctx):
        from ..schemes.lpft import linear_probe

        lpft = ctx.arguments.lpft
        linear_probe(ctx.model, ctx.train, phase_args(ctx.args, self.name, lpft.lp_steps, lpft.lp_learning_rate, heads_only=True),
                     processing_class=ctx.tokenizer)  # fmt: skip


class MultitaskPhase(Phase):
    """Multitask training (from ``--resume_from_checkpoint`` when given), then evaluation."""

    name = "multitask"

    def runs(self, ctx):
        return True

    def run(self, ctx):
        args, smart = ctx.args, ctx.arguments.smart
        loss_hook = None
        if smart.smart_lambda_s > 0:
            from ..schemes import SmartRegularizer

            loss_hook = SmartRegularizer(ctx.model, lambda_s=smart.smart_lambda_s, mu=smart.smart_mu, epsilon=smart.smart_epsilon,
                                         step_size=smart.smart_step_size, steps=smart.smart_steps)  # fmt: skip
        train = ctx.train
        teachers = ctx.arguments.distillation.teachers
        if teachers:  # BAM!: the teachers' outputs once over the training data (cached), then the student trains on them
            from ..distillation import attach_teachers

            cache = ctx.arguments.distillation.teacher_cache or ctx.out / "teacher_outputs"
            train, stats = attach_teachers(train, teachers, ctx.model, cache_dir=cache, pad_token_id=ctx.tokenizer.pad_token_id,
                                           batch_size=args.per_device_eval_batch_size, progress=not args.disable_tqdm,
                                           device=args.device)  # fmt: skip
            ctx.phase_metrics.update(stats)
        trainer = MultitaskTrainer(model=ctx.model, args=args, train_dataset=train, eval_dataset=ctx.validation,
                                   processing_class=ctx.tokenizer, loss_hook=loss_hook)  # fmt: skip
        # what trained, for the model card (a model saved after training is all trainable again once loaded)
        counts = ctx.model.parameter_counts()
        trained = f"`--trainable {ctx.arguments.model.trainable}`: {counts['trainable']:,} of {counts['total']:,} parameters trained"
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=ctx.resume)
        train_seconds = time.perf_counter() - start
        trainer.save_state()  # trainer_state.json: every evaluation during training and the step of the checkpoint kept
        metrics = trainer.evaluate()
        examples = sum(trainer.examples_seen.values())
        ctx.metrics = {
            **metrics,
            **ctx.phase_metrics,
            "train_seconds": train_seconds,
            "train_examples": examples,
            "train_examples_per_second": examples / train_seconds,
            "train_global_steps": trainer.state.global_step,
            **{f"train_steps_{t}": n for t, n in trainer.task_steps.items()},
            **{f"train_examples_{t}": n for t, n in trainer.examples_seen.items()},
        }
        ctx.trainer = trainer
        ctx.final_model, ctx.predictions = trainer.gathered_model(), trainer.last_predictions  # full weights under FSDP2 (all ranks gather)
        ctx.training_note = (f"Trained with `recipes/train_pcgrad.py`: aggregator `{args.aggregator}`, schedule `{args.schedule}`; "
                             f"{trained}.")  # fmt: skip
        if trainer.schedule_note:  # e.g. `annealed` in one epoch: the card says what the batches were
            ctx.training_note += f" In this run {trainer.schedule_note}."
        if teachers:
            schedule = ("teacher annealing (the gold weight rising from 0 to 1)" if args.distillation_gold_weight is None
                        else f"gold weight {args.distillation_gold_weight}")  # fmt: skip
            ctx.training_note += f" Distilled from single-task teachers of {', '.join(f'`{t}`' for t in teachers)} with {schedule}."
        if args.primary_tasks:
            ctx.training_note += (f" Primary task(s): {', '.join(f'`{t}`' for t in args.primary_tasks)} (the others are auxiliary); the "
                                  "overall score and the checkpoint choice follow the primary task(s).")  # fmt: skip


class SpecialisationPhase(Phase):
    """Two-step specialisation of the trained multitask model
    ([`specialise_experts()`][hf_multitask.schemes.specialise.specialise_experts]), in the form
    ``--specialise_form`` gives: a whole copy per task (served routed) or the task's own PALs or
    LoRA adapter (one backbone). The served model's scores become the run's ``eval_*`` metrics
    (the multitask model's stay as ``multitask_eval_*``).

    Every expert is trained and scored on validation: ``experts_eval_*`` are the scores with every
    expert kept. ``--specialise_keep`` then chooses what is served: ``all``; ``better`` (a task
    keeps its expert only where it beats the multitask model on that task, a metric group
    deciding together: chosen on the validation set it is scored on, so those ``eval_*`` lean
    high); or a list of tasks chosen on other data. The run records ``specialise_kept`` (how
    many), ``specialise_kept_{task}`` (1 kept, 0 not), ``serving_parameters`` and
    ``serving_encoders`` (encoders in memory)."""

    name = "specialise"

    def runs(self, ctx):
        return ctx.arguments.specialise.specialise_steps > 0

    def run(self, ctx):
        from ..predict import evaluate, metrics_from_predictions
        from ..schemes.specialise import better_experts, specialise_experts

        args, special, model_args = ctx.args, ctx.arguments.specialise, ctx.arguments.model
        tasks = special.specialise_tasks or list(ctx.train)
        keep = special.keep_mode()  # its tasks were checked before training (recipe.data.check_task_names)
        # the PAL and LoRA forms train task-owned parameters only: --head_learning_rate (the rate of task-owned parameters)
        # and --layer_lr_decay would replace --specialise_learning_rate, so they do not reach the phase
        adapters = {"head_learning_rate": None, "layer_lr_decay": 1.0} if special.specialise_form != "encoder" else {}
        special_args = phase_args(args, self.name, special.specialise_steps, special.specialise_learning_rate, **SINGLE_TASK, **adapters)
        start = time.perf_counter()
        multitask = ctx.trainer.model
        result = specialise_experts(multitask, ctx.train, special_args, form=special.specialise_form, tasks=tasks,
                                    fresh_heads=special.specialise_fresh_heads, rank=special.specialise_rank or None,
                                    pal_heads=model_args.pal_heads, pal_shared_projections=model_args.pal_shared_projections,
                                    lora_alpha=model_args.lora_alpha, lora_targets=model_args.lora_targets,
                                    processing_class=ctx.tokenizer)  # fmt: skip
        every_expert = result.pack(result.tasks)
        expert_predictions: dict = {}
        evaluate(every_expert, {t: ctx.validation[t] for t in result.tasks}, pad_token_id=ctx.tokenizer.pad_token_id,
                 batch_size=args.per_device_eval_batch_size, progress=not args.disable_tqdm, predictions=expert_predictions,
                 dtype=eval_dtype(args))  # fmt: skip
        kept = list(result.tasks) if keep == "all" else keep if isinstance(keep, list) else None
        if kept is None:
            kept = better_experts(multitask, result.tasks, expert_predictions, ctx.predictions)
        kept = [t for t in result.tasks if t in kept]
        logger.info("two-step specialisation (%s) keeps the experts of %s (of %s)", result.form, kept, result.tasks)

        def scored(model: Any, experts: list[str]) -> tuple[dict, dict[str, float]]:
            """The validation predictions and metrics of ``model``, whose experts are ``experts``."""
            chosen = {t: expert_predictions[t] if t in experts else ctx.predictions[t] for t in ctx.validation}
            return chosen, prefixed_metrics(metrics_from_predictions(model, chosen), args.primary_tasks)

        served = every_expert if kept == list(result.tasks) else result.pack(kept)
        predictions, metrics = scored(served, kept)
        # every expert's scores, before any is dropped: chosen on nothing, they do not lean
        experts = metrics if served is every_expert else scored(every_expert, list(result.tasks))[1]
        metrics["specialise_seconds"] = time.perf_counter() - start
        sizes = args.task_batch_sizes or {}
        metrics["specialise_examples"] = sum(
            special.specialise_steps * int(sizes.get(t, args.per_device_train_batch_size)) * args.world_size for t in tasks
        )
        metrics.update({f"experts_{k}": v for k, v in experts.items() if k.startswith("eval_")})
        metrics["specialise_kept"] = len(kept)
        metrics.update({f"specialise_kept_{t}": int(t in kept) for t in result.tasks})  # numeric, like every metric
        metrics["serving_parameters"] = sum(p.numel() for p in served.parameters())
        metrics["serving_encoders"] = len(getattr(served, "experts", None) or [served])
        ctx.metrics = {**{f"multitask_{k}": v for k, v in ctx.metrics.items() if k.startswith("eval_")}, **ctx.metrics, **metrics}
        ctx.final_model, ctx.predictions = served, predictions
        what = {"encoder": "a whole copy of the model", "pal": "its own PALs and head", "lora": "its own LoRA adapter and head"}
        ctx.training_note += (f" Then two-step specialisation: {special.specialise_steps} single-task steps per task, each training "
                              f"{what[result.form]}")  # fmt: skip
        if keep == "better":
            ctx.training_note += f"; a task keeps its expert only where it beat the multitask model on validation (kept: {kept})"
        elif isinstance(keep, list):
            ctx.training_note += f"; kept the experts of {kept}, chosen beforehand"
        ctx.training_note += "."
        logger.info("two-step specialisation: overall %.4f -> %.4f", ctx.metrics["multitask_eval_overall"], ctx.metrics["eval_overall"])
        if ctx.trainer.is_world_process_zero():
            # every expert, whatever is served: a teacher for distillation (teachers_from), or a later choice
            if result.form == "encoder":
                for task, model in result.experts.items():
                    model.save_pretrained(ctx.out / "specialised" / task)
            else:
                every_expert.save_pretrained(ctx.out / "specialised" / "experts")


TRAINING_PHASES: tuple[Phase, ...] = (SimCSEPhase(), HeadPretrainingPhase(), IntermediatePhase(), LinearProbePhase(), MultitaskPhase(),
                                      SpecialisationPhase())  # fmt: skip
