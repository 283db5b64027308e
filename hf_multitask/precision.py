"""bf16 on the CPU: when it pays, and the autocast context prediction runs under.

``torch.autocast("cpu", dtype=torch.bfloat16)`` runs the encoder's matrix products in bf16. On a
CPU with bf16 instructions (x86: AVX512_BF16 or AMX-BF16, e.g. Intel Sapphire Rapids and later,
AMD Zen 4 and later; Arm: the BF16 extension) that is faster than fp32: 1.39x for a MiniLM
training step and 1.73x for inference on a 2-core AVX512_BF16 machine. On a CPU without them
bf16 is emulated and many times *slower*: 26x for the same training step and 7x for inference
on a 2-core AVX2 machine (AMD EPYC, Zen 3). So ``bf16`` on such a CPU is refused with a
message, unless ``HF_MULTITASK_ALLOW_SLOW_BF16=1`` says it is meant (to check numerics, say).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = [
    "ALLOW_SLOW_BF16",
    "autocast",
    "check_bf16_flag",
    "check_cpu_bf16",
    "cpu_has_native_bf16",
    "eval_dtype",
    "gpu_without_bf16",
    "parse_dtype",
]

ALLOW_SLOW_BF16 = "HF_MULTITASK_ALLOW_SLOW_BF16"
_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether this CPU has bf16 instructions: True or False on Linux (read from
    ``/proc/cpuinfo``, or from ``cpuinfo`` text), None where it cannot tell (other systems)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if platform.system() != "Linux" or not path.is_file():
            return None
        cpuinfo = path.read_text(errors="replace")
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            words = set(value.split())
            return any(f in words for f in _X86_BF16_FLAGS) or (key.strip() == "Features" and "bf16" in words)
    return None


def check_cpu_bf16(what: str, cpuinfo: str | None = None) -> None:
    """Refuse bf16 on a CPU known to lack bf16 instructions (``what`` names the flag), unless
    ``HF_MULTITASK_ALLOW_SLOW_BF16=1``."""
    if os.environ.get(ALLOW_SLOW_BF16) == "1" or cpu_has_native_bf16(cpuinfo) is not False:
        return
    raise ValueError(
        f"{what} on this CPU: it has no bf16 instructions (AVX512_BF16, AMX-BF16 or Arm BF16), so bf16 is emulated and runs many "
        "times slower than fp32 (a MiniLM training step 26x, inference 7x on an AVX2 CPU). Drop it and run in fp32; set "
        f"{ALLOW_SLOW_BF16}=1 to run it anyway (e.g. to check the numerics)"
    )


def gpu_without_bf16() -> str | None:
    """The accelerator this machine would train on, named, when it lacks bf16 (a V100 or a T4,
    say); None when there is no accelerator or it has bf16."""
    from transformers.utils import is_torch_bf16_gpu_available

    accelerator = getattr(torch, "accelerator", None)
    present = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    if not present or is_torch_bf16_gpu_available():
        return None
    if torch.cuda.is_available():
        return f"this GPU ({torch.cuda.get_device_name()})"
    return f"this {accelerator.current_accelerator().type.upper()} device" if accelerator is not None else "this GPU"


def check_bf16_flag(what: str, use_cpu: bool) -> bool:
    """Where ``--bf16`` (named ``what``) runs: True for the CPU (asked for with ``use_cpu``, or
    no accelerator on the machine; refused on a CPU without bf16 instructions, see
    [`check_cpu_bf16()`][hf_multitask.precision.check_cpu_bf16]), False for an accelerator with bf16. An accelerator without bf16
    is refused with a message naming it and suggesting ``--fp16``: the run is never moved to
    the CPU unasked."""
    if not use_cpu:
        device = gpu_without_bf16()
        if device is not None:
            raise ValueError(
                f"{what}: {device} has no bf16 support. Use --fp16 for mixed precision on it (or neither, for fp32); "
                "add --use_cpu only if you mean to train on the CPU instead"
            )
        accelerator = getattr(torch, "accelerator", None)
        if accelerator.is_available() if accelerator is not None else torch.cuda.is_available():
            return False
    check_cpu_bf16(what)  # emulated bf16 is many times slower than fp32: refused, with why
    return True


def parse_dtype(name: str | None, flag: str = "--dtype") -> torch.dtype | None:
    """``float32`` / ``fp32`` (None: no autocast) or ``bfloat16`` / ``bf16``; anything else is a
    ``ValueError`` naming ``flag``."""
    if name is None:
        return None
    key = str(name).strip().lower()
    if key in ("float32", "fp32", "auto", ""):
        return None
    if key in ("bfloat16", "bf16"):
        return torch.bfloat16
    raise ValueError(f"{flag}: unknown dtype {name!r}; choose float32 or bfloat16")


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` on ``device`` in ``dtype`` (nothing with None); the model's weights stay fp32."""
    if dtype is None:
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def eval_dtype(args: object) -> torch.dtype | None:
    """The autocast dtype evaluation runs in under training arguments ``args``: bf16 with
    ``bf16_full_eval``, fp16 with ``fp16_full_eval``, else None (fp32). The weights stay fp32:
    evaluation is faster and its metrics may move a little, as with the Trainer's own flags."""
    if getattr(args, "bf16_full_eval", False):
        return torch.bfloat16
    if getattr(args, "fp16_full_eval", False):
        return torch.float16
    return None
