"""The equal-compute study (python -m rfengine.study): the whole protocol at tiny sizes (calibration,
FM pretrained to its plateau rule, fine-tunes at equal calibrated seconds, selection frozen before
the confirmation seeds, the headline and its report), its resume, its frozen protocol, and the
paired statistics."""
import json
import math
import time

import pytest

from rfengine.study import v2 as study
from rfengine.study import runs, stats


def test_quick_protocol_end_to_end_and_resume(tmp_path):
    out = tmp_path / "v2"
    assert study.main(["--quick", "--out", str(out), "--workers", "1"]) == 0
    s = json.loads((out / "summary.json").read_text())
    cal = s["calibration"]
    assert cal["finetune_steps"]["fm"] == 8 and set(cal["cpu_seconds_per_step"]) == {"fm", "fc_input"}
    # equal compute by construction: steps x calibrated seconds per step agree to one step's worth
    budget = cal["finetune_budget_cpu_seconds"]
    for v, steps in cal["finetune_steps"].items():
        assert abs(steps * cal["cpu_seconds_per_step"][v] - budget) <= 2 * cal["cpu_seconds_per_step"][v]
    assert s["selection"]["seeds"] == [0, 1] and s["selection"]["variant"] == "fc_input"
    h = s["headline"]
    assert h["regime"] == "finetune" and h["confirm_seeds"] == [2] and len(h["ci95"]) == 2 and h["complete"]
    rows = [r for r in s["rows"] if r["variant"] == "fc_input" and r["regime"] == "finetune"]
    assert {r["sample_steps"] for r in rows} == {2, 20} and all(r["log_ratio_to_fm"] is not None for r in rows)
    assert {r["phase"] for r in rows} == {"selection", "confirmation"}
    for p in s["pretrain"].values():
        assert p["stopped_at"] and p["reason"] and p["history"] and p["cpu_seconds"] > 0
    assert all(r["cpu_seconds_measured"] > 0 for r in s["rows"] if r["regime"] == "finetune")  # measured
    assert (out / "pretrain" / "s0" / "pretrained.safetensors").is_file()
    assert (out / "fd_vs_seconds.png").is_file() and "Headline" in (out / "report.md").read_text()
    # regime (b): the FM run of every seed switched to the chosen variant 4 FM steps before its end
    sch = s["scheduled"]["variants"]["fc_input"]
    assert sch["seeds"] == [0, 1, 2] and sch["verdict"]
    b_rows = [r for r in s["rows"] if r["regime"] == "scheduled"]
    assert {r["variant"] for r in b_rows} == {"fm", "fc_input"}
    for r in b_rows:
        assert r["branch_step"] == s["pretrain"][str(r["seed"])]["stopped_at"] - 4
    fc = next(r for r in b_rows if r["variant"] == "fc_input")
    assert fc["steps"] == round(4 * cal["cpu_seconds_per_step"]["fm"] / cal["cpu_seconds_per_step"]["fc_input"])
    assert "Regime (b)" in (out / "report.md").read_text()
    # regime (a): fc_input from scratch on seed 2 for the seconds of its whole FM run
    a = s["scratch"]["variants"]["fc_input"]
    assert a["seeds"] == [2]
    a_fc = next(r for r in s["rows"] if r["regime"] == "scratch" and r["variant"] == "fc_input")
    a_fm = next(r for r in s["rows"] if r["regime"] == "scratch" and r["variant"] == "fm")
    assert a_fm["steps"] == s["pretrain"]["2"]["stopped_at"]
    assert abs(a_fc["cpu_seconds"] - a_fm["cpu_seconds"]) <= cal["cpu_seconds_per_step"]["fc_input"]
    assert "Regime (a)" in (out / "report.md").read_text()
    text = study.status(study.parse_args(["--quick", "--out", str(out)]))
    assert "selection seeds complete: [0, 1]" in text and "fc_input @20" in text
    assert (out / "fd_vs_seconds_partial.png").is_file()
    before = (out / "selection.json").read_text()
    assert study.main(["--quick", "--out", str(out), "--workers", "1"]) == 0  # resumes: nothing retrained
    assert (out / "selection.json").read_text() == before
    with pytest.raises(SystemExit, match="started with other settings"):
        study.main(["--quick", "--out", str(out), "--lr", "0.5"])


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


