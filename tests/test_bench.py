"""The benchmark suite itself runs: one small group per op (eager, compiled and fused through the
interpreter), with its agreement checks, timing disabled. Speed is measured in bench/, never here."""
import os
import subprocess
import sys

from tests.helpers import ROOT


def test_bench_suite_smoke(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "bench/test_kernels.py",
                        "-k", "cifar32 and fp32 and fwdbwd or copy", "--benchmark-disable"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "10 passed" in r.stdout, r.stdout[-2000:]
