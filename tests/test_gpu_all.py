"""bench/gpu_all.sh, the one-call GPU verification, cannot rot: its CPU dry run (DRY_RUN=1) runs every
stage at tiny shapes, on the fewest cases that reach every part of the summary, and writes the files the
GPU run writes; its stage budgets fit 9 minutes; the torch API check it starts with catches a name torch
lacks; and the main job's count of device syncs per step that logs nothing (bench/sync_count.py) counts
what it is given."""
import json
import os
import re
import subprocess

from tests.helpers import ROOT


def test_stage_budgets_fit_nine_minutes():
    text = (ROOT / "bench" / "gpu_all.sh").read_text()
    stages = re.split(r'\nstage "', text)[1:]
    budgets = [int(re.match(r'\d [a-z]+" (\d+)', s).group(1)) for s in stages]
    assert len(budgets) == 7 and sum(budgets) <= 540, budgets
    for budget, body in zip(budgets, stages):  # every command of a stage runs under the stage's limit
        limits = [int(n) for n in re.findall(r'\btimeout "\$\(budget (\d+)\)" python', body)]
        assert limits and max(limits) <= budget, (budget, limits)
        assert not re.findall(r"\btimeout \d+ python", body), "a fixed limit would also bind the dry run"


def test_dry_run_writes_every_result_file(tmp_path):
    out = tmp_path / "out"
    # the script as a user runs it: without this pytest's variables (under pytest-xdist, PYTEST_XDIST_WORKER
    # would make the script's own benchmark run think it is an xdist worker and refuse --benchmark-only)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}, "DRY_RUN": "1", "OUT": str(out),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    r = subprocess.run(["bash", "bench/gpu_all.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench.json", "env.txt", "kernel_tests.txt", "log.txt", "main_job.json", "plan.json",
                     "summary.md", "train_check.json"], files  # at most 8 files come back from the GPU machine
    assert "0 missing" in (out / "env.txt").read_text()
    assert " passed" in (out / "kernel_tests.txt").read_text()
    ladder = json.loads((out / "train_check.json").read_text())["results"]
    assert [x["variant"] for x in ladder] == ["bf16_compile", "bf16_compile_rf"]  # the dry run's two settings
    assert all(x["status"] == "ok" for x in ladder), ladder
    assert set(json.loads((out / "plan.json").read_text())) == {x["variant"] for x in ladder}  # planned: what ran
    main = json.loads((out / "main_job.json").read_text())  # the main job ran through its switch
    assert main["exit"] == 0 and main["last_step"] == 40 and main["first_fc_step"] == 36 and main["fm_steps"] == 35
    assert main["finite"] and main["exported"]
    syncs = main["syncs"]  # on CPU nothing is counted, but every step that logs nothing is marked
    assert syncs["counted"] is False and syncs["exit"] == 0
    assert syncs["plain_steps"] == [s for s in range(6, 40) if s % 4], syncs["plain_steps"]
    summary = (out / "summary.md").read_text()
    for part in ("## Stages", "## Main job", "ran through its switch", "Device syncs: not counted", "## Kernels",
                 "## Trainer ladder",
                 "## Planner vs measured peak memory", "## Goals", "Measured copy bandwidth"):
        assert part in summary
    stage_rows = summary.split("## Stages")[1].split("\n## ")[0]
    assert "timed out" not in stage_rows and stage_rows.count("| ok |") == 6, stage_rows
    goals = summary.split("## Goals")[1]  # every goal the dry run's cases can reach was computed from them
    assert "GB/s (fp32)" in goals and "x (fp32)" in goals and "bf16_compile_rf: " in goals, goals


def test_a_stage_that_runs_out_of_its_budget_says_so(tmp_path):
    from bench.gpu_summary import summary
    stages = tmp_path / "stages.tsv"
    stages.write_text("0 env\t0\t15\n5 plan\t124\t20\n")
    text = summary(tmp_path, stages)
    assert "| 5 plan | 124 | 20 | **timed out** after its 20 s budget" in text and "| 0 env | 0 | 15 | ok |" in text


def test_api_check_finds_a_missing_torch_name(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("api_check", ROOT / "bench" / "api_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = tmp_path / "x.py"
    src.write_text("import torch\nfrom torch.nn import functional\ntorch.nn.functional.silu\ntorch.nn.nonexistent_layer\n"
                   "from torch.distributed.fsdp import no_such_thing\n"
                   "import torch.distributed.checkpoint as dcp\ndcp.async_save\ndcp.async_save_v9\n"
                   "from torch import distributed as dist\ndist.new_group\n")
    found = mod.names([src])
    assert "torch.distributed.checkpoint.async_save" in found and "torch.distributed.new_group" in found
    missing = sorted(n for n in found if not mod.resolves(n))
    assert missing == ["torch.distributed.checkpoint.async_save_v9", "torch.distributed.fsdp.no_such_thing",
                       "torch.nn.nonexistent_layer"]


def test_sync_count_counts_the_syncs_of_each_step_that_logs_nothing(tmp_path, monkeypatch):
    """bench/sync_count.py's bookkeeping, with torch's sync warning stood in for (it is raised on CUDA
    only): the flag read of every step syncs once, step 7 once more; logged, checkpoint and warm-up steps
    are left out, and the extra sync is found with its place."""
    import warnings

    import torch

    from bench.sync_count import SYNC, count
    from rfengine import trainer
    from tests.helpers import TINY, set_args
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "stand-in")
    real_reduce, real_ema, calls = trainer.parallel.all_reduce, trainer.ema_update, []

    def reduce(t, op=None):
        warnings.warn(f"called a {SYNC}")  # the flag read (and the logged steps' metrics)
        return real_reduce(t) if op is None else real_reduce(t, op=op)

    def ema(*a):
        calls.append(1)
        if len(calls) == 7:
            warnings.warn(f"called a {SYNC}")
        real_ema(*a)
    monkeypatch.setattr(trainer.parallel, "all_reduce", reduce)
    monkeypatch.setattr(trainer, "ema_update", ema)
    args = ["--config", "configs/tiny_fm.yaml", *set_args(*TINY, "train.log_every=4", "train.ckpt_every=6",
                                                          "train.steps=12", f"train.out_dir={tmp_path}")]
    result = count(args, warm=2, cuda=True)
    assert result["exit"] == 0 and result["plain_steps"] == [3, 5, 7, 9, 10, 11]
    assert result["syncs_per_plain_step"] == {3: 1, 5: 1, 7: 2, 9: 1, 10: 1, 11: 1}
    assert result["median"] == 1 and result["max"] == 2
    assert sum(result["sites"].values()) == 7 and any("test_gpu_all.py" in k for k in result["sites"])
