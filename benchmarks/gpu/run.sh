#!/usr/bin/env bash
# Surgery under DDP and FSDP2 on a CUDA machine (bf16). Not part of the CPU test command.
# From the repository root, inside the project's virtualenv with a CUDA build of torch:
#   bash benchmarks/gpu/run.sh [NUM_GPUS]      (default 2)
set -euo pipefail
gpus="${1:-2}"
python -c "import torch, sys; n = torch.cuda.device_count(); print('CUDA devices:', n); sys.exit(0 if n >= int(sys.argv[1]) else 1)" "$gpus" \
  || { echo "needs at least $gpus CUDA devices" >&2; exit 1; }
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false HF_MULTITASK_TEST_DEVICE=cuda
# 1. the engines' equivalence tests on NCCL/CUDA: FSDP2 sharded vs replicated, both DDP modes vs one process
python -m pytest -q tests/test_sharded_surgery.py tests/test_ddp.py
# 2. step time of summed-loss vs surgery steps on one GPU, bf16 autocast
python benchmarks/surgery_speed.py --steps 20 --batch 32 --device cuda --bf16
# 3. per-rank surgery memory, bytes on the wire and step time: DDP (both modes) and FSDP2
python benchmarks/surgery_memory.py --ranks "$gpus" --device cuda --steps 5
