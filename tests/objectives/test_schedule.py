"""Scheduled objectives (docs/objectives.md section 6.2): exactly `fm` before `objective.start`, exactly the
configured objective after it, an `adr.prob` ramp that depends on the step only, and config rules."""
import pytest
import torch

from rfengine import config, parallel
from rfengine.models import build_model
from rfengine.objectives import Scheduled, build_objective


def _setup():
    torch.manual_seed(0)
    model = build_model("DiT-T/4", in_channels=1, input_size=16, num_classes=10)
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)


def _loss(obj, model, x1, y, step, seed=5):
    torch.manual_seed(seed)
    model.zero_grad()
    loss, metrics = obj.loss(model, x1, y, step)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad], metrics


def _cfg(*extra, steps=100):
    return config.load(None, ["objective.name=reflexflow", f"train.steps={steps}", *extra])


def test_before_the_switch_fm_after_it_the_objective_exactly():
    model, x1, y = _setup()
    cfg = _cfg("objective.start=10")
    sched = build_objective(cfg.objective, total_steps=cfg.train.steps)
    assert isinstance(sched, Scheduled) and sched.start == 10
    fm = build_objective(config.load(None, ["objective.name=fm"]).objective)
    rf = build_objective(_cfg().objective)
    for step, ref in [(0, fm), (9, fm), (10, rf), (57, rf)]:
        got, want = _loss(sched, model, x1, y, step), _loss(ref, model, x1, y, step)
        assert torch.equal(got[0], want[0]), step
        assert all(torch.equal(a, b) for a, b in zip(got[1], want[1])), step
    assert "loss_adr" not in _loss(sched, model, x1, y, 9)[2] and "loss_adr" in _loss(sched, model, x1, y, 10)[2]


def test_fraction_start_and_linear_ramp_of_adr_prob():
    cfg = _cfg("objective.start=0.8", "objective.ramp=0.1", "objective.adr.prob=0.5", steps=200)
    sched = build_objective(cfg.objective, total_steps=cfg.train.steps)
    assert (sched.start, sched.ramp) == (160, 20)
    assert not sched.active(159) and sched.active(160)
    assert [sched.adr_prob(s) for s in (160, 169, 179, 199)] == pytest.approx([0.025, 0.25, 0.5, 0.5])
    model, x1, y = _setup()
    _, _, metrics = _loss(sched, model, x1, y, 169)
    assert metrics["adr_prob"].item() == pytest.approx(0.25)
    assert cfg.objective.adr.prob == 0.5  # the user's config is not changed by the ramp
    # a step on the ramp equals the plain objective at that step's adr.prob
    plain = build_objective(_cfg("objective.adr.prob=0.25").objective)
    assert torch.equal(_loss(sched, model, x1, y, 169)[0], _loss(plain, model, x1, y, 169)[0])


def test_no_schedule_builds_the_plain_objective():
    assert not isinstance(build_objective(_cfg().objective, total_steps=100), Scheduled)


@pytest.mark.parametrize("extra, match", [
    (["objective.start=100"], "not before train.steps"),
    (["objective.name=fm", "objective.start=10"], "objective.name is fm"),
    (["objective.start=12.5"], "a step .* or a fraction"),
    (["objective.ramp=-1"], "must be >= 0"),
])
def test_bad_schedules_are_config_errors(extra, match):
    with pytest.raises(config.ConfigError, match=match):
        _cfg(*extra)


def test_switch_under_compile_costs_at_most_one_recompile(inductor_cache):
    """Per-block compile: the FM phase compiles one graph; the switch to ReflexFlow adds one, the
    rollout's (inference mode is a different graph from a training forward, whatever the schedule),
    and nothing after. The scheduled objective has the model mark its batch dimension dynamic from
    the first step, so the concatenated clean + drifted batch needs no recompile; without that the
    switch cost two graphs (measured [1, 1, 1, 3, 3, 3, 3]; now [1, 1, 1, 2, 2, 2, 2])."""
    from torch._dynamo.utils import counters
    counters.clear()
    model, x1, y = _setup()
    cfg = _cfg("objective.start=3", steps=8)
    sched = build_objective(cfg.objective, total_steps=cfg.train.steps)
    assert sched.varies_batch and not build_objective(_cfg("objective.name=fm").objective).varies_batch
    parallel.apply_compile(model, True, dynamic_batch=sched.varies_batch)
    graphs = []
    for step in range(7):
        _loss(sched, model, x1, y, step, seed=10 + step)
        graphs.append(counters["stats"]["unique_graphs"])
    fm_graphs = graphs[2]
    assert graphs[0] == fm_graphs, graphs  # FM steps compile once
    assert graphs[3] - fm_graphs <= 1, graphs  # the rollout's inference graph only
    assert graphs[-1] == graphs[3], graphs  # nothing new after the first ReflexFlow step


def test_the_switch_stays_put_when_a_resume_extends_train_steps(tmp_path):
    """A fractional objective.start is resolved once, at the run's first start (0.5 of 8 steps: step 4),
    and recorded in config.yaml and the checkpoint; a resume with train.steps=16 keeps step 4 (not 8). A
    resume that asks for another start gets it, with one line that says so."""
    import yaml

    from rfengine.trainer import Trainer
    from tests.helpers import tiny_cfg
    extra = ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input",
             "objective.start=0.5", "train.ckpt_every=2"]
    first = Trainer(tiny_cfg(tmp_path, *extra, "train.steps=8"))
    assert first.objective.start == 4
    first.run()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["objective"]["start"] == 4
    longer = Trainer(tiny_cfg(tmp_path, *extra, "train.steps=16"), resume="auto")
    assert longer.step == 8 and longer.objective.start == 4
    assert "objective.start" not in (tmp_path / "log.txt").read_text()
    moved = Trainer(tiny_cfg(tmp_path, *[e for e in extra if "start" not in e], "objective.start=0.75",
                             "train.steps=16"), resume="auto")
    assert moved.objective.start == 12
    lines = [line for line in (tmp_path / "log.txt").read_text().splitlines() if "objective.start" in line]
    assert len(lines) == 1 and "started with 0.5 (step 4)" in lines[0] and "switch is step 12" in lines[0]


def test_a_short_smoke_run_of_a_shipped_scheduled_config_is_not_refused():
    """0.88 of 4 steps rounds to 4; a fraction resolves to at most train.steps - 1, so the switch happens."""
    cfg = config.load("configs/tiny.yaml", ["train.steps=4"])
    assert config.resolve_steps(cfg.objective.start, 4) == 3
    assert config.resolve_steps(0.88, 400_000) == 352_000
    assert config.resolve_steps(0.9999, 100) == 99
