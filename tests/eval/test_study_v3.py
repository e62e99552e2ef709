"""Study v3 (python -m rfengine.study) end to end at tiny sizes, read from one shared quick run
(tests/eval/conftest.py): every variant's step cost calibrated, the strongest baseline chosen and frozen on
the selection seeds before any FC variant is fine-tuned on top of it, the FC choice frozen before the
confirmation seeds are pretrained, the headline (variant vs baseline) and baseline_vs_fm with measured step
costs and FLOP floors, regime (b) for both, and resume."""
import json
import shutil

import numpy as np
import pytest
import torch

from rfengine.eval import DigitsFeatures
from rfengine.study import runs, schedule, v3
from tests.eval.conftest import copy_study

pytestmark = pytest.mark.usefixtures("one_thread")


def test_v3_quick_calibrates_every_run_and_pins_the_classifier(study_v3_quick):
    out = study_v3_quick
    s = json.loads((out / "summary.json").read_text())
    x = torch.rand(3, 1, 16, 16) * 2 - 1  # the study pinned the package's classifier at its start
    np.testing.assert_array_equal(DigitsFeatures(out / v3.CLASSIFIER)(x), DigitsFeatures()(x))
    cal = s["calibration"]
    assert set(cal["cpu_seconds_per_step"]) == {"fm", "fm_ln", "fc_input", "fc_self", "fc_input@fm_ln",
                                                "fc_self@fm_ln"}
    # equal compute by construction: steps x calibrated seconds per step agree to one step's worth
    budget = cal["finetune_budget_cpu_seconds"]
    for v, steps in cal["finetune_steps"].items():
        assert abs(steps * cal["cpu_seconds_per_step"][v] - budget) <= 2 * cal["cpu_seconds_per_step"][v], v


def test_v3_quick_freezes_its_choices_in_order(study_v3_quick):
    out = study_v3_quick
    s = json.loads((out / "summary.json").read_text())
    base, sel = s["baseline_choice"], s["selection"]
    assert base["seeds"] == [0, 1] and base["baseline"] in ("fm", "fm_ln")
    assert sel["baseline"] == base["baseline"] and sel["seeds"] == [0, 1]
    names = {r["variant"] for r in sel["rows"]}
    assert names == {v3.on_top(f, base["baseline"]) for f in ("fc_input", "fc_self")}  # FC on the baseline
    # the order of the choices: baseline.json before any FC fine-tune, selection.json before seed 2 exists
    t = {p: (out / p).stat().st_mtime for p in ("baseline.json", "selection.json")}
    fc_runs = [out / "finetune" / f"{v}_s{s_}" / "scores.json" for v in names for s_ in (0, 1)]
    assert all(t["baseline.json"] <= f.stat().st_mtime for f in fc_runs)
    assert t["selection.json"] <= (out / "pretrain" / "s2" / "plateau.json").stat().st_mtime


def test_v3_quick_headline_and_step_costs(study_v3_quick):
    s = json.loads((study_v3_quick / "summary.json").read_text())
    cal, sel, h = s["calibration"], s["selection"], s["headline"]
    for key in ("baseline", "variant", "regime", "sample_steps", "mean_log_ratio", "ci95", "confirm_seeds",
                "per_seed", "step_cost"):
        assert key in h, key
    assert h["baseline"] == sel["baseline"] and h["variant"] == sel["variant"] and h["confirm_seeds"] == [2]
    assert h["step_cost"] == pytest.approx(cal["cpu_seconds_per_step"][h["variant"]] /
                                           cal["cpu_seconds_per_step"][h["baseline"]])
    if sel["baseline"] != "fm":
        assert s["baseline_vs_fm"]["baseline"] == "fm" and s["baseline_vs_fm"]["variant"] == sel["baseline"]
    costs = s["step_costs"]
    assert costs["fm"]["flop_floor_vs_fm"] == 1.0 and costs["fm_ln"]["flop_floor_vs_fm"] == 1.0
    fc_in = v3.on_top("fc_input", sel["baseline"])
    assert costs[fc_in]["flop_floor_vs_fm"] == pytest.approx(4 / 3)  # one no-grad rollout forward
    assert costs[v3.on_top("fc_self", sel["baseline"])]["flop_floor_vs_fm"] == 1.0
    report = (study_v3_quick / "report.md").read_text()
    assert "Step 1, the strongest baseline" in report and "**Headline**" in report
    assert (study_v3_quick / "fd_vs_seconds.png").is_file()


