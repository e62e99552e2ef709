#!/usr/bin/env bash
# One call on a GPU machine (H100/H200, nothing installed: run with PYTHONPATH=. on the image's torch 2.11,
# triton 3.6, pytest, pytest-benchmark), in at most 9 minutes, every stage under its own time limit:
#   0 env      (15 s)  versions; every torch API the engine names exists in this torch
#   1 kernels  (90 s)  tests/kernels natively on CUDA (fused vs reference, AOT compiles for real targets)
#   2 bench   (120 s)  kernel benchmarks at the ImageNet-256 latent shape, fp32 and bf16: fused vs eager vs
#                      compiled, and the copy bandwidth
#   3 ladder  (200 s)  the real trainer, SiT-B/2 at batch 256 on synthetic latents: bf16 FM eager, bf16 FM
#                      compiled, bf16 ReflexFlow compiled at adr.prob 1 and 0.5
#   4 main     (85 s)  the main job itself, configs/imagenet256_dit.yaml (SiT-B/2, bf16, compile) on synthetic
#                      latents, 40 steps, so that its switch (0.88: step 35) happens inside the run, every 4th step
#                      logged (36, its first FC step, among them), under torch.cuda.set_sync_debug_mode("warn"):
#                      the device syncs of every step that is not logged are counted (bench/sync_count.py)
#   5 plan     (20 s)  the planner's predicted peak memory for the ladder's settings (those stage 3 ran)
#   6 summary  (10 s)  summary.md: the stages (a stage that ran out of its budget says so), the measurements
#                      against the goals
# Files (at most 8, 1 folder deep, so that the folder can be carried back whole) go to $OUT when set, else
# bench/results/<card>_<time>/. DRY_RUN=1 runs the same stages on CPU at tiny shapes, with no time limits
# (budgets belong to the GPU run: a slow CPU must not fail the dry run), so tests/test_gpu_all.py can run
# it and this script cannot rot.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)" TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-8}
export TRITON_DEFAULT_FP_FUSION=1
DRY=${DRY_RUN:-0}
if [ "$DRY" = 1 ]; then
    card=cpu-dry-run
    export TRITON_INTERPRET=1
else
    python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_all: no CUDA device (DRY_RUN=1 for the CPU dry run)')" || exit 2
    card=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
    export TRITON_INTERPRET=0
fi
dir=${OUT:-bench/results/${card}_$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
exec > >(tee "$dir/log.txt") 2>&1
stage() { echo "== stage $1 ($(date -u +%H:%M:%S), budget $2 s)"; current="$1"; current_budget=$2; }
budget() { if [ "$DRY" = 1 ]; then echo 0; else echo "$1"; fi; }  # timeout 0: no limit (the dry run)
record() { printf '%s\t%s\t%s\n' "$current" "$1" "$current_budget" >> "$work/stages.tsv"; }  # stage exit budget

stage "0 env" 15
{ python - <<'PY'
import platform, subprocess, torch
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = None
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or "unknown"
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(f"device {dev}; torch {torch.__version__} (CUDA {torch.version.cuda}); triton {tv}; python {platform.python_version()}; commit {commit}")
PY
  timeout "$(budget 15)" python bench/api_check.py; } > "$dir/env.txt" 2>&1
rc=$?; record $rc; echo "api check exit $rc"; cat "$dir/env.txt" | head -n 12

stage "1 kernels" 90
if [ "$DRY" = 1 ]; then sel=(-k "deterministic"); else sel=(); fi  # dry: one test that runs every fused op
timeout "$(budget 90)" python -m pytest -q -p no:cacheprovider tests/kernels "${sel[@]}" > "$dir/kernel_tests.txt" 2>&1
rc=$?; record $rc; echo "kernel tests exit $rc"; tail -n 3 "$dir/kernel_tests.txt"

stage "2 bench" 120
if [ "$DRY" = 1 ]; then  # the cases summary.md's goals read: fused ADR forward, FC forward+backward, copy
    sel=(-k "cifar32 and fp32 and (adr_euler and fused and fwd and not fwdbwd or fc_weighted and fwdbwd and (fused or eager)) or copy")
    export RFENGINE_BENCH_ROUNDS=1  # interpreted kernels: one timed round each fills the files
else
    sel=(-k "latent256 or copy")
fi
timeout "$(budget 120)" python -m pytest -q -p no:cacheprovider bench/test_kernels.py "${sel[@]}" --benchmark-only \
    --benchmark-json="$dir/bench.json" --benchmark-columns=min,mean,median,stddev,rounds > "$work/bench.txt" 2>&1
rc=$?; record $rc; echo "kernel bench exit $rc"; tail -n 2 "$work/bench.txt"

stage "3 ladder" 200
ladder=(--variants bf16,bf16_compile,bf16_compile_rf,bf16_compile_rf_p0.5)
if [ "$DRY" = 1 ]; then  # an FM and a ReflexFlow setting: what the summary's FLOP-floor goal compares
    ladder=(--variants bf16_compile,bf16_compile_rf)
    small=(--set data.image_size=16 --set data.channels=1)
    timeout "$(budget 200)" python bench/train_check.py --arch DiT-T/4 --batch 8 --steps 7 --timeout 0 "${ladder[@]}" \
        "${small[@]}" --set train.compile=false --out "$work/ladder" > "$work/ladder.txt" 2>&1
else
    small=()
    timeout "$(budget 200)" python bench/train_check.py --arch SiT-B/2 --batch 256 --steps 20 --timeout 49 "${ladder[@]}" \
        --out "$work/ladder" > "$work/ladder.txt" 2>&1
fi
rc=$?; record $rc; echo "ladder exit $rc"; cp "$work/ladder/train_check.json" "$dir/" 2>/dev/null; tail -n 8 "$work/ladder.txt"

stage "4 main" 85
main=(--set data.name=synthetic --set data.channels=4 --set data.image_size=32 --set train.steps=40
      --set train.log_every=4 --set train.ckpt_every=20 --set train.sample_every=100000 --set sample.num_images=4
      --set train.progress=false --set train.tensorboard=false --set "train.out_dir=$work/main")
if [ "$DRY" = 1 ]; then main+=(--set model.arch=DiT-T/4 --set data.image_size=8 --set train.batch_size=8
                               --set train.compile=false --set sample.steps=2); fi
timeout "$(budget 85)" python bench/sync_count.py --out "$work/syncs.json" -- --config configs/imagenet256_dit.yaml \
    "${main[@]}" > "$work/main.txt" 2>&1
rc=$?; record $rc; echo "main job exit $rc"; grep "^syncs:" "$work/main.txt"
python bench/gpu_summary.py main --dir "$work/main" --log "$work/main.txt" --rc $rc --syncs "$work/syncs.json" \
    --out "$dir/main_job.json"

stage "5 plan" 20
if [ "$DRY" = 1 ]; then
    plan_args=(--set model.arch=DiT-T/4 --set data.name=synthetic --set train.batch_size=8 "${small[@]}")
else
    plan_args=(--set model.arch=SiT-B/2 --set data.name=synthetic --set train.batch_size=256 --set data.image_size=32)
fi
timeout "$(budget 20)" python bench/gpu_summary.py plan --out "$dir/plan.json" "${ladder[@]}" -- "${plan_args[@]}"
rc=$?; record $rc; echo "plan exit $rc"

stage "6 summary" 10
timeout "$(budget 10)" python bench/gpu_summary.py summary --dir "$dir" --stages "$work/stages.tsv"
echo "summary exit $?; results in $dir"
