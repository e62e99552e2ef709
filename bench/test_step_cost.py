"""pytest-benchmark: the cost of one training step of `fm` and of `reflexflow` on the same model,
batch and precision, through the trainer's own `train_step` (objective, backward, clipping,
optimizer, EMA). The ratio of their means, reported next to the FLOP floor by bench/report.py, is
what docs/objectives.md section 3 asks to keep near (1 + 3 + 3)/3 = 2.33x at adr.prob = 1 and (3 + 4p)/3 below.

Defaults: SiT-B/2 on 4x32x32 latents (ImageNet-256), batch 64, bf16 on a GPU; DiT-S/4, batch 16,
fp32 on CPU. Override with RFENGINE_BENCH_ARCH / RFENGINE_BENCH_BATCH.
Run: pytest bench/test_step_cost.py --benchmark-only [--benchmark-json out.json]
"""
import os

import pytest
import torch

from rfengine import config
from rfengine.telemetry import ModelRows
from rfengine.trainer import Trainer

CUDA = torch.cuda.is_available()
ARCH = os.environ.get("RFENGINE_BENCH_ARCH", "SiT-B/2" if CUDA else "DiT-S/4")
BATCH = int(os.environ.get("RFENGINE_BENCH_BATCH", "64" if CUDA else "16"))
PRECISION = "bf16" if CUDA else "fp32"

# name -> (config overrides, FLOP floor relative to fm: forward-pass units per image / 3)
OBJECTIVES = {
    "fm": (["objective.name=fm"], 1.0),
    "reflexflow": (["objective.name=reflexflow"], 7 / 3),
    "reflexflow_p0.5": (["objective.name=reflexflow", "objective.adr.prob=0.5"], 5 / 3),
    # the variant the digits study selected (docs/study.md): FC on the input-space bias, no ADR loss,
    # no drifted forward: the rollout's forward + FM's forward and backward
    "fc_input": (["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input"], 4 / 3),
    # the same with the rollout matched to a 6-call Heun sampler: Heun's second no-grad forward on top
    "fc_input_heun3": (["objective.name=reflexflow", "objective.adr.weight=0", "objective.fc.bias_space=input",
                        "objective.adr.integrator=heun", "objective.adr.infer_steps=3"], 5 / 3),
}


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_train_step(benchmark, tmp_path, name, mode):
    if mode == "compiled" and not CUDA:
        pytest.skip("compiled training steps are timed on a GPU only (CPU compile of a DiT takes minutes)")
    overrides, floor = OBJECTIVES[name]
    cfg = config.load(None, [
        f"model.arch={ARCH}", "data.name=synthetic", "data.image_size=32", "data.channels=4",
        f"train.batch_size={BATCH}", f"train.precision={PRECISION}", f"train.compile={mode == 'compiled'}",
        "train.progress=false", "train.tensorboard=false", f"train.out_dir={tmp_path}", *overrides])
    trainer = Trainer(cfg)
    device = trainer.dist.device
    x1 = trainer.dataset.images[:BATCH].to(device)
    y = trainer.dataset.labels[:BATCH].to(device)
    torch.manual_seed(0)
    rows = ModelRows(trainer.model)
    for _ in range(3):  # warm-up (and compilation)
        trainer.train_step(x1, y)
    # Measured model FLOPs of a step relative to an FM step's (3 forward-equivalents per image).
    relative_flops = rows.forward_units() / (3 * BATCH) / 3
    rows.remove()

    def step():
        trainer.train_step(x1, y)
        _sync()

    benchmark.group = f"step {ARCH} b{BATCH} {PRECISION} {mode}"
    benchmark.extra_info.update(kind="step", objective=name, arch=ARCH, batch=BATCH, precision=PRECISION,
                                mode=mode, flop_floor=floor, relative_model_flops=relative_flops,
                                device=torch.cuda.get_device_name(0) if CUDA else "cpu")
    # The objective makes the model calls it should: exactly the floor at adr.prob = 1; at p < 1 the
    # rolled fraction of the 3 warm-up batches is random (4/3 x three standard deviations of it).
    tol = 1e-9 if name != "reflexflow_p0.5" else 4 / 3 * 3 * (0.25 / (3 * BATCH)) ** 0.5
    assert relative_flops == pytest.approx(floor, abs=tol)
    benchmark.pedantic(step, rounds=8 if CUDA else 4, warmup_rounds=1, iterations=1)