def test_confirmation_waits_for_the_frozen_choice(tmp_path):
    """Confirmation fine-tunes depend on the `select` job; their FM pretraining does not (it involves
    no variant), and `select` refuses to choose before every selection fine-tune is scored."""
    args = study.parse_args(["--quick", "--out", str(tmp_path)])
    cal = {"finetune_steps": {"fm": 8, "fc_input": 8}}
    sel = study.seed_jobs(args, tmp_path, 0, cal)
    assert {j for j in sel if j != "pretrain s0" and j != "start s0"} == {"fm s0", "fc_input s0"}
    assert all("select" not in deps for _, deps, _, _ in sel.values())
    conf = study.seed_jobs(args, tmp_path, 2, cal, confirm=True)
    assert set(conf) == {"pretrain s2", "start s2", "fm s2", "chosen s2"}
    assert conf["pretrain s2"][1] == [] and all("select" in conf[j][1] for j in ("fm s2", "chosen s2"))
    with pytest.raises(RuntimeError, match="missing: fm s0, fc_input s0"):
        runs.select(tmp_path, ["fm", "fc_input"], [0], [20])
    assert not (tmp_path / "selection.json").exists()


def test_keys_added_later_extend_a_frozen_protocol(tmp_path):
    """A study started before regime (b) existed continues: its protocol gains the new keys, while
    any changed old key is still refused."""
    args = study.parse_args(["--out", str(tmp_path)])
    old = {k: getattr(args, k) for k in study.PROTOCOL_KEYS}
    (tmp_path / "protocol.json").write_text(json.dumps(old))
    study._protocol(args, tmp_path)
    now = json.loads((tmp_path / "protocol.json").read_text())
    assert now["tail_fm_steps"] == 2000 and {k: now[k] for k in old} == old
    with pytest.raises(SystemExit, match="tail_fm_steps"):
        study._protocol(study.parse_args(["--out", str(tmp_path), "--tail-fm-steps", "1000"]), tmp_path)


def test_seconds_from_another_device_are_refused(tmp_path):
    """A study calibrated on one device does not continue on another (CPU seconds and GPU wall-clock
    seconds are not comparable); the clock is this machine's."""
    args = study.parse_args(["--quick", "--out", str(tmp_path)])
    (tmp_path / "calibration.json").write_text(json.dumps({"machine": {"device": "NVIDIA H100 80GB HBM3"}}))
    with pytest.raises(SystemExit, match="calibrated on NVIDIA H100 80GB HBM3, this machine trains on cpu"):
        study.calibrate(args, tmp_path, pool=None)
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


def test_controls_run_last_at_fm_cost_and_are_compared_with_the_choice(tmp_path):
    """A control (FM with its loss doubled) is fine-tuned on each confirmation seed after the choice,
    with FM's step count; the summary gives its ratio to FM and the chosen variant's ratio to it."""
    args = study.parse_args(["--out", str(tmp_path), "--confirm-seeds", "5", "6"])
    jobs = study.control_jobs(args, tmp_path, {"finetune_steps": {"fm": 1000, "fc_input": 702}})
    assert set(jobs) == {"control fm_loss2 s5", "control fm_loss2 s6"}
    prio, deps, fn, fargs = jobs["control fm_loss2 s5"]
    assert fn is runs.finetune and "select" in deps and fargs[0] == "fm_loss2" and fargs[4] == 1000
    assert prio > max(p for p, *_ in study.scratch_jobs(args, tmp_path, {"cpu_seconds_per_step": {}}).values())
    fd = {("fm", 5): 10.0, ("fm", 6): 20.0, ("fc_input", 5): 6.0, ("fc_input", 6): 12.0}
    results = {k: {"by_steps": {"20": {"fd": v}}} for k, v in fd.items()}
    for s, v in ((5, 8.0), (6, 16.0)):
        (tmp_path / "controls" / f"fm_loss2_s{s}").mkdir(parents=True)
        runs.write_json(tmp_path / "controls" / f"fm_loss2_s{s}" / "scores.json",
                        {"variant": "fm_loss2", "seed": s, "by_steps": {"20": {"fd": v}}})
    block = study.control_summary(study.parse_args(["--out", str(tmp_path), "--confirm-seeds", "5", "6",
                                                    "--sample-steps", "20"]), tmp_path, results, "fc_input")
    c = block["fm_loss2"]
    assert c["seeds"] == [5, 6] and c["control_vs_fm"][0]["per_seed"] == pytest.approx([math.log(0.8)] * 2)
    assert c["chosen_vs_control"][0]["per_seed"] == pytest.approx([math.log(0.75)] * 2)
    assert c["verdict"].startswith("beats fm_loss2")


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
                                       samples=16)
    s = samplers.run(args)
    assert [r["sampler"] for r in s["rows"]] == ["euler20", "sde50", "dopri5"]
    assert all(len(r["per_seed"]) == 2 and math.isfinite(r["mean_log_ratio"]) for r in s["rows"])
    assert s["rows"][1]["nfe_mean"] == 50 and s["rows"][2]["nfe_mean"] >= 6
    assert (tmp_path / "out" / "models" / "fc_input_s1" / "ema.safetensors").is_file()
    again = samplers.run(args)  # resumable: the scores are read back, not recomputed
    assert again["rows"] == s["rows"]
    assert "| sde50 | 50 |" in (tmp_path / "out" / "samplers.md").read_text()