def test_v3_quick_regime_b_pairs_branches_from_one_checkpoint(study_v3_quick):
    out = study_v3_quick
    s = json.loads((out / "summary.json").read_text())
    sel, b = s["selection"], s["scheduled"]
    assert b["variant_vs_baseline"]["confirm_seeds"] == [0, 1, 2]
    assert b["variant_vs_baseline"]["excluded"] == []
    if sel["baseline"] != "fm":  # the baseline's tail against uniform-t FM's tail from the same checkpoint
        assert b["baseline_vs_fm"]["baseline"] == "fm" and b["baseline_vs_fm"]["confirm_seeds"] == [0, 1, 2]
    else:
        assert b["baseline_vs_fm"] is None
    rec = s["recreated"]  # every seed's branch step checked against what its pretraining recorded there
    assert set(rec) == {"0", "1", "2"} and all(r["identical_fd"] and r["miss"] == 0 for r in rec.values())
    for seed in (0, 1, 2):  # every branch records the checkpoint it started from: the re-created one
        for v in {sel["baseline"], sel["variant"], "fm"}:
            got = json.loads((out / "scheduled" / f"{v}_s{seed}" / "scores.json").read_text())["branch_from"]
            assert got == rec[str(seed)]["branch_from"] and len(got["sha256"]) == 64
    assert "Regime (b)" in (out / "report.md").read_text()


def test_v3_quick_resumes_without_retraining_and_keeps_its_protocol(study_v3_quick, tmp_path):
    out = copy_study(study_v3_quick, tmp_path)
    scores = sorted(out.glob("**/scores.json"))
    before = {p: p.read_bytes() for p in [out / "baseline.json", out / "selection.json", *scores]}
    assert v3.main(["--quick", "--out", str(out), "--workers", "1"]) == 0  # resumes: nothing retrained
    assert {p: p.read_bytes() for p in before} == before and sorted(out.glob("**/scores.json")) == scores
    with pytest.raises(SystemExit, match="started with other settings"):
        v3.main(["--quick", "--out", str(out), "--lr", "0.5"])


def test_fc_variants_on_top_of_a_baseline_take_its_time_sampler_and_weighting():
    over = runs.overrides("fc_input_p0.25@fm_snr")
    assert "objective.weighting=min_snr" in over and "objective.adr.prob=0.25" in over
    assert "objective.name=reflexflow" in over and "objective.name=fm" not in over
    assert runs.is_fm("fm_cos") and not runs.is_fm("fc_self@fm_ln")
    with pytest.raises(ValueError, match="unknown"):
        runs.overrides("fc_input@fm_typo")


def test_the_baseline_is_fm_when_none_beats_it(tmp_path):
    for s, fds in ((0, {"fm": 10.0, "fm_ln": 11.0}), (1, {"fm": 10.0, "fm_ln": 12.0})):
        for v, fd in fds.items():
            (tmp_path / "finetune" / f"{v}_s{s}").mkdir(parents=True)
            runs.write_json(tmp_path / "finetune" / f"{v}_s{s}" / "scores.json",
                            {"variant": v, "seed": s, "by_steps": {"20": {"fd": fd}}})
    chosen = v3.select_baseline(tmp_path, ["fm", "fm_ln"], [0, 1], [20])
    assert chosen["baseline"] == "fm"


def seed_copy(study, tmp_path, seed: int = 0):
    """A private copy of the quick study's pretraining of `seed` (plateau.json, pretrained.safetensors, its run
    with the chunk checkpoints at steps 2 and 4, recreated.json), with the settings the study made it with:
    (folder, plateau rule, learning rate, scorer arguments)."""
    pre = tmp_path / "pretrain" / f"s{seed}"
    shutil.copytree(study / "pretrain" / f"s{seed}", pre)
    protocol = json.loads((study / "protocol.json").read_text())
    plateau = json.loads((pre / "plateau.json").read_text())
    assert plateau["stopped_at"] == 4 and plateau["rule"]["chunk"] == 2  # what the steps below assume
    scorer = {"samples": protocol["samples"], "sample_steps": protocol["sample_steps"], "bias_samples": 16,
              "classifier": str(study / v3.CLASSIFIER)}
    return pre, plateau["rule"], protocol["lr"], scorer


def test_recreate_remakes_the_chunk_checkpoints_and_matches_the_committed_model(study_v3_quick, tmp_path):
    """Regime (b) branches from chunk checkpoints that are not committed: `schedule.recreate` trains the seed's FM
    run again chunk by chunk and checks the result against the committed pretrained model, weight for weight."""
    pre, rule, lr, scorer = seed_copy(study_v3_quick, tmp_path)
    shutil.rmtree(pre / "run")  # another machine: the run folder was never committed
    (pre / "recreated.json").unlink()
    got = schedule.recreate(0, pre, rule, lr, scorer)
    assert got["identical"] and got["max_abs_weight_diff"] == 0.0 and got["steps"] == 4
    assert got["fd20_recreated"] == got["fd20_original"]
    assert [s for s, _ in runs.checkpoint.list_checkpoints(pre / "run" / "checkpoints")] == [2, 4]
    assert schedule.recreate(0, pre, rule, lr, scorer) == got  # done once, then read back
    shutil.rmtree(pre / "run")  # a committed recreated.json on a third machine: its checkpoints are made again
    assert schedule.recreate(0, pre, rule, lr, scorer) == got
    assert [s for s, _ in runs.checkpoint.list_checkpoints(pre / "run" / "checkpoints")] == [2, 4]


