"""Exact gradient surgery on FSDP2 shards: 2 real gloo processes against one replicated process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_multitask.surgery.engine import engine_bytes_formula

WORKER = Path(__file__).with_name("fsdp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, out: Path, vocab: Path, mode: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(WORKER), str(out), str(vocab), mode]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("fsdp")
    vocab = Path(tokenizer.vocab_file)
    return _launch(2, folder / "sharded.pt", vocab, "sharded"), _launch(1, folder / "replicated.pt", vocab, "replicated")


@pytest.mark.parametrize("aggregator", ["pcgrad", "gradvac", "cagrad"])
def test_sharded_update_equals_the_replicated_update_on_the_combined_batch(runs, aggregator):
    sharded, replicated = runs
    assert sharded["world"] == 2
    got, want = sharded[aggregator]["params"], replicated[aggregator]["params"]
    assert got.keys() == want.keys()
    init = __import__("conftest").deterministic_model()
    moved = 0
    for name, p in want.items():
        torch.testing.assert_close(got[name], p, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.allclose(p, dict(init.named_parameters())[name]))
    assert moved > 10, "SGD must have moved the parameters"


def test_the_gram_all_reduce_is_the_only_extra_collective(runs):
    sharded, _ = runs
    for aggregator in ("pcgrad", "gradvac", "cagrad"):
        assert sharded[aggregator]["calls"] == [("all_reduce", (3, 3))] * 3, "one T x T all-reduce per step"


def test_per_rank_surgery_buffer_is_t_p_over_n(runs):
    sharded, replicated = runs
    total = sharded["pcgrad"]["p_total"]
    locals_ = sharded["pcgrad"]["p_local_all_ranks"]
    assert sum(locals_) == total, "the ranks' shards partition the shared parameters"
    assert max(locals_) <= total / 2 * 1.05
    assert sharded["pcgrad"]["matrix_bytes"] == 3 * locals_[0] * 4
    assert replicated["pcgrad"]["matrix_bytes"] == 3 * total * 4
    assert engine_bytes_formula(3, total, 2, sharded=True) <= engine_bytes_formula(3, total, 1, sharded=False) / 2 + 4 * 4


def test_trainer_picks_the_sharded_engine_under_fsdp2(tmp_path, tokenizer, monkeypatch):
    """The Trainer wiring, in one process: with FSDP2 reported by accelerate the trainer builds the
    sharded engine (here over one rank, whose shard is everything) and trains exactly as the
    replicated engine does."""
    from conftest import deterministic_model, toy_encoded, train_args

    import hf_multitask as hm
    import hf_multitask.trainer as trainer_module
    from hf_multitask.surgery.engine import ReplicatedEngine, ShardedEngine

    def train(fsdp2: bool):
        model = deterministic_model()
        data = toy_encoded(tokenizer, model, n=32)
        args = train_args(tmp_path / str(fsdp2), optim="sgd", max_grad_norm=0.0, learning_rate=0.1, max_steps=3, aggregator="pcgrad")
        with monkeypatch.context() as patch:
            if fsdp2:
                patch.setattr(hm.MultitaskTrainer, "_fsdp2", lambda self: True)
                patch.setattr(trainer_module, "ddp_collectives", lambda: (lambda tensor: None, None, None, 1, 0))
            trainer = hm.MultitaskTrainer(model=model, args=args, train_dataset=data)
            trainer.train()
        return trainer, {n: p.detach().clone() for n, p in model.named_parameters()}

    sharded, got = train(True)
    replicated, want = train(False)
    assert isinstance(sharded._engine, ShardedEngine) and isinstance(replicated._engine, ReplicatedEngine)
    for name, p in want.items():
        torch.testing.assert_close(got[name], p, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    assert sharded.task_steps == replicated.task_steps == {"sst": 3, "quora": 3, "sts": 3}


def test_an_aggregator_that_needs_full_vectors_is_refused_by_the_sharded_engines():
    from hf_multitask.surgery import Aggregator
    from hf_multitask.surgery.engine import ReplicatedEngine, ShardedEngine

    class NeedsVectors(Aggregator):
        name = "needs_vectors"
        needs_full_vectors = True

        def weights(self, gram, counts, tasks):
            return torch.ones(gram.shape[0], dtype=torch.float64)

    model = __import__("conftest").deterministic_model()
    sharded = ShardedEngine(model, ["sst"], all_reduce=lambda t: None)
    with pytest.raises(ValueError, match="needs the full gradient vectors, which the FSDP2 sharded engine never assembles"):
        sharded.finish(NeedsVectors(), scaler_active=False)
    scattered = ReplicatedEngine(model, ["sst"], torch.device("cpu"), reduce=(None,) * 5, mode="reduce_scatter")
    with pytest.raises(ValueError, match="reduce_scatter"):
        scattered.finish(NeedsVectors(), scaler_active=False)
