#!/usr/bin/env bash
# On a GPU machine, in one command (under 8 minutes): the real trainer on synthetic ImageNet-256 latents
# (SiT-B/2, batch 256) for fp32, bf16, bf16+compile, and bf16+compile with ReflexFlow (adr.prob 1 and
# 0.5): images/s, tokens/s, model TFLOP/s, MFU, peak memory, and the ReflexFlow step relative to FM
# next to its FLOP floor. Writes bench/results/<card>_<time>_train/{train_check.json,train_check.md,*.log}.
# ARCH=... BATCH=... override the model and batch; a setting that runs out of memory is recorded as such.
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_train_check: no CUDA device')" || exit 2
card=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
dir=${RESULTS:-bench/results}/${card}_$(date -u +%Y%m%dT%H%M%SZ)_train
export TRITON_INTERPRET=0
timeout 470 python bench/train_check.py --arch "${ARCH:-SiT-B/2}" --batch "${BATCH:-256}" --out "$dir"
echo "train check exit $?; results in $dir"
