"""Two real gloo processes on CPU give the same update as one process on the combined batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(nproc: int, out: Path, vocab: Path, batch: int, aggregator: str) -> dict:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(WORKER),
        str(out),
        str(vocab),
        str(batch),
        aggregator,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


@pytest.mark.parametrize("aggregator", ["pcgrad"])
def test_two_process_ddp_equals_one_process_on_the_combined_batch(tmp_path, tokenizer, aggregator):
    vocab = Path(tokenizer.vocab_file)
    two = _run(2, tmp_path / "two.pt", vocab, 4, aggregator)
    one = _run(1, tmp_path / "one.pt", vocab, 8, aggregator)
    assert two["world"] == 2 and one["world"] == 1, "the 2-process run must really be distributed"
    moved = 0
    for name, p in one["params"].items():
        q = two["params"][name]
        assert torch.allclose(p, q, atol=1e-6, rtol=1e-5), (name, (p - q).abs().max())
    init = __import__("conftest").deterministic_model()
    for name, p in init.named_parameters():
        moved += int(not torch.allclose(p, one["params"][name]))
    assert moved > 10, "training must have changed the parameters"
    assert [r["conflict/cos_sst_quora"] for r in two["history"]] == pytest.approx(
        [r["conflict/cos_sst_quora"] for r in one["history"]], abs=1e-5
    )
