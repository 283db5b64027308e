"""Worker for the Trainer-under-FSDP2 tests: ``MultitaskTrainer`` launched as accelerate's FSDP2.

``python -m torch.distributed.run --nproc_per_node N fsdp_trainer_worker.py OUT VOCAB MODE``:

- MODE ``fsdp2`` (2 ranks, per-rank batch 4): ``--fsdp full_shard`` with ``fsdp_config
  {"version": 2}``, so accelerate builds its FSDP2 plugin and ``Accelerator.prepare`` runs
  ``fully_shard`` on the model, exactly as ``accelerate launch`` with ``fsdp_version: 2`` does.
  Trains PCGrad and GradVac for 4 SGD steps (no clipping) each, PCGrad once more after a
  2-step linear probe (LP-FT: the second trainer gets a model the first one sharded); then GradVac with AdamW (whose
  sharded optimizer state must be restored too) for 4 steps, saving a sharded checkpoint at
  step 2, from which a new trainer in a new folder resumes to step 4.
- MODE ``replicated`` (1 process, batch 8: the combined batch): the same runs without FSDP.

Saves the full parameters (gathered from the shards), ``evaluate()``'s scores and losses on the
training sets, the engine class, whether the parameters were DTensors, the aggregator state, the checkpoint's file names and (FSDP2) the parameters of
the model ``save_model`` wrote, loaded back with ``from_pretrained``.

The one patch, on CPU only: accelerate (1.15) enables FSDP only for GPU-like distributed types,
so on CPU it silently keeps ``MULTI_CPU`` (the trainer refuses that case).
`allow_fsdp_on_cpu()` makes ``AcceleratorState`` keep the FSDP plugin it was given on CPU
too, as it does on GPUs; nothing else of accelerate, transformers or the trainer is patched.
With ``HF_MULTITASK_TEST_DEVICE=cuda`` (``benchmarks/gpu/run.sh``) nothing is patched.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for conftest

import torch  # noqa: E402
from conftest import deterministic_model, toy_encoded  # noqa: E402
from transformers import BertTokenizerFast  # noqa: E402

import hf_multitask as hm  # noqa: E402

STEPS = 4
# HF_MULTITASK_TEST_DEVICE=cuda runs on GPUs (NCCL, one process per GPU), where accelerate enables FSDP itself
DEVICE = os.environ.get("HF_MULTITASK_TEST_DEVICE", "cpu")


def allow_fsdp_on_cpu() -> None:
    import accelerate.state as state
    from accelerate.utils import DistributedType

    original = state.AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    state.AcceleratorState.__init__ = init


def _args(
    out_dir: str, mode: str, aggregator: str, max_steps: int, save_steps: int, optim: str, lr: float | None = None
) -> hm.MultitaskTrainingArguments:
    settings = dict(output_dir=out_dir, per_device_train_batch_size=4 if mode == "fsdp2" else 8, max_steps=max_steps,
                    learning_rate=lr or (0.1 if optim == "sgd" else 1e-3), optim=optim, max_grad_norm=0.0, report_to=[], use_cpu=DEVICE == "cpu", disable_tqdm=True, seed=0,
                    aggregator=aggregator, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500)  # fmt: skip
    if mode == "fsdp2":
        settings.update(fsdp="full_shard", fsdp_config={"version": 2, "state_dict_type": "SHARDED_STATE_DICT"})
    return hm.MultitaskTrainingArguments(**settings)


def train(
    tokenizer,
    out_dir: str,
    mode: str,
    aggregator: str,
    max_steps: int,
    resume: str | None = None,
    save_steps: int = 0,
    optim: str = "sgd",
    probe_steps: int = 0,
    lr: float | None = None,
):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model)
    if probe_steps:  # LP-FT: a first trainer (heads only) shards the model; the second must take it as it is
        probe = _args(os.path.join(out_dir, "probe"), mode, aggregator, probe_steps, 0, optim, lr)
        hm.schemes.lpft.linear_probe(model, data, probe, processing_class=tokenizer)
    trainer = hm.MultitaskTrainer(
        model=model, args=_args(out_dir, mode, aggregator, max_steps, save_steps, optim, lr), train_dataset=data, processing_class=tokenizer
    )
    trainer.train(resume_from_checkpoint=resume)
    metrics = trainer.evaluate(data)  # every rank evaluates the whole set: the sharded forwards stay in step
    wrapped = trainer.model_wrapped
    full = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone() for n, p in wrapped.named_parameters()}
    return trainer, {
        "params": {n.removeprefix("module."): p for n, p in full.items()},
        "engine": type(trainer._engine).__name__,
        "dtensor": any(hasattr(p, "full_tensor") for p in wrapped.parameters()),
        "state": trainer.aggregator.state_dict(),
        "task_steps": dict(trainer.task_steps),
        "eval": {k: v for k, v in metrics.items() if k.endswith("_score") or k.endswith("_loss")},
    }


def main() -> None:
    out, vocab, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "fsdp2" and DEVICE == "cpu":
        allow_fsdp_on_cpu()
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    folder = os.path.dirname(out)
    results = {}
    _, results["lpft"] = train(tokenizer, os.path.join(folder, mode, "lpft"), mode, "pcgrad", STEPS, probe_steps=2, lr=0.02)
    for aggregator in ("pcgrad", "gradvac"):
        trainer, results[aggregator] = train(tokenizer, os.path.join(folder, mode, aggregator), mode, aggregator, STEPS)
    if mode == "fsdp2":
        saved = os.path.join(folder, mode, "saved")
        trainer.save_model(saved)  # the last (GradVac) trainer: full weights, whatever the state_dict_type
        if trainer.args.process_index == 0:
            loaded = hm.MultitaskModel.from_pretrained(saved)
            results["saved"] = {n: p.detach().clone() for n, p in loaded.named_parameters()}
        whole = os.path.join(folder, mode, "whole")
        _, results["whole"] = train(tokenizer, whole, mode, "gradvac", STEPS, save_steps=STEPS // 2, optim="adamw_torch")
        checkpoint = os.path.join(whole, f"checkpoint-{STEPS // 2}")
        _, results["resumed"] = train(tokenizer, os.path.join(folder, mode, "resumed"), mode, "gradvac", STEPS, resume=checkpoint,
                                      optim="adamw_torch")  # fmt: skip
        results["checkpoint_files"] = sorted(os.listdir(checkpoint))
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        torch.save({"world": dist.get_world_size() if dist.is_initialized() else 1, **results}, out)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
