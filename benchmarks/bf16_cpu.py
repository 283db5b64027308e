"""bf16 autocast against fp32 on this CPU: a MiniLM training step (forward, backward, AdamW) and
inference, batch 32 x 64 tokens, the two modes interleaved (issue 44).

    python benchmarks/bf16_cpu.py [--runs 4]

Prints the median seconds of each after a warm-up run, their ratio, and whether the CPU has
bf16 instructions (`hf_multitask.precision.cpu_has_native_bf16()`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModel

from hf_multitask.backbone import default_backbone
from hf_multitask.precision import cpu_has_native_bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4, help="interleaved runs of each mode (the first is a warm-up)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(default_backbone(), dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, 20000, (32, 64))
    mask = torch.ones_like(ids)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    @torch.no_grad()
    def infer(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(input_ids=ids, attention_mask=mask)

    print(f"native bf16 instructions: {cpu_has_native_bf16()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for fn in (step, infer):
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.runs):
            for bf16 in (False, True):
                start = time.perf_counter()
                fn(bf16)
                times[bf16].append(time.perf_counter() - start)
        fp32, bf16 = statistics.median(times[False][1:]), statistics.median(times[True][1:])
        print(f"{fn.__name__}: fp32 {fp32:.3f} s, bf16 {bf16:.3f} s, fp32/bf16 {fp32 / bf16:.2f}x")


if __name__ == "__main__":
    main()
