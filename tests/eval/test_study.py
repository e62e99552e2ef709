"""The studies' shared machinery: the paired statistics, the calibration's device check and clock, the
pretraining's restart rule, and the sampler table (`rfengine.study.samplers`). Study v3's pipeline end to
end: tests/eval/test_study_v3.py."""
import argparse
import json
import math
import time

import pytest

from rfengine.study import calibration, runs, stats

pytestmark = pytest.mark.usefixtures("one_thread")




def test_paired_statistics():
    m, lo, hi = stats.t_interval([0.1, 0.2, 0.3])
    assert m == pytest.approx(0.2) and hi - m == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    res = {("fm", s): {"by_steps": {"20": {"fd": 10.0}}} for s in (0, 1)}
    res.update({("a", 0): {"by_steps": {"20": {"fd": 5.0}}}, ("a", 1): {"by_steps": {"20": {"fd": 5.0}}},
                ("b", 0): {"by_steps": {"20": {"fd": 20.0}}}, ("b", 1): {"by_steps": {"20": {"fd": 9.0}}}})
    rows = stats.compare(res, ["fm", "a", "b"], [0, 1], [20])
    assert stats.choose(rows)["variant"] == "a"
    assert rows[0]["per_seed"] == pytest.approx([math.log(0.5)] * 2)
    assert stats.verdict(-0.2, -0.3, -0.1).startswith("beats FM")
    assert stats.verdict(0.1, -0.3, 0.5).startswith("not distinguishable")
    assert stats.verdict(0.2, 0.1, 0.3).startswith("loses to FM")






def test_seconds_from_another_device_are_refused(tmp_path):
    """A study calibrated on one device does not continue on another (CPU seconds and GPU wall-clock
    seconds are not comparable); the clock is this machine's."""
    args = argparse.Namespace(quick=True, variants=["fm"], lr=1e-3, ft_fm_steps=8, points=2)
    (tmp_path / "calibration.json").write_text(json.dumps({"machine": {"device": "NVIDIA H100 80GB HBM3"}}))
    with pytest.raises(SystemExit, match="calibrated on NVIDIA H100 80GB HBM3, this machine trains on cpu"):
        calibration.calibrate(args, tmp_path, pool=None)
    assert runs.cpu_info()["clock"] == "CPU seconds of the process"
    t0 = runs.clock()
    time.sleep(0.3)  # waiting is not compute
    idle = runs.clock() - t0
    t0 = runs.clock()
    sum(i * i for i in range(2_000_000))
    busy = runs.clock() - t0
    assert idle < 0.1 and busy > 0.02, (idle, busy)


def test_a_pretraining_history_without_its_checkpoint_starts_over(tmp_path, monkeypatch):
    """plateau.json is committed, the run folder is not: on another machine an unfinished history
    has no checkpoint to continue from, and the pretraining starts over instead of mislabelling
    a fresh model as chunk N+1."""
    pre = tmp_path / "s0"
    pre.mkdir()
    (pre / "plateau.json").write_text(json.dumps({"rule": {}, "history": [{"step": 4, "fd20": 9.0}],
                                                  "cpu_seconds": 1.0}))
    seen = []

    def fake_train(variant, seed, run_dir, steps, every, extra, start=0, branch_from=None):
        seen.append((steps, start))
        raise RuntimeError("stop here")
    monkeypatch.setattr(runs, "train", fake_train)
    monkeypatch.setattr(runs, "Scorer", lambda **k: None)
    rule = {"chunk": 4, "min_steps": 4, "max_steps": 12, "patience": 1, "tol": 0.02, "samples": 8}
    with pytest.raises(RuntimeError, match="stop here"):
        runs.pretrain(0, pre, rule, 1e-3, {})
    assert seen == [(4, 0)]  # from scratch: the first chunk, not the second




def test_sampler_table_refits_missing_models_and_pairs_them_per_sampler(tmp_path):
    """rfengine.study.samplers on a tiny study folder: the run folders are gone, so each (variant, seed)
    model is fine-tuned again from the seed's pretrained model with the study's settings, then scored
    under every sampler; the table pairs the variant with the baseline per sampler."""
    from rfengine.study import samplers
    from rfengine.trainer import Trainer
    from tests.helpers import tiny_cfg
    study = tmp_path / "study"
    for s in (0, 1):
        pre = study / "pretrain" / f"s{s}"
        Trainer(tiny_cfg(pre / "run", *[o for o in runs.BASE if "steps" not in o], "train.steps=2",
                         f"train.seed={s}")).run()
        pre.joinpath("pretrained.safetensors").write_bytes((pre / "run" / "ema.safetensors").read_bytes())
    runs.write_json(study / "protocol.json", {"points": 2, "lr": 1e-3})
    runs.write_json(study / "calibration.json", {"finetune_steps": {"fm": 4, "fc_input": 2}})
    args = samplers.argparse.Namespace(study=str(study), out=str(tmp_path / "out"), seeds=[0, 1],
                                       variants=["fm", "fc_input"], samplers=["euler20", "sde50", "dopri5"],
                                       samples=8)
    s = samplers.run(args)
    assert [r["sampler"] for r in s["rows"]] == ["euler20", "sde50", "dopri5"]
    assert all(len(r["per_seed"]) == 2 and math.isfinite(r["mean_log_ratio"]) for r in s["rows"])
    assert s["rows"][1]["nfe_mean"] == 50 and s["rows"][2]["nfe_mean"] >= 6
    assert (tmp_path / "out" / "models" / "fc_input_s1" / "ema.safetensors").is_file()
    again = samplers.run(args)  # resumable: the scores are read back, not recomputed
    assert again["rows"] == s["rows"]
    assert "| sde50 | 50 |" in (tmp_path / "out" / "samplers.md").read_text()
