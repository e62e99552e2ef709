"""Throughput telemetry: the DiT FLOP count, the model rows each objective sends (the basis of MFU),
the warm-up rule, the peak table, per-phase times and the TensorBoard/metrics output of a run."""
import json

import pytest
import torch

from rfengine import config
from rfengine.models import build_model
from rfengine.objectives import build_objective
from rfengine.telemetry import ModelRows, PhaseTimer, Throughput, peak_tflops
from rfengine.trainer import Trainer
from tests.helpers import read_metrics, tiny_cfg


def test_dit_flops_match_the_published_counts():
    """The DiT paper's Gflops (multiply-adds) at 256x256 (32x32x4 latents): B/2 23.01, XL/2 118.64."""
    for arch, gmacs in (("DiT-B/2", 23.01), ("DiT-XL/2", 118.64), ("SiT-XL/2", 118.64)):
        with torch.device("meta"):  # shapes only
            m = build_model(arch, in_channels=4, input_size=32, num_classes=1000)
        assert m.forward_flops() / 2e9 == pytest.approx(gmacs, rel=2e-3), arch


@pytest.mark.parametrize("name, extra, units_per_image", [
    ("fm", [], 3),                                            # forward + backward
    ("reflexflow", [], 7),                                    # rollout 1 + two branches x 3
    ("reflexflow", ["objective.adr.weight=0"], 3 + 1 + 1),    # FC only: rollout and v_hat without graph
    ("reflexflow", ["objective.adr.steps=2"], 2 + 6),
])
def test_model_rows_count_what_each_objective_computes(name, extra, units_per_image):
    model = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10)
    obj = build_objective(config.load(None, [f"objective.name={name}", *extra]).objective)
    rows = ModelRows(model)
    x1, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    loss, _ = obj.loss(model, x1, y, 0)
    loss.backward()
    assert rows.forward_units() == 8 * units_per_image
    assert rows.forward_units() == 0  # reset by the reading
    rows.remove()


def test_partial_rollout_counts_only_the_rolled_rows():
    model = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10)
    obj = build_objective(config.load(None, ["objective.name=reflexflow", "objective.adr.prob=0.5"]).objective)
    rows = ModelRows(model)
    torch.manual_seed(0)
    loss, m = obj.loss(model, torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,)), 0)
    n = round(float(m["rolled_frac"]) * 64)
    assert rows.forward_units() == 64 * 3 + 4 * n  # the (3 + 4p)/3 floor, exactly


def test_throughput_drops_the_warmup_intervals():
    meter = Throughput(warmup=3)
    for _ in range(2):
        meter.add(10)
    assert meter.read(torch.device("cpu"))[2] is False
    meter.add(10)
    assert meter.read(torch.device("cpu"))[2] is False  # step 3 is still warm-up
    assert meter.steady_rate is None
    meter.add(10)
    rate, seconds, steady = meter.read(torch.device("cpu"))
    assert steady and meter.steady_images == 10 and meter.steady_rate == pytest.approx(rate)


def test_peak_table_and_override():
    assert peak_tflops(torch.device("cpu"), "bf16") is None  # MFU unavailable, not an error
    assert peak_tflops(torch.device("cpu"), "bf16", override=100.0) == 100.0


def test_phase_timer_times_only_active_steps():
    timer = PhaseTimer(torch.device("cpu"))
    timer.start(False)
    with timer.phase("data"):
        pass
    assert timer.read() == {}
    timer.start(True)
    with timer.phase("fwd_bwd"):
        timer.times["nograd"] = 0.001  # as the no-grad model hooks would add
        torch.ones(100).sum()
    out = timer.read()
    assert set(out) == {"time_fwd_bwd_ms", "time_nograd_ms"}
    assert out["time_nograd_ms"] == pytest.approx(1.0)


def test_run_logs_rates_phases_memory_and_tensorboard(tmp_path):
    cfg = tiny_cfg(tmp_path, "train.steps=12", "train.log_every=4", "objective.name=reflexflow",
                   "train.peak_tflops=1.0")
    summary = Trainer(cfg).run()
    rows = read_metrics(tmp_path)
    for key in ("images_per_s", "tokens_per_s", "model_tflops", "mfu", "time_data_ms", "time_nograd_ms",
                "time_fwd_bwd_ms", "time_optimizer_ms", "peak_rss_gb"):
        assert key in rows[-1], key
    assert rows[-1]["tokens_per_s"] == pytest.approx(rows[-1]["images_per_s"] * 16)  # DiT-T/4 on 16x16: 16 tokens
    assert rows[-1]["mfu"] == pytest.approx(rows[-1]["model_tflops"] / 1.0)
    assert summary["throughput"]["images_per_s"] > 0  # steps 9-12: the first 5 steps are warm-up
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    json.dumps(summary)


def test_metrics_agreed_over_processes_take_maxima_by_max(monkeypatch):
    """Two processes (simulated): fc_w_max is the larger of the two maxima, the other metrics their mean."""
    from rfengine import telemetry
    other = {"loss": 3.0, "fc_w_max": 7.0, "fc_w_mean": 2.0}

    def fake_all_reduce(t, op=torch.distributed.ReduceOp.SUM):
        names = sorted(k for k in other if (k.endswith("_max") == (op == torch.distributed.ReduceOp.MAX)))
        theirs = torch.tensor([other[k] for k in names])
        return torch.maximum(t, theirs) if op == torch.distributed.ReduceOp.MAX else t + theirs
    monkeypatch.setattr(telemetry.parallel, "all_reduce", fake_all_reduce)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    mine = {"loss": torch.tensor(1.0), "fc_w_max": torch.tensor(4.0), "fc_w_mean": torch.tensor(1.0)}
    assert telemetry.reduce_metrics(mine, torch.device("cpu")) == {"fc_w_max": 7.0, "fc_w_mean": 1.5, "loss": 2.0}
