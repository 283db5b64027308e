"""Shared fixtures: tiny random-init encoders and a tiny character-level WordPiece tokenizer."""

from __future__ import annotations

import os
import socket
import string
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast, DistilBertConfig, RobertaConfig

import hf_multitask as hm

# bf16 on a CPU without bf16 instructions is refused (it is many times slower); the tests run it on tiny models
# to check its numerics on any CPU, so they allow it (tests of the refusal remove this)
os.environ.setdefault("HF_MULTITASK_ALLOW_SLOW_BF16", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
WORKERS = Path(__file__).resolve().parent / "workers"  # scripts run in their own processes (torchrun, a kill)
GLOO_TEARDOWN_ABORT = "terminate called without an active exception"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_distributed(nproc: int, worker: Path, *args: str) -> subprocess.CompletedProcess:
    """Run ``worker`` on ``nproc`` real processes with ``torch.distributed.run`` (gloo on CPU,
    one thread each; NCCL on CUDA with ``HF_MULTITASK_TEST_DEVICE=cuda``).

    A known gloo race on CPU: a rank occasionally aborts in C++ teardown ("terminate called
    without an active exception", about 1 launch in 30 here). Such a launch runs once more on a
    fresh port; any other failure, or a second abort, is returned as it is.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if os.environ.get("HF_MULTITASK_TEST_DEVICE", "cpu") == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"

    def once() -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(worker), *map(str, args)]  # fmt: skip
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    proc = once()
    if proc.returncode != 0 and GLOO_TEARDOWN_ABORT in proc.stderr:
        proc = once()
    return proc


@pytest.fixture
def shared_data() -> Path:
    """The reference data beside the repository (``../shared/data``). Our CI has it and runs
    these tests; on a machine without it (a user's fresh clone) they are skipped, saying why."""
    if not (SHARED_DATA / "quora-train.csv").is_file():
        pytest.skip(f"needs the CS224N reference data in {SHARED_DATA}, which this machine does not have")
    return SHARED_DATA


# Two model instances with equal weights give outputs equal only up to rounding: CPU kernels
# may take other code paths for differently aligned buffers (a reload once differed by 5.6e-9).
# Outputs are therefore compared with a tight tolerance, which still catches a wrong head, a
# lost adapter or a mis-routed task (differences of 1e-2 and more); weights after a load are
# compared exactly (see ``assert_same_weights``), since exact storage is what saving promises.
OUTPUT_RTOL, OUTPUT_ATOL = 1e-5, 1e-6


def assert_same_outputs(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Outputs of two model instances that should compute the same function."""
    torch.testing.assert_close(actual, expected, rtol=OUTPUT_RTOL, atol=OUTPUT_ATOL, msg=lambda m: f"{what}\n{m}" if what else m)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Bit-exact parameters and buffers, names included (a save/load round trip stores floats exactly)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), sorted(set(sa) ^ set(sb))
    for name, value in sa.items():
        assert torch.equal(value, sb[name]), name


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = (
    SPECIALS
    + list(string.ascii_lowercase + string.digits + string.punctuation)
    + [f"##{c}" for c in string.ascii_lowercase + string.digits]
)


def tiny_encoder_config(arch: str = "bert"):
    common = dict(vocab_size=len(VOCAB) + 2, max_position_embeddings=128)
    if arch == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **common)
    if arch == "roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, pad_token_id=0, **common)
    if arch == "distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, pad_token_id=0, **common)
    raise ValueError(arch)


def tiny_model(tasks=None, arch: str = "bert", seed: int = 0, **kwargs) -> hm.MultitaskModel:
    torch.manual_seed(seed)
    config = hm.MultitaskConfig(encoder_config=tiny_encoder_config(arch), tasks=tasks or hm.reference_tasks(), **kwargs)
    return hm.MultitaskModel(config)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory) -> BertTokenizerFast:
    folder = tmp_path_factory.mktemp("tok")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    # transformers 5 takes the vocabulary as vocab=; vocab_file= is silently ignored and gives a
    # 5-token vocabulary that maps every word to [UNK]
    tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    assert tok.vocab_size == len(VOCAB) and tok.unk_token_id not in tok("cat dog")["input_ids"], "the test vocabulary did not load"
    tok.vocab_file = str(vocab)  # where the DDP/FSDP workers read it from
    return tok


def write_tsv(path: Path, header: list[str], rows: list[list[str]], cs224n: bool = True) -> Path:
    """Write a CS224N-style file: leading unnamed index column, tab-separated."""
    lines = []
    if cs224n:
        lines.append("\t".join([""] + header))
        lines += ["\t".join([str(i)] + [str(x) for x in r]) for i, r in enumerate(rows)]
    else:
        lines.append("\t".join(header))
        lines += ["\t".join(str(x) for x in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


WORDS = ["good", "bad", "great", "awful", "fine", "dull", "fun", "sad", "film", "plot"]


def toy_task_data(n: int = 64, seed: int = 0):
    """Raw toy datasets for the reference trio with learnable labels."""
    import random

    import datasets

    rng = random.Random(seed)

    def sent():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))

    singles = [sent() for _ in range(n)]
    pairs = [(sent(), sent()) for _ in range(n)]
    ids = [str(i) for i in range(n)]
    sst = datasets.Dataset.from_dict({"id": ids, "sentence": singles, "label": [s.count("good") % 5 for s in singles]})
    quora = datasets.Dataset.from_dict(
        {
            "id": ids,
            "sentence1": [a for a, _ in pairs],
            "sentence2": [b for _, b in pairs],
            "label": [int(a.split()[0] == b.split()[0]) for a, b in pairs],
        }
    )
    sts = datasets.Dataset.from_dict(
        {
            "id": ids,
            "sentence1": [a for a, _ in pairs],
            "sentence2": [b for _, b in pairs],
            "label": [float(min(5, len(set(a.split()) & set(b.split())))) for a, b in pairs],
        }
    )
    return {"sst": sst, "quora": quora, "sts": sts}


def toy_encoded(tokenizer, model, n: int = 64, seed: int = 0):
    import hf_multitask as hm

    raw = toy_task_data(n, seed)
    return {
        s.name: hm.encode_task(raw[s.name], s, tokenizer, pair_encoding=model.config.task_pair_encoding(s)) for s in model.config.task_specs
    }


def deterministic_model(seed: int = 0, **kwargs):
    """Tiny model with every dropout off, so runs can be compared bit for bit."""
    cfg = tiny_encoder_config("bert")
    cfg.hidden_dropout_prob = 0.0
    cfg.attention_probs_dropout_prob = 0.0
    torch.manual_seed(seed)
    config = hm.MultitaskConfig(encoder_config=cfg, tasks=hm.reference_tasks(), head_dropout=0.0, **kwargs)
    return hm.MultitaskModel(config)


def task_losses(model, data, pad_token_id: int = 0) -> dict:
    """Each task's loss on its whole dataset (eval mode, no gradient)."""
    collate = hm.MultitaskCollator(pad_token_id)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = {t: float(model(task=t, **collate([d[i] for i in range(len(d))])).loss) for t, d in data.items()}
    model.train(was_training)
    return out


def train_args(output_dir, **overrides) -> hm.MultitaskTrainingArguments:
    """Quiet CPU training arguments for tiny-model runs."""
    kwargs = dict(output_dir=str(output_dir), per_device_train_batch_size=8, max_steps=4, learning_rate=1e-3, report_to=[], use_cpu=True,
                  save_strategy="no", disable_tqdm=True, seed=0)  # fmt: skip
    kwargs.update(overrides)
    return hm.MultitaskTrainingArguments(**kwargs)


def train_and_measure(model, tokenizer, output_dir, **overrides):
    """Train ``model`` on the toy data; returns (trainer, task losses before, task losses after)."""
    data = toy_encoded(tokenizer, model)
    trainer = hm.MultitaskTrainer(model=model, args=train_args(output_dir, **overrides), train_dataset=data, processing_class=tokenizer)
    before = task_losses(model, data, tokenizer.pad_token_id)
    trainer.train()
    return trainer, before, task_losses(model, data, tokenizer.pad_token_id)


# the start of a script run where importing hf_multitask fails (as on a machine without it)
WITHOUT_PACKAGE = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'hf_multitask' or name.startswith('hf_multitask.'):\n"
    "            raise ImportError('hf_multitask is not installed here')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def assert_loads_without_package(folder: Path, task: str, inputs: dict, expected: torch.Tensor) -> None:
    """Load ``folder`` with ``trust_remote_code`` in a fresh interpreter where importing
    hf_multitask fails, and check ``model(task=task, **inputs).logits == expected``."""
    import os
    import subprocess
    import sys
    import textwrap

    torch.save({"x": inputs, "expected": expected}, folder / "probe.pt")
    script = WITHOUT_PACKAGE + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert "hf_multitask" not in sys.modules
        probe = torch.load({str(folder / "probe.pt")!r})
        got = model(task={task!r}, **probe["x"]).logits
        torch.testing.assert_close(got, probe["expected"], rtol={OUTPUT_RTOL}, atol={OUTPUT_ATOL})
        print("REMOTE-OK", type(model).__module__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(folder / "modules")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=folder, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REMOTE-OK transformers_modules" in proc.stdout


RECIPE_WORDS = ["good", "bad", "great", "awful", "fine", "dull", "fun", "sad"]


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A saved tiny BERT encoder with its tokenizer: what the recipe takes as --backbone."""
    folder = tmp_path_factory.mktemp("backbone")
    torch.manual_seed(0)
    BertModel(tiny_encoder_config("bert")).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """CS224N-format reference files with 48 rows each: what the recipe takes as --data-dir."""
    folder = tmp_path_factory.mktemp("data")
    n = 48
    sent = [" ".join(RECIPE_WORDS[(i * 7 + k) % 8] for k in range(2 + i % 4)) for i in range(n)]
    write_tsv(folder / "ids-sst-train.csv", ["id", "sentence", "sentiment"], [[f"s{i}", sent[i], i % 5] for i in range(n)])
    write_tsv(
        folder / "quora-train.csv",
        ["id", "sentence1", "sentence2", "is_duplicate"],
        [[f"q{i}", sent[i], sent[(i + 1) % n], float(i % 2)] for i in range(n)],
    )
    write_tsv(
        folder / "sts-train.csv",
        ["id", "sentence1", "sentence2", "similarity"],
        [[f"t{i}", sent[i], sent[(i * 3) % n], float(i % 6)] for i in range(n)],
    )
    return folder


def recipe_flags(backbone: Path, data: Path, out: Path) -> list[str]:
    """The recipe flags of a quiet 3-step CPU run on the tiny backbone and data."""
    return ["--backbone", str(backbone), "--data-dir", str(data), "--output-dir", str(out), "--max-steps", "3",
            "--per_device_train_batch_size", "4", "--use_cpu", "true", "--disable_tqdm", "true", "--telemetry_steps", "1"]  # fmt: skip


def make_aggregator(name: str, **kwargs):
    """``get_aggregator(name, **kwargs)``, with row 0 ("0", the default name of the first row) as the
    primary task of the primary-aware methods, so generic property tests cover them too."""
    from hf_multitask.surgery import get_aggregator, method_class

    if method_class(name).uses_primary:
        kwargs.setdefault("primary", "0")
    return get_aggregator(name, **kwargs)
