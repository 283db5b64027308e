"""Step time and memory of PCGrad vs summed-loss steps on the packaged MiniLM, 3 tasks (or 10, 20, 50).

    python benchmarks/surgery_speed.py [--steps 8] [--batch 32] [--aggregator pcgrad[,famo,...]] [--tasks 3|10|20|50]
        [--primary TASK] [--distil] [--profile] [--skip-memory]

``--tasks 10`` takes the TweetEval tasks with stance as five tasks, one per target (emoji,
emotion, hate, irony, offensive, stance_abortion, ...); ``--tasks 20`` repeats each of those
ten with a second head (``emoji_2``, ...) on the same data, ``--tasks 50`` with four more
(``emoji_2`` ... ``emoji_5``).

Ways to take one optimizer step on identical batches (one batch of each task):
  plain    -- sum the three task losses, one loss.backward() (what summed-loss multitask does)
  stock    -- the stock ``transformers.Trainer.training_step`` on a module that returns that sum
  sum      -- MultitaskTrainer.training_step with the ``sum`` aggregator
  <agg>    -- MultitaskTrainer.training_step with each aggregator or loss weighting named in
              ``--aggregator`` (comma-separated; pcgrad by default)
Modes run interleaved in one process so machine noise hits them alike: in each round every mode
takes one untimed step (the switch from another mode's memory is paid there, not in the timed
steps: in a real run a mode follows itself) and then one timed step on each of the 4 batches;
the order of the modes rotates every round (plain, stock, sum, pcgrad; then stock, sum, pcgrad,
plain; ...). ``--steps`` is rounded up to whole rounds. Ratios of medians are reported
(``over_pcgrad`` too when pcgrad is timed).
``--distil`` adds ``sum+distil`` and ``<agg>+distil``: the same steps on data carrying cached
teacher outputs (issue 42's distillation; the teacher is the initial model, saved once), against
which the distillation step cost (target <= 1.05x the same aggregator) is read.
``--profile`` also splits each timed step into phases (forward and losses, the task
backwards, copying gradients into the engine's rows, the Gram matrix, the method's weights on
it, the weighted sum of rows, writing ``.grad``, the optimizer step), as medians per step.
Peak RSS per mode comes from a fresh subprocess. The primary-task methods (``gradsim``,
``pcgrad_primary``, ``metabalance``) serve ``--primary`` (default: the first task).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import torch
from transformers import AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import DATA_DIR, load_reference  # noqa: E402

import hf_multitask as hm  # noqa: E402

DEVICE = "cpu"
BF16 = False


TASKS = 3
PRIMARY: str | None = None
CURRENT = None  # --profile: the Phases of the step being timed


def tweeteval_tasks(tokenizer, count: int, limit: int) -> tuple[list, dict]:
    """``count`` (10, 20 or 50) TweetEval tasks with stance split by target, and their encoded data."""
    from hf_multitask.data import load_text_label_files
    from hf_multitask.tweeteval import STANCE_TARGETS, load_tweeteval, tweeteval_task

    root = DATA_DIR / "tweeteval"
    specs, raw = [], {}
    for name in ("emoji", "emotion", "hate", "irony", "offensive"):
        spec = tweeteval_task(name, root)
        specs.append(spec)
        rows = load_tweeteval(spec, root, "train")
        raw[name] = rows.select(range(min(limit, len(rows))))
    for target in STANCE_TARGETS:
        spec = hm.TaskSpec(name=f"stance_{target}", kind="classification", num_labels=3, text_columns=("text",), metric="stance_f1")
        folder = root / "stance" / target
        specs.append(spec)
        rows = load_text_label_files(spec, folder / "train_text.txt", folder / "train_labels.txt")
        raw[spec.name] = rows.select(range(min(limit, len(rows))))
    base = list(specs)
    for copy in range(2, count // len(base) + 1):  # 20 and 50: the ten again with a second (third, ...) head
        twins = [hm.TaskSpec.from_dict({**s.to_dict(), "name": f"{s.name}_{copy}"}) for s in base]
        raw.update({t.name: raw[s.name] for s, t in zip(base, twins)})
        specs += twins
    if len(specs) != count:
        raise SystemExit(f"--tasks must be 3, 10, 20 or 50, got {count}")
    data = {s.name: hm.encode_task(raw[s.name], s, tokenizer, max_length=64) for s in specs}
    return specs, data


def build(aggregator: str, batch: int, distil: bool = False):
    backbone = hm.default_backbone()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    torch.manual_seed(0)
    if TASKS == 3:
        model = hm.MultitaskModel.from_encoder(backbone, tasks=hm.reference_tasks(), pair_encoding="cross")
        data = load_reference(tokenizer, model.config, limit=batch * 4)
    else:
        specs, data = tweeteval_tasks(tokenizer, TASKS, batch * 4)
        model = hm.MultitaskModel.from_encoder(backbone, tasks=specs)
    if distil:  # the teacher of every task: the initial model, its outputs computed once and attached
        from hf_multitask.distillation import attach_teachers

        teacher = tempfile.mkdtemp()
        model.save_pretrained(teacher)
        data, _ = attach_teachers(data, dict.fromkeys(data, teacher), model, pad_token_id=tokenizer.pad_token_id, progress=False)
    args = hm.MultitaskTrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch,
        report_to=[],
        use_cpu=DEVICE == "cpu",
        bf16=BF16,
        disable_tqdm=True,
        aggregator=aggregator,
        primary_tasks=[PRIMARY or model.task_names[0]] if hm.surgery.method_class(aggregator).uses_primary else None,
    )
    trainer = hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.create_optimizer_and_scheduler(num_training_steps=1000)
    trainer.accelerator.gradient_state._set_sync_gradients(True)
    trainer.current_gradient_accumulation_steps = 1
    batches = [b for _, b in zip(range(4), trainer.get_train_dataloader())]
    return trainer, batches


class SummedTasks(torch.nn.Module):
    """The multitask model as a stock ``Trainer`` sees one: a batch of every task in, the summed loss out."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, **batch):
        return {"loss": sum(self.model(task=t, **b).loss for t, b in batch.items())}


