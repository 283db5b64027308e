"""Worker for the sharded-surgery test: the engine code the trainer uses, in a minimal SGD loop.

``python -m torch.distributed.run --nproc_per_node N fsdp_worker.py OUT VOCAB MODE`` with MODE
``sharded`` (FSDP2 ``fully_shard`` on a CPU mesh, `ShardedEngine`) or ``replicated``
(one process, `ReplicatedEngine`, the combined batch). For each of PCGrad, GradVac and
CAGrad it takes 3 SGD steps (no clipping) over 3 tasks and saves the final full parameters,
the collectives issued inside the surgery step and the buffer sizes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for conftest

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from conftest import deterministic_model, toy_encoded  # noqa: E402
from transformers import BertTokenizerFast  # noqa: E402

import hf_multitask as hm  # noqa: E402
from hf_multitask.surgery import get_aggregator  # noqa: E402
from hf_multitask.surgery.engine import ReplicatedEngine, ShardedEngine, ddp_collectives, fully_shard_multitask  # noqa: E402

# HF_MULTITASK_TEST_DEVICE=cuda runs on GPUs (NCCL, one process per GPU): benchmarks/gpu/run.sh
DEVICE = os.environ.get("HF_MULTITASK_TEST_DEVICE", "cpu")
PER_RANK = 4
STEPS = 3
TASKS = ["sst", "quora", "sts"]


def run(aggregator_name: str, mode: str, tokenizer) -> dict:
    model = deterministic_model()
    data = toy_encoded(tokenizer, model, n=64)
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if DEVICE == "cuda" else torch.device("cpu")
    model.to(dev)
    collate = hm.MultitaskCollator(tokenizer.pad_token_id)
    world, rank = (dist.get_world_size(), dist.get_rank()) if mode == "sharded" else (1, 0)
    if mode == "sharded":
        fully_shard_multitask(model, dev.type)
        engine = ShardedEngine(model, TASKS, all_reduce=ddp_collectives()[0])
        per_rank = PER_RANK
    else:
        engine = ReplicatedEngine(model, TASKS, dev)
        per_rank = PER_RANK * 2  # the combined batch of the 2-rank run
    aggregator = get_aggregator(aggregator_name, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls: list[tuple[str, tuple]] = []
    for step in range(STEPS):
        for task in TASKS:
            start = step * 2 * PER_RANK + rank * per_rank
            batch = {
                k: v.to(dev) if isinstance(v, torch.Tensor) else v
                for k, v in collate([data[task][i] for i in range(start, start + per_rank)]).items()
            }
            loss = model(task=task, **batch).loss
            engine.add(task, loss, per_rank)
        if mode == "sharded":
            real = dist.all_reduce

            def counted(tensor, *args, real=real, **kwargs):
                calls.append(("all_reduce", tuple(tensor.shape)))
                return real(tensor, *args, **kwargs)

            dist.all_reduce = counted
            try:
                engine.finish(aggregator, scaler_active=False)
            finally:
                dist.all_reduce = real
        else:
            engine.finish(aggregator, scaler_active=False)
        optimizer.step()
        optimizer.zero_grad()
    params = {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu().clone() for n, p in model.named_parameters()}
    shared_total = sum(p.numel() for p in model.shared_parameters())
    local = getattr(engine, "p_local", getattr(engine, "p_shared", 0))
    return {"params": params, "calls": calls, "matrix_bytes": engine.matrix.numel() * 4, "p_local": local, "p_total": shared_total}


def main() -> None:
    out, vocab, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "sharded":
        dist.init_process_group("nccl" if DEVICE == "cuda" else "gloo")
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    results = {name: run(name, mode, tokenizer) for name in ("pcgrad", "gradvac", "cagrad")}
    if mode == "sharded":
        locals_ = [None] * dist.get_world_size()
        dist.all_gather_object(locals_, {n: r["p_local"] for n, r in results.items()})
        for name, r in results.items():
            r["p_local_all_ranks"] = [d[name] for d in locals_]
        world = dist.get_world_size()
        if dist.get_rank() == 0:
            torch.save({"world": world, **results}, out)
        dist.destroy_process_group()
    else:
        torch.save({"world": 1, **results}, out)


if __name__ == "__main__":
    main()
