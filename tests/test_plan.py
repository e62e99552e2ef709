"""The planner (python -m rfengine.plan): its count of a step's memory under FakeTensorMode agrees
with what the CPU allocator really allocates in the same step on real tensors (the profiler's
memory events), for two models and two objectives; and the command prints a plan."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from rfengine import config, plan

CASES = [("DiT-T/2", "fm"), ("DiT-T/2", "reflexflow"), ("DiT-S/4", "fm"), ("DiT-S/4", "reflexflow")]


def _cfg(arch, objective, *extra):
    return config.load(None, [f"model.arch={arch}", f"objective.name={objective}", "data.name=synthetic",
                              "data.channels=4", "data.image_size=16", "data.num_classes=10", *extra])


def _allocator_peak(cfg, batch) -> int:
    """Peak bytes the CPU allocator holds for tensors made during the measured step, from the
    profiler's allocation and free events (independent of the planner's own count)."""
    events = []

    class Profiled(plan.LiveBytes):  # the planner's step, with the profiler around the measured one
        def __enter__(self):
            self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.prof.__enter__()
            return super().__enter__()

        def __exit__(self, *exc):
            out = super().__exit__(*exc)
            self.prof.__exit__(*exc)
            events[:] = sorted((e.start_ns(), e.nbytes()) for e in self.prof.profiler.kineto_results.events()
                               if e.name() == "[memory]")
            return out

    old = plan.LiveBytes
    plan.LiveBytes = Profiled
    try:
        plan.step_memory(cfg, batch, fake=False)
    finally:
        plan.LiveBytes = old
    now = peak = 0
    for _, nbytes in events:
        now += nbytes
        peak = max(peak, now)
    return peak


@pytest.mark.parametrize("arch, objective", CASES)
def test_fake_step_count_matches_the_allocator_within_10_percent(arch, objective):
    cfg = _cfg(arch, objective)
    torch.set_num_threads(1)
    counted = plan.step_memory(cfg, 32).peak_bytes
    measured = _allocator_peak(cfg, 32)
    assert abs(counted - measured) <= 0.10 * measured, (counted, measured)


def test_rows_follow_the_objective():
    fm = plan.step_memory(_cfg("DiT-T/4", "fm"), 8)
    rf = plan.step_memory(_cfg("DiT-T/4", "reflexflow"), 8)
    half = plan.step_memory(_cfg("DiT-T/4", "reflexflow", "objective.adr.prob=0.5"), 8)
    assert (fm.forward_units, rf.forward_units, half.forward_units) == (24, 8 + 48, 4 + 36)
    assert rf.peak_bytes > fm.peak_bytes


@pytest.mark.parametrize("switch", [["objective.weighting=min_snr"], ["objective.time_sampler=logit_normal"],
                                    ["objective.cosine_weight=1"], ["objective.fc.bias_space=self"],
                                    ["objective.fc.mask=none"], ["objective.start=0.5"],
                                    ["objective.weighting=min_snr", "objective.time_sampler=logit_normal"]])
def test_every_objective_switch_plans(switch):
    """The planner builds the objective under FakeTensorMode: a switch that reads a value while it is
    built (Min-SNR's normaliser once did, through torch) must still plan, as `rfengine.plan` users run it."""
    for name in ("reflexflow",) if "objective.start=0.5" in switch else ("fm", "reflexflow"):  # fm has no switch
        got = plan.step_memory(_cfg("DiT-T/4", name, *switch), 8)
        assert got.peak_bytes > 0 and got.forward_units > 0


def test_plan_command_prints_per_gpu_memory_and_time(capsys):
    assert plan.main(["--config", "configs/imagenet256_fm.yaml", "--gpus", "8", "--set", "model.arch=SiT-S/2"]) == 0
    out = capsys.readouterr().out
    for text in ("per GPU:", "DDP gradient buckets", "activations (AC full", "largest per-GPU batch", "step time at 40%",
                 "the run: 400,000 steps in", "disk: a checkpoint"):
        assert text in out
    assert plan.main(["--config", "configs/imagenet256_fm.yaml", "--gpus", "3"]) == 1  # 256 does not split over 3


def test_the_run_takes_fm_steps_before_the_switch_and_its_folder_holds_the_checkpoints():
    """A scheduled objective's run: plain FM steps (the FM config's step time) until the switch, the
    objective's after; the disk is what the run's own pre-flight check asks for its checkpoints."""
    from rfengine import checkpoint
    from rfengine.models import build_model
    over = ["model.arch=DiT-T/4", "train.steps=1000", "train.batch_size=64"]
    p = plan.plan(config.load("configs/imagenet256_dit.yaml", over), 8)
    fm = plan.step_memory(config.load("configs/imagenet256_fm.yaml", over), 8)
    fm_seconds = fm.forward_units * fm.flops_per_forward / (p["peak_tflops"] * 1e12 * p["mfu"])
    assert p["switch_step"] == 880 and p["step_seconds_before_switch"] == pytest.approx(fm_seconds)
    assert p["step_seconds"] > 1.3 * fm_seconds  # the rollout's no-grad forward after the switch
    assert p["run_days"] == pytest.approx((880 * fm_seconds + 120 * p["step_seconds"]) / 86400)
    with torch.device("meta"):
        model = build_model("DiT-T/4", in_channels=4, input_size=32, num_classes=1000)
    ckpt = checkpoint.estimate_bytes(model, 8)
    assert p["checkpoint_bytes"] == ckpt and p["run_folder_bytes"] == 4 * ckpt + ckpt // 4  # keep_ckpts 3
