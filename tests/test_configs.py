"""Every shipped config trains through its schedule: the tiny ones as they are (shortened), the
ImageNet/CIFAR/CelebA ones with overrides that shrink the model, the data (synthetic tensors of the
configured kind: 4-channel latents or 3-channel images) and the steps, but keep their objective, their
precision, their parallel mode (an FSDP config runs on two processes, its parameters sharded, its
checkpoints sharded folders), their checkpointing and their schedule, whose switch falls inside the
run. What users run first is what is tested."""
import json
import re
from pathlib import Path

import pytest
import torch

from rfengine import config
from rfengine.trainer import Trainer
from tests.helpers import ROOT, read_metrics, set_args, torchrun

CONFIGS = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
STEPS = 6


def raw_cfg(name: str):
    """The config as shipped (its init_from file, made by another run, left out of validation)."""
    return config.load(ROOT / "configs" / name, ["train.init_from="])


def starts_from_weights(name: str) -> bool:
    return bool(config.compose(ROOT / "configs" / name).get("train", {}).get("init_from"))


def shrunk(name: str, out: Path, init: Path) -> list[str]:
    """Overrides that make `configs/<name>` a seconds-long CPU run of the same recipe."""
    raw = raw_cfg(name)
    over = [f"train.out_dir={out}", f"train.steps={STEPS}", "train.batch_size=4", "train.log_every=1",
            "train.ckpt_every=3", "train.sample_every=1000", "train.progress=false", "train.tensorboard=false",
            "sample.num_images=2", "sample.steps=2", "data.num_workers=0", "train.compile=false"]
    if raw.model.arch not in ("DiT-T/2", "DiT-T/4"):
        over.append("model.arch=DiT-T/4")
    if raw.data.name in ("latents", "folder"):
        channels = 4 if raw.data.name == "latents" else 3
        over += ["data.name=synthetic", f"data.channels={channels}", "data.image_size=8", "data.num_classes=10",
                 "data.flip=false"]
    if starts_from_weights(name):
        over.append(f"train.init_from={init}")
    return over


def _init_weights(name: str, tmp_path: Path) -> Path:
    """A weights file for a fine-tune config: the shrunk model's own fresh weights (plain safetensors)."""
    from safetensors.torch import save_file
    path = tmp_path / "init.safetensors"
    cfg = config.load(ROOT / "configs" / name, [o for o in shrunk(name, tmp_path / "x", path)
                                                 if not o.startswith("train.init_from")] + ["train.init_from="])
    tr = Trainer(cfg)
    save_file({k: v.contiguous() for k, v in tr.model.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_trains_through_its_schedule(tmp_path, name):
    raw = raw_cfg(name)
    init = _init_weights(name, tmp_path) if starts_from_weights(name) else tmp_path / "none"
    over = shrunk(name, tmp_path / "run", init)
    cfg = config.load(ROOT / "configs" / name, over)
    assert (cfg.objective.name, cfg.objective.start, cfg.train.precision, cfg.parallel.mode) == (
        raw.objective.name, raw.objective.start, raw.train.precision, raw.parallel.mode)
    if cfg.parallel.mode == "fsdp":  # one process shards nothing: two, as the config is meant to run
        r = torchrun(2, "--config", str(ROOT / "configs" / name), *set_args(*over))
        assert r.returncode == 0, r.stderr[-3000:]
        held, total = map(float, re.search(r"holds ([\d.]+)M of the ([\d.]+)M parameters",
                                           (tmp_path / "run" / "log.txt").read_text()).groups())
        assert held < 0.75 * total  # sharded
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    else:
        summary = Trainer(cfg).run()
    assert summary["step"] == STEPS and not summary["stopped"]
    last = tmp_path / "run" / "checkpoints" / f"step_{STEPS:08d}"
    assert (last / ".metadata").is_file() if cfg.parallel.mode == "fsdp" else last.with_suffix(".pt").is_file()
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    start = config.resolve_steps(raw.objective.start, STEPS)
    if raw.objective.start:  # the switch falls inside the run: FM before it, the objective after
        assert 0 < start < STEPS
        assert all("loss_fc" not in r for r in rows[:start]) and all("loss_fc" in r for r in rows[start:])
    elif raw.objective.name == "reflexflow":
        assert all("loss_fc" in r for r in rows)
    assert (tmp_path / "run" / "ema.safetensors").is_file()