def build_stock(batch: int):
    """The stock ``transformers.Trainer`` stepping `SummedTasks` over the same model and batches."""
    from transformers import Trainer, TrainingArguments

    trainer, batches = build("sum", batch)
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, report_to=[], use_cpu=DEVICE == "cpu",
                             bf16=BF16, disable_tqdm=True)  # fmt: skip
    stock = Trainer(model=SummedTasks(trainer.model), args=args)
    stock.create_optimizer_and_scheduler(num_training_steps=1000)
    stock.accelerator.gradient_state._set_sync_gradients(True)
    stock.current_gradient_accumulation_steps = 1
    return stock, batches


def plain_step(trainer, batch) -> None:
    model = trainer.model
    model.train()
    start = time.perf_counter()
    batch = trainer._prepare_inputs(batch)
    with trainer.accelerator.autocast():
        total = sum(model(task=t, **b).loss for t, b in batch.items())
    middle = time.perf_counter()
    total.backward()
    if CURRENT is not None:
        CURRENT.current.update({"forward + loss": middle - start, "backward": time.perf_counter() - middle})
    trainer.optimizer.step()
    model.zero_grad(set_to_none=True)


def surgery_step(trainer, batch) -> None:
    trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.model.zero_grad(set_to_none=True)


class Phases:
    """Per-step seconds of each phase of a step, by wrapping the functions the step calls."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []

    def wrap(self, phase: str, fn):
        def timed_call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[phase] = self.current.get(phase, 0.0) + time.perf_counter() - start

        return timed_call

    def end_step(self, total: float) -> None:
        self.current["total"] = total
        self.steps.append(self.current)
        self.current = {}

    def medians(self) -> dict[str, float]:
        """Median seconds per step of each phase; the nested ones are subtracted from their parents."""
        rows = []
        for step in self.steps:
            row = dict(step)
            if "engine.add" in row:  # the task backward is add minus its copy into the rows
                row["task backwards"] = row.pop("engine.add") - row.get("copy into rows", 0.0)
            if "engine.finish" in row:  # the weighted sum of rows is what finish does beyond its parts
                parts = ("gram", "weights", "write .grad")
                row["weighted sum of rows"] = row.pop("engine.finish") - sum(row.get(k, 0.0) for k in parts)
            row["other"] = row["total"] - sum(v for k, v in row.items() if k != "total")
            rows.append(row)
        return {k: round(statistics.median(r.get(k, 0.0) for r in rows), 4) for k in rows[0]}


def instrument(mode: str, trainer, phases: Phases) -> None:
    """Wrap what a step of ``mode`` calls (after a warm-up step has built the engine)."""
    import hf_multitask.surgery.base as surgery_base

    trainer.optimizer.step = phases.wrap("optimizer", trainer.optimizer.step)
    if mode == "plain":
        return
    if mode == "stock":
        trainer.compute_loss = phases.wrap("forward + loss", trainer.compute_loss)
        return
    trainer._task_loss = phases.wrap("forward + loss", trainer._task_loss)
    engine = trainer._engine
    if engine is None:  # the summed loss: one backward
        return
    engine.add = phases.wrap("engine.add", engine.add)
    engine._write_rows = phases.wrap("copy into rows", engine._write_rows)
    engine.finish = phases.wrap("engine.finish", engine.finish)
    engine._write_grads = phases.wrap("write .grad", engine._write_grads)
    trainer.aggregator.weights_from_gram = phases.wrap("weights", trainer.aggregator.weights_from_gram)
    if not getattr(surgery_base.scaled_gram, "profiled", False):  # module-level: the step being timed records it
        original = surgery_base.scaled_gram

        def gram(grads):
            return CURRENT.wrap("gram", original)(grads) if CURRENT is not None else original(grads)

        gram.profiled = True
        surgery_base.scaled_gram = gram


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(mode: str, aggregator: str, batch: int) -> None:
    """Peak RSS of the training steps alone: loading the backbone peaks higher, so the
    high-water mark is reset (Linux ``clear_refs``) once the model and batches are built."""
    trainer, batches = build("sum" if mode == "plain" else aggregator, batch)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_mb("VmRSS")
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for b in batches[:3]:
        (plain_step if mode == "plain" else surgery_step)(trainer, b)
    report = {"rss_before_steps_mb": base, "peak_rss_during_steps_mb": _status_mb("VmHWM")}
    if DEVICE == "cuda":
        report["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--aggregator", default="pcgrad", help="one or several (comma-separated) methods to time")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (both modes)")
    parser.add_argument(
        "--tasks", type=int, default=3, choices=[3, 10, 20, 50], help="3: the trio; 10 / 20 / 50: TweetEval tasks (see above)"
    )
    parser.add_argument("--primary", default=None, help="the primary task of the primary-task methods (default: the first task)")
    parser.add_argument("--distil", action="store_true", help="also time each method on data with cached teacher outputs")
    parser.add_argument("--profile", action="store_true", help="also split each step into phases (see above)")
    parser.add_argument("--skip-memory", action="store_true", help="time the steps only (no peak-RSS subprocesses)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DEVICE, BF16, TASKS, PRIMARY, CURRENT
    DEVICE, BF16, TASKS, PRIMARY = args.device, args.bf16, args.tasks, args.primary
    warnings.simplefilter("ignore")
    if args.memory_child:
        memory_child(args.memory_child, args.aggregator, args.batch)
        return

    methods = [m for m in args.aggregator.split(",") if m not in ("plain", "sum")]
    trainers = {"plain": build("sum", args.batch), "stock": build_stock(args.batch), "sum": build("sum", args.batch),
                **{m: build(m, args.batch) for m in methods}}  # fmt: skip
    if args.distil:
        trainers.update({f"{m}+distil": build(m, args.batch, distil=True) for m in ("sum", *methods)})
    # the models start identical; batches are identical across modes
    batches = trainers["plain"][1]
    times: dict[str, list[float]] = {m: [] for m in trainers}
    phases = {m: Phases() for m in trainers}
    order = list(trainers)
    rounds = max(1, -(-args.steps // len(batches)))  # every timed round steps through each batch once
    for r in range(rounds):
        for mode in order[r % len(order) :] + order[: r % len(order)]:  # each mode takes every place in turn
            trainer = trainers[mode][0]
            fn = plain_step if mode == "plain" else surgery_step
            # a block of steps: one untimed step first (it pays for the switch from the previous mode's
            # memory and, in round 0, builds the engine and the optimizer state), then every batch once
            CURRENT = None
            fn(trainer, batches[-1])
            if r == 0 and args.profile:
                instrument(mode, trainer, phases[mode])
            for batch in batches:
                CURRENT = phases[mode] if args.profile else None
                t = timed(lambda fn=fn, trainer=trainer, batch=batch: fn(trainer, batch))
                times[mode].append(t)
                if args.profile:
                    phases[mode].end_step(t)
    CURRENT = None
    med = {m: statistics.median(v) for m, v in times.items()}
    mem = {}
    for mode in () if args.skip_memory else ("plain", *methods):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                mode,
                "--aggregator",
                "sum" if mode == "plain" else mode,
                "--batch",
                str(args.batch),
                "--device",
                args.device,
                "--tasks",
                str(args.tasks),
                *(["--bf16"] if args.bf16 else []),
                *(["--primary", args.primary] if args.primary else []),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            check=True,
        )
        mem[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    report: dict = {"median_step_s": med, "sum_over_plain": med["sum"] / med["plain"], "sum_over_stock": med["sum"] / med["stock"],
                    "stock_over_plain": med["stock"] / med["plain"]}  # fmt: skip
    for m in methods:
        buffers = _buffers_info(trainers[m][0])
        report[m] = {
            "over_plain": med[m] / med["plain"],
            "over_sum": med[m] / med["sum"],
            **({"over_pcgrad": med[m] / med["pcgrad"]} if "pcgrad" in med and m != "pcgrad" else {}),
            "surgery_buffer_mb": buffers["bytes"] / 2**20,
            **(
                {"extra_peak_rss_mb": round(mem[m]["peak_rss_during_steps_mb"] - mem["plain"]["peak_rss_during_steps_mb"], 1)}
                if mem
                else {}
            ),
        }
    for m in ("sum", *methods):
        if f"{m}+distil" in med:  # distillation's cost: the same method on data with cached teacher outputs
            report[f"{m}+distil"] = {"over_same_method": med[f"{m}+distil"] / med[m], "over_plain": med[f"{m}+distil"] / med["plain"]}
    buffers = _buffers_info(trainers["sum"][0])  # T and P are the same for every mode
    report.update(
        tasks=buffers["tasks"],
        shared_params=buffers["p_shared"],
        T_x_P_x_4_mb=buffers["tasks"] * buffers["p_shared"] * 4 / 2**20,
        peak_rss_during_steps_mb={m: round(v["peak_rss_during_steps_mb"], 1) for m, v in mem.items()},
        steps=args.steps,
        batch_per_task=args.batch,
        torch_threads=torch.get_num_threads(),
    )
    report["step_times_s"] = {m: [round(t, 4) for t in v] for m, v in times.items()}
    if args.profile:
        report["profile_median_s"] = {m: p.medians() for m, p in phases.items()}
    print(json.dumps(report, indent=2))


def _buffers_info(trainer) -> dict:
    b = trainer._engine
    if b is None:  # a loss weighting (e.g. rlw) allocates no per-task buffer
        shared = sum(p.numel() for p in trainer.model.shared_parameters() if p.requires_grad)
        return {"tasks": len(trainer.model.task_names), "p_shared": shared, "bytes": 0}
    return {"tasks": len(b.tasks), "p_shared": b.p_shared, "bytes": b.nbytes()}


if __name__ == "__main__":
    main()
