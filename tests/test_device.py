"""Device truth without a GPU: every objective, the metric reduction and the trainer's step run with
all tensors on the `meta` device (no data, but the same device rules as CUDA: a CPU tensor mixed in
fails there as it would on a GPU), and the host reads of device values are counted (each one is a
device sync on a GPU that stops the CPU from queueing the next kernels)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels._checks import value_checks
from rfengine import config, parallel
from rfengine.models import build_model
from rfengine.objectives import build_objective
from rfengine.telemetry import reduce_metrics
from tests.helpers import tiny_cfg

aten = torch.ops.aten
META = torch.device("meta")


class HostReads(TorchDispatchMode):
    """Counts reads of non-CPU tensors by the host (with `cpu=True`, of CPU tensors too): `.item()`/`float(t)`/
    `if t:` (`_local_scalar_dense`), copies to the CPU (`.tolist()`, `.cpu()`) and `nonzero` (its size depends
    on the values). On `meta` tensors, which have no values, a scalar read answers 0 and a copy to the CPU
    answers `answer` everywhere, so that the code goes on (and a test can choose what a flag read sees)."""

    def __init__(self, cpu: bool = False, answer: float = 0.0):
        super().__init__()
        self.reads: list[str] = []
        self.cpu, self.answer = cpu, answer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        on_device = x is not None and (self.cpu or x.device.type != "cpu")
        if on_device and func is aten._local_scalar_dense.default:
            self.reads.append("item")
            if x.device.type == "meta":
                return torch.zeros((), dtype=x.dtype).item()
        if on_device and func is aten._to_copy.default and str(kwargs.get("device")) == "cpu":
            self.reads.append("to_cpu")
            if x.device.type == "meta":
                return torch.full(x.shape, self.answer, dtype=kwargs.get("dtype") or x.dtype)
        if on_device and func in (aten.nonzero.default, aten.masked_select.default):
            self.reads.append(str(func))
        return func(*args, **kwargs)


OBJECTIVES = {
    "fm": ["objective.name=fm"],
    "fm_logit_normal": ["objective.name=fm", "objective.time_sampler=logit_normal"],
    "fm_min_snr": ["objective.name=fm", "objective.weighting=min_snr"],
    "fm_cosine": ["objective.name=fm", "objective.cosine_weight=1"],
    "ip": ["objective.name=ip"],
    "ss": ["objective.name=ss"],
    "reflexflow": ["objective.name=reflexflow"],
    "fc_velocity": ["objective.name=reflexflow", "objective.adr.weight=0"],
    "fc_input": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input"],
    "fc_input_prob0.5": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input",
                         "objective.adr.prob=0.5"],
    "fc_self": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=self"],
    "fc_self_none": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=self",
                     "objective.fc.mask=none"],
    "fc_input_min_snr_cosine": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input",
                                "objective.weighting=min_snr", "objective.cosine_weight=1"],
    "rf_prob0.25_direction": ["objective.name=reflexflow", "objective.adr.prob=0.25", "objective.adr.loss=direction"],
    "scheduled": ["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input",
                  "objective.start=0.5"],
    "scheduled_ramp": ["objective.name=reflexflow", "objective.start=0.5", "objective.ramp=0.25"],
}


def _meta_model(classes=10):
    torch.manual_seed(0)
    return build_model("DiT-T/4", in_channels=4, input_size=(8, 12), num_classes=classes).to(META)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_keeps_loss_and_metrics_on_the_inputs_device(name):
    """The schedule's switch included (steps 60 and 99 of 100 are after it, 60 inside the ramp). Before
    the fix `objective.start` made `adr_prob` a CPU tensor, and `reduce_metrics` (the trainer's log step)
    failed on it here as it would have on CUDA at 88% of the main job."""
    cfg = config.load(None, [*OBJECTIVES[name], "train.steps=100"])
    obj = build_objective(cfg.objective, metrics_every=1, total_steps=100)
    model = _meta_model()
    x1, y = torch.randn(6, 4, 8, 12, device=META), torch.zeros(6, dtype=torch.long, device=META)
    for step in (0, 60, 99):
        with HostReads():
            loss, metrics = obj.loss(model, x1, y, step)
            loss.backward()
            values = reduce_metrics(metrics, META)
        assert loss.device == META and loss.dim() == 0
        wrong = {k: v.device for k, v in metrics.items() if v.device != META}
        assert not wrong, f"{name} step {step}: metrics off the device: {wrong}"
        assert set(values) == set(metrics)


@pytest.mark.parametrize("name, reads", [("fm", 0), ("fc_input", 0), ("reflexflow", 0), ("fc_input_prob0.5", 0),
                                         ("fc_self", 0), ("scheduled_ramp", 0), ("ss", 0)])
def test_an_objective_reads_nothing_back_from_the_device(name, reads):
    """Without value checks (the training path's default) a loss and its backward make no host read:
    not the kernels' range checks, not the partial rollout's subset (a count fixed on the host)."""
    cfg = config.load(None, [*OBJECTIVES[name], "train.steps=100"])
    obj = build_objective(cfg.objective, metrics_every=1000, total_steps=100)
    model = _meta_model()
    x1, y = torch.randn(6, 4, 8, 12, device=META), torch.zeros(6, dtype=torch.long, device=META)
    for step in (1, 80):
        with value_checks(False), HostReads() as mode:
            loss, _ = obj.loss(model, x1, y, step)
            loss.backward()
        assert len(mode.reads) == reads, f"{name} step {step}: {mode.reads}"


def test_value_checks_on_are_host_reads():
    """The counter sees the range checks: the same loss with value checks on reads t's min and max. On
    CPU tensors the checks read values too (counted when asked for), but those are no device reads."""
    cfg = config.load(None, OBJECTIVES["fc_input"])
    obj = build_objective(cfg.objective, metrics_every=1000)
    torch.manual_seed(0)
    model = build_model("DiT-T/4", in_channels=4, input_size=(8, 12), num_classes=10)
    x1 = torch.randn(6, 4, 8, 12, device="cpu")
    with value_checks(True), HostReads(cpu=True) as every, HostReads() as device:
        obj.loss(model.to("cpu"), x1, torch.zeros(6, dtype=torch.long), 1)
    assert every.reads.count("item") >= 4, "the value checks read the CPU tensors' values"
    assert device.reads == [], "CPU tensors are not device reads"
    model = _meta_model()
    with value_checks(True), HostReads() as mode:
        obj.loss(model, x1.to(META), torch.zeros(6, dtype=torch.long, device=META), 1)
    assert mode.reads.count("item") >= 4


@pytest.fixture
def meta_trainer(tmp_path, monkeypatch):
    """A Trainer whose device is `meta`: the model, EMA, optimizer state and batches live there."""
    from rfengine import trainer as trainer_mod
    from rfengine.run import build as build_mod
    monkeypatch.setattr(trainer_mod.parallel, "init_distributed",
                        lambda backend="auto": parallel.Dist(rank=0, world=1, local_rank=0, device=META))
    monkeypatch.setattr(build_mod, "check_attention", lambda *a, **k: None)

    def build(*extra):
        cfg = tiny_cfg(tmp_path / "run", "train.log_every=4", "train.steps=8", "objective.name=reflexflow",
                       "objective.adr.weight=0", "objective.fc.bias_space=input", "objective.start=2", *extra)
        return trainer_mod.Trainer(cfg)
    return build


@pytest.mark.parametrize("extra", [[], ["objective.adr.prob=0.5"], ["objective.fc.bias_space=self"]])
def test_a_training_step_that_is_not_logged_reads_the_device_once(meta_trainer, extra):
    """The step's only host read is the one all-reduced flag tensor (non-finite, stop, write failure);
    the metrics stay on the device until a logged step reads them."""
    from rfengine.data import batches
    tr = meta_trainer(*extra)
    data = batches(tr.dataset, tr.cfg.train.batch_size, rank=0, world=1, seed=0, flip=False, device=META)
    assert next(tr.model.parameters()).device == META
    for step in range(4):  # FM steps, the switch at step 2, ReflexFlow steps
        tr.state.step = step
        x1, y = next(data)
        with value_checks(False), HostReads() as mode:  # the flag read sees zeros: finite, no stop
            applied, metrics = tr.train_step(x1, y)
        assert applied
        assert mode.reads == ["to_cpu"], f"step {step}: {mode.reads}"
        assert all(v.device == META for v in metrics.values())
    with value_checks(False), HostReads(answer=1.0) as mode:  # every flag raised, non-finite among them
        applied, _ = tr.train_step(*next(data))
    assert not applied and mode.reads == ["to_cpu"], "the one read decides whether the update is applied"
