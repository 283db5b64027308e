"""Per-rank surgery memory and bytes communicated per step: replicated vs sharded engines.

    python benchmarks/surgery_memory.py [--batch 4] [--ranks 2] [--device cpu|cuda] [--steps 3]

Measured on the packaged MiniLM (one surgery step of 3 tasks): N = 1 (replicated engine, one
process) and N = 2 (real gloo processes: DDP with ``ddp_surgery`` all_reduce and
reduce_scatter, and FSDP2 ``fully_shard`` with the sharded engine). The collectives issued by
the surgery step itself are counted by wrapping ``torch.distributed``; the buffer bytes come
from the engine; the step time is the median over ``--steps`` steps (forward, per-task
gradients, surgery). ``--device cuda`` runs on GPUs (NCCL, one process per GPU). Then the formulas for larger N, T and P (MiniLM, BERT-base, DeBERTa-v3-large;
3 and 8 tasks). Prints JSON and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TASK_NAMES = ["sst", "quora", "sts"]
# shared (encoder) parameters of well-known encoders, for the formula table
ENCODERS = {"MiniLM-L6 (384)": 22_565_376, "BERT-base": 108_891_648, "DeBERTa-v3-large": 434_012_160}


def formula(tasks: int, shared: int, ranks: int) -> dict[str, float]:
    """Per-rank fp32 surgery memory (MB) and elements sent per step by each engine (ring collectives)."""
    share = (ranks - 1) / ranks if ranks > 1 else 0.0
    mb = 4 / 2**20
    return {
        "replicated_mb": (tasks + 1) * shared * mb,
        "sharded_mb": (tasks + 1) * shared / ranks * mb,
        "ddp_all_reduce_sent": 2 * share * tasks * shared,
        "ddp_reduce_scatter_sent": share * (tasks + 1) * shared,
        "fsdp2_surgery_extra_sent": 2 * share * tasks * tasks,  # the T x T Gram all-reduce
    }


def _counting(calls: list) -> dict:
    real = {name: getattr(dist, name) for name in ("all_reduce", "reduce_scatter_tensor", "all_gather_into_tensor")}

    def wrap(name):
        def counted(tensor, *args, **kwargs):
            # bytes each rank sends with ring collectives: all-reduce 2(N-1)/N of the tensor,
            # reduce-scatter (N-1)/N of its input, all-gather (N-1)/N of its output
            n = dist.get_world_size()
            if name == "all_reduce":
                size = 2 * (n - 1) / n * tensor.numel() * tensor.element_size()
            elif name == "reduce_scatter_tensor":
                size = (n - 1) / n * args[0].numel() * args[0].element_size()
            else:
                size = (n - 1) / n * tensor.numel() * tensor.element_size()
            calls.append((name, int(size)))
            return real[name](tensor, *args, **kwargs)

        return counted

    for name in real:
        setattr(dist, name, wrap(name))
    return real


def measure(mode: str, batch: int, device: str = "cpu", steps: int = 3) -> dict:
    """One surgery step on the packaged MiniLM in this process (under torchrun for N = 2)."""
    from transformers import AutoTokenizer

    import hf_multitask as hm
    from hf_multitask.surgery import get_aggregator
    from hf_multitask.surgery.engine import ReplicatedEngine, ShardedEngine, ddp_collectives, fully_shard_multitask

    backbone = hm.default_backbone()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    torch.manual_seed(0)
    model = hm.MultitaskModel.from_encoder(backbone, tasks=hm.reference_tasks(), pair_encoding="cross")
    world = dist.get_world_size() if dist.is_initialized() else 1
    dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if device == "cuda" else torch.device("cpu")
    model.to(dev)
    if mode == "fsdp2":
        fully_shard_multitask(model, dev.type)
        engine = ShardedEngine(model, TASK_NAMES, all_reduce=ddp_collectives()[0])
    elif mode == "single":
        engine = ReplicatedEngine(model, TASK_NAMES, dev)
    else:
        engine = ReplicatedEngine(model, TASK_NAMES, dev, reduce=ddp_collectives(), mode=mode)
    texts = ["a short sentence for the benchmark", "another one, a little longer than the first"]
    aggregator = get_aggregator("pcgrad")
    times, calls = [], []
    for step in range(steps + 1):
        start = time.perf_counter()
        for spec in model.config.task_specs:
            cols = {c: [texts[i % 2] for i in range(batch)] for c in spec.text_columns}
            enc = tokenizer(*cols.values(), padding=True, return_tensors="pt").to(dev)
            labels = torch.zeros(batch, dtype=torch.long) if spec.kind == "classification" else torch.full((batch,), 2.5)
            loss = model(task=spec.name, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels.to(dev)).loss
            engine.add(spec.name, loss, batch)
        counted: list = []
        real = _counting(counted) if world > 1 else {}
        try:
            engine.finish(aggregator, scaler_active=False)
        finally:
            for name, fn in real.items():
                setattr(dist, name, fn)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        model.zero_grad(set_to_none=True)
        if step > 0:  # the first step warms up
            times.append(time.perf_counter() - start)
            calls = counted
    return {"mode": mode, "ranks": world, "buffer_mb": engine.nbytes() / 2**20, "surgery_collectives": calls,
            "surgery_bytes_sent": sum(size for _, size in calls), "step_seconds": statistics.median(times)}  # fmt: skip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--ranks", type=int, default=2, help="processes of the multi-rank runs")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
        result = measure(args.worker, args.batch, args.device, args.steps)
        if dist.get_rank() == 0:
            with open(args.out, "w") as f:
                json.dump(result, f)
        dist.destroy_process_group()
        return
    measured = [measure("single", args.batch, args.device, args.steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for mode in ("all_reduce", "reduce_scatter", "fsdp2"):
        out = tempfile.mktemp(suffix=".json")
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.ranks}", "--master_addr=127.0.0.1",
               f"--master_port={_port()}", os.path.abspath(__file__), "--worker", mode, "--out", out, "--batch", str(args.batch),
               "--device", args.device, "--steps", str(args.steps)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        with open(out) as f:
            measured.append(json.load(f))
    table = {name: {t: {n: formula(t, p, n) for n in (1, 2, 8)} for t in (3, 8)} for name, p in ENCODERS.items()}
    print(json.dumps({"measured": measured, "formula": table}, indent=1))
    print("\n| run | ranks | surgery buffer per rank (MB) | bytes each rank sends in the surgery step | step (s) |")
    print("|---|---|---|---|---|")
    for m in measured:
        print(f"| {m['mode']} | {m['ranks']} | {m['buffer_mb']:.1f} | {m['surgery_bytes_sent']:,} | {m['step_seconds']:.3f} |")
    print("\n| encoder | T | N | replicated MB/rank | sharded MB/rank | DDP all-reduce sent (M el.) | DDP reduce-scatter sent (M el.) |")
    print("|---|---|---|---|---|---|---|")
    for name, by_t in table.items():
        for t, by_n in by_t.items():
            for n, f in by_n.items():
                print(f"| {name} | {t} | {n} | {f['replicated_mb']:.0f} | {f['sharded_mb']:.0f} | {f['ddp_all_reduce_sent'] / 1e6:.0f} | "
                      f"{f['ddp_reduce_scatter_sent'] / 1e6:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