def test_recreate_to_the_branch_step_checks_it_against_the_pretraining_history(study_v3_quick, tmp_path):
    """A seed pretrained by this study: re-created only to the branch step (`tail` before the end), whose
    EMA scores exactly the FD@20 that plateau.json recorded there; a mismatch stops the job."""
    pre, rule, lr, scorer = seed_copy(study_v3_quick, tmp_path)
    shutil.rmtree(pre / "run")
    (pre / "recreated.json").unlink()
    got = schedule.recreate(0, pre, rule, lr, scorer, tail=2)
    assert got["steps"] == 2 and got["identical_fd"] and got["fd20_recreated"] == got["fd20_original"]
    assert [s for s, _ in runs.checkpoint.list_checkpoints(pre / "run" / "checkpoints")] == [2]
    assert schedule.recreate(0, pre, rule, lr, scorer, tail=2) == got  # then read back
    with pytest.raises(ValueError, match="not a chunk checkpoint"):
        schedule.recreate(0, pre, rule, lr, scorer, tail=1)
    plateau = json.loads((pre / "plateau.json").read_text())
    plateau["history"][0]["fd20"] *= 1.5  # a history the re-creation does not reproduce
    runs.write_json(pre / "plateau.json", plateau)
    (pre / "recreated.json").unlink()
    with pytest.raises(RuntimeError, match="does not score as the original at step 2"):
        schedule.recreate(0, pre, rule, lr, scorer, tail=2)
    plateau["history"][0]["fd20"] = got["fd20_original"] * 1.05  # a machine's difference, not a broken run
    runs.write_json(pre / "plateau.json", plateau)
    near = schedule.recreate(0, pre, rule, lr, scorer, tail=2)
    assert not near["identical_fd"] and near["miss"] == pytest.approx(1 / 1.05 - 1)
    assert near["branch_from"]["step"] == 2 and near["branch_from"]["fd20"] == got["fd20_recreated"]


def test_a_branch_is_run_again_when_its_checkpoint_here_has_other_weights(study_v3_quick, tmp_path):
    """Re-creations on different machines differ: a finished branch made from other weights than the
    checkpoint this machine holds is run again, and two branches pair only when they recorded one start."""
    pre, _, lr, scorer = seed_copy(study_v3_quick, tmp_path)
    first = schedule.branch("fm_ln", 0, tmp_path / "b", pre, 2, 2, lr, scorer)
    again = schedule.branch("fm_ln", 0, tmp_path / "b", pre, 2, 2, lr, scorer)
    assert again == first and first["branch_from"]["step"] == 2  # done once, then read back
    assert schedule.same_start(first, again) and not schedule.same_start(first, {"branch_from": None})
    at = runs.checkpoint.checkpoint_path  # seed 1's checkpoint at the branch step: other weights at step 2
    shutil.copyfile(at(study_v3_quick / "pretrain" / "s1" / "run" / "checkpoints", 2), at(pre / "run" / "checkpoints", 2))
    redone = schedule.branch("fm_ln", 0, tmp_path / "b", pre, 2, 2, lr, scorer)
    assert redone["branch_from"]["sha256"] != first["branch_from"]["sha256"]
    assert not schedule.same_start(first, redone)
    legacy = {k: v for k, v in redone.items() if k != "branch_from"}  # recorded before identities existed
    runs.write_json(tmp_path / "b" / "scores.json", legacy)
    assert schedule.branch("fm_ln", 0, tmp_path / "b", pre, 2, 2, lr, scorer) == legacy  # kept
    assert not schedule.same_start(legacy, legacy)


def test_a_seed_is_not_recreated_when_its_pair_started_from_one_checkpoint(tmp_path):
    runs.write_json(tmp_path / "selection.json", {"baseline": "fm_ln", "variant": "fc_input@fm_ln"})
    start = {"step": 4, "sha256": "a" * 64, "fd20": 20.0}
    for v, sha in (("fm_ln", "a"), ("fc_input@fm_ln", "a"), ("fm_ln", "b"), ("fc_input@fm_ln", "c")):
        seed = 0 if sha == "a" else 1
        (tmp_path / "scheduled" / f"{v}_s{seed}").mkdir(parents=True)
        runs.write_json(tmp_path / "scheduled" / f"{v}_s{seed}" / "scores.json",
                        {"variant": v, "seed": seed, "branch_from": {**start, "sha256": sha * 64}})
    assert v3.pair_done(tmp_path, 0)
    assert not v3.pair_done(tmp_path, 1)  # the arms started from different re-creations: both made again
    assert not v3.pair_done(tmp_path, 2)  # nothing yet
