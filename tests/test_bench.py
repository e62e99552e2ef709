"""The benchmark suite itself runs: one small group per op (eager, compiled and fused through the
interpreter), with its agreement checks, timing disabled. Speed is measured in bench/, never here."""
import os
import subprocess
import sys

from tests.helpers import ROOT


def test_bench_suite_smoke(inductor_cache):
    env = {**os.environ, "TRITON_INTERPRET": "1", "TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "bench/test_kernels.py",
                        "-k", "cifar32 and fp32 and fwdbwd or copy", "--benchmark-disable"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "10 passed" in r.stdout, r.stdout[-2000:]


def test_train_check_ladder_smoke(tmp_path):
    """bench/train_check.py runs the trainer per setting and tabulates the rates (tiny model, CPU)."""
    r = subprocess.run([sys.executable, "bench/train_check.py", "--arch", "DiT-T/4", "--batch", "8", "--steps", "7",
                        "--fp32-steps", "7", "--variants", "fp32,bf16", "--out", str(tmp_path),
                        "--set", "data.image_size=16", "--set", "data.channels=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    table = (tmp_path / "train_check.md").read_text()
    assert "| fp32 | ok |" in table and "| bf16 | ok |" in table
    assert (tmp_path / "fp32" / "summary.json").is_file()


def test_step_cost_bench_smoke(tmp_path):
    """bench/test_step_cost.py runs (tiny model, timing disabled): each objective's measured model
    FLOPs match its floor, which the bench asserts before timing."""
    env = {**os.environ, "RFENGINE_BENCH_ARCH": "DiT-T/4", "RFENGINE_BENCH_BATCH": "8"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "bench/test_step_cost.py",
                        "--benchmark-disable"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    import importlib.util
    spec = importlib.util.spec_from_file_location("step_cost", ROOT / "bench" / "test_step_cost.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert f"{len(mod.OBJECTIVES)} passed" in r.stdout, r.stdout[-2000:]  # every objective's eager step


def test_eval_memory_bench_smoke(tmp_path):
    """bench/eval_memory.py writes its synthetic files, measures both processes and removes the files (small N)."""
    r = subprocess.run([sys.executable, "bench/eval_memory.py", "--dir", str(tmp_path / "scratch"), "--n", "40",
                        "--ref-n", "20", "--size", "16", "--batch", "2", "--out", str(tmp_path / "mem.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    import json
    res = json.loads((tmp_path / "mem.json").read_text())
    assert res["score"]["n_samples"] == 40 and res["score"]["n_ref"] == 20
    assert res["network"]["peak_rss_mb"] > res["network"]["baseline_rss_mb"] > 0
    assert not list((tmp_path / "scratch").iterdir())
