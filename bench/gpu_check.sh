#!/usr/bin/env bash
# On a GPU machine, in one command (well inside 8 minutes): the kernel tests natively on CUDA, then
# the kernel benchmarks and the fm-vs-reflexflow training-step benchmark; writes
# bench/results/<card>_<time>/{kernel_tests.txt,bench.json,bench.txt,summary.md,step_cost.*}.
# Needs torch with CUDA, triton, numpy, pyyaml, pytest, pytest-benchmark (with py-cpuinfo); pass a
# folder of wheels as WHEELS=... to install missing ones offline.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${WHEELS:-}" ]; then
    pip install -q --no-index --find-links "$WHEELS" pytest-benchmark py-cpuinfo pyyaml || true
fi
python - <<'PY' || exit 2
import importlib.util, sys, torch
missing = [m for m in ("triton", "pytest", "yaml", "numpy") if importlib.util.find_spec(m) is None]
if missing or not torch.cuda.is_available():
    sys.exit(f"gpu_check: missing {missing or ''} {'' if torch.cuda.is_available() else 'CUDA'}")
PY
have_bench=$(python -c "import importlib.util as u; print(int(u.find_spec('pytest_benchmark') is not None))")
card=$(python -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
dir=${RESULTS:-bench/results}/${card}_$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$dir"
export TRITON_INTERPRET=0 TORCHINDUCTOR_COMPILE_THREADS=1
echo "== kernel tests on CUDA ($card)"
timeout 150 python -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tee "$dir/kernel_tests.txt" | tail -n 5
if [ "$have_bench" != 1 ]; then
    echo "== benchmarks skipped: pytest-benchmark is not installed (bring wheels: WHEELS=dir bench/gpu_check.sh)"
    exit 0
fi
echo "== kernel benchmarks"
timeout 240 python -m pytest -q -p no:cacheprovider bench/test_kernels.py --benchmark-only --benchmark-json="$dir/bench.json" \
    --benchmark-columns=min,mean,median,stddev,rounds > "$dir/bench.txt" 2>&1
echo "kernel bench exit $?"
tail -n 3 "$dir/bench.txt"
python bench/report.py "$dir/bench.json" | tee "$dir/summary.md"
echo "== training-step benchmarks (fm vs reflexflow)"
timeout 150 python -m pytest -q -p no:cacheprovider bench/test_step_cost.py --benchmark-only \
    --benchmark-json="$dir/step_cost.json" --benchmark-columns=min,mean,rounds > "$dir/step_cost.txt" 2>&1
echo "step bench exit $?"
tail -n 3 "$dir/step_cost.txt"
python bench/report.py "$dir/step_cost.json" | tee "$dir/step_cost.md"
echo "results in $dir"
