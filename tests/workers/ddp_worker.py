"""Worker for the DDP tests: trains a tiny model (or takes one hand-made step) and saves the result.

Run as ``python -m torch.distributed.run --nproc_per_node N ddp_worker.py OUT VOCAB BATCH AGG [OVERRIDES_JSON] [MODE]``;
AGG may list several methods, comma-separated (one launch trains each in turn).
MODE ``train`` (default) trains 3 steps and saves the parameters; MODE ``missing`` takes one
step in which the ranks hold different tasks (and different numbers of one shared task) and
saves the encoder and head gradients, with the single-process gradient of the pooled batch.
MODE ``slow_rank_checkpoint`` saves a checkpoint after 2 steps while rank 1 writes its RNG
state a second late (the wait only widens a window that is there anyway), and saves the
checkpoint's file sizes and the sizes its completion marker recorded.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for conftest

import torch  # noqa: E402
from conftest import deterministic_model, toy_encoded  # noqa: E402
from transformers import BertTokenizerFast  # noqa: E402

import hf_multitask as hm  # noqa: E402

# rank -> {task: example indices}: quora is on both ranks with 4 and 2 examples, sst and sts on one each
MISSING_SPLIT = {0: {"sst": range(0, 4), "quora": range(0, 4)}, 1: {"sts": range(0, 3), "quora": range(4, 6)}}


def main() -> None:
    out, vocab, batch, aggregators = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    overrides = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    mode = sys.argv[6] if len(sys.argv) > 6 else "train"
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    if mode == "missing":
        return missing_step(out, tokenizer, batch, aggregators, overrides)
    if mode == "slow_rank_checkpoint":
        return slow_rank_checkpoint(out, tokenizer, batch, aggregators, overrides)
    # AGG may list several methods (a,b,c): each trains in turn, results keyed by method
    results = {name: train(out, tokenizer, batch, name, overrides) for name in aggregators.split(",")}
    single = None if "," in aggregators else aggregators
    rank = results[aggregators.split(",")[0]]["rank"]
    if rank == 1:  # the methods' state on the other rank, to compare
        torch.save({k: r["state"] for k, r in results.items()} if single is None else results[single]["state"], out + ".rank1")
    if rank == 0:
        torch.save({k: r["saved"] for k, r in results.items()} if single is None else results[single]["saved"], out)


def _trainer(out: str, tokenizer, batch: int, aggregator: str, overrides: dict):
    model = deterministic_model()
    data = toy_encoded(tokenizer, model)
    settings = dict(output_dir=os.path.join(os.path.dirname(out), "run"), per_device_train_batch_size=batch, max_steps=3,
                    learning_rate=1e-3, report_to=[], use_cpu=os.environ.get("HF_MULTITASK_TEST_DEVICE", "cpu") == "cpu",
                    save_strategy="no", disable_tqdm=True, seed=0,
                    aggregator=aggregator, telemetry_steps=1)  # fmt: skip
    settings.update(overrides)
    args = hm.MultitaskTrainingArguments(**settings)
    return model, data, hm.MultitaskTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)


def train(out: str, tokenizer, batch: int, aggregator: str, overrides: dict) -> dict:
    model, _, trainer = _trainer(out, tokenizer, batch, aggregator, overrides)
    trainer.train()
    state = trainer.aggregator.state_dict()
    saved = {
        "world": trainer.args.world_size,
        "params": {n: p.detach().cpu().clone() for n, p in model.named_parameters()},
        "history": trainer.telemetry.history if trainer.telemetry is not None else [],
        "state": state,
    }
    return {"rank": trainer.args.process_index, "state": state, "saved": saved}


def missing_step(out: str, tokenizer, batch: int, aggregator: str, overrides: dict) -> None:
    model, data, trainer = _trainer(out, tokenizer, batch, aggregator, overrides)
    collate = hm.MultitaskCollator(tokenizer.pad_token_id)
    rank = trainer.args.process_index
    inputs = {t: {k: v.to(trainer.args.device) if isinstance(v, torch.Tensor) else v for k, v in collate([data[t][i] for i in idx]).items()}
              for t, idx in MISSING_SPLIT[rank].items()}  # fmt: skip
    trainer.training_step(trainer.model, inputs)
    grads = {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    if rank == 0:
        reference = deterministic_model()
        pooled = {t: [i for r in MISSING_SPLIT.values() for i in r.get(t, [])] for t in ("sst", "quora", "sts")}
        total = sum(reference(task=t, **collate([data[t][i] for i in idx])).loss for t, idx in pooled.items())
        total.backward()
        expected = {n: p.grad.detach().clone() for n, p in reference.named_parameters() if p.grad is not None}
        torch.save(
            {
                "world": trainer.args.world_size,
                "grads": grads,
                "expected": expected,
                "per_task_path": trainer._engine is not None,
                "examples_seen": trainer._pending_step,
            },
            out,
        )


def slow_rank_checkpoint(out: str, tokenizer, batch: int, aggregator: str, overrides: dict) -> None:
    import time

    from hf_multitask.checkpoints import COMPLETE_MARKER

    _, _, trainer = _trainer(out, tokenizer, batch, aggregator, {**overrides, "max_steps": 2, "save_strategy": "steps", "save_steps": 2})
    rank = trainer.args.process_index
    if rank == 1:
        write_rng = trainer._save_rng_state  # the timing is the test's; what is written is the Trainer's own

        def late(output_dir: str) -> None:
            time.sleep(1.0)
            write_rng(output_dir)

        trainer._save_rng_state = late
    trainer.train()
    if rank == 0:
        folder = os.path.join(trainer.args.output_dir, "checkpoint-2")
        on_disk = {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder)) if name != COMPLETE_MARKER}
        with open(os.path.join(folder, COMPLETE_MARKER)) as handle:
            recorded = json.load(handle)["files"]
        torch.save({"world": trainer.args.world_size, "on_disk": on_disk, "recorded": recorded}, out)


def _shutdown() -> None:
    """Leave the process group together: a rank exiting while the other still tears down gloo
    can abort ("terminate called without an active exception") and fail the run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    _shutdown()  # only after success: a rank that failed must not wait at a barrier for the other
