"""The equal-compute study v3: FC against the strongest cheap baseline, and FC at FM's cost.

    python -m rfengine.study                 # the whole protocol; resumable (run it again to continue)
    python -m rfengine.study --quick         # a smoke run of the same pipeline at tiny sizes

Same machinery and rules as study v2 (docs/study.md): CPU seconds per step calibrated once, side by side,
and turned into step counts (`rfengine.study.calibration`); paired seeds; the choice frozen before the
confirmation seeds exist.
  1. The strongest baseline: FM with uniform t, logit-normal t, Min-SNR-5 and the cosine velocity loss,
     each fine-tuned from the selection seeds' plateaued FM models (v2's committed models, which none of
     these variants has seen) for the same CPU seconds. Lowest mean log FD ratio to FM at 20 Euler
     steps: "the baseline", frozen in baseline.json.
  2. FC variants on top of the baseline's time sampler and weighting (`<fc>@<baseline>`): FC on the
     input-space bias, the same with the rollout on half and a quarter of the samples, FC on the
     training forward's own error (`self`), and `self` without the low-pass. Lowest mean log ratio to the
     baseline: the variant, frozen with the baseline in selection.json.
  3. Confirmation seeds (new, pretrained only after the choice is frozen): FM, the baseline and the
     variant fine-tuned; the headline compares the variant with the baseline, `baseline_vs_fm` the
     baseline with uniform-t FM.
  4. Regime (b), scheduled: each seed's FM run branched `tail_fm_steps` FM-steps' seconds before its end
     and continued with the baseline and with the variant. Chunk checkpoints are not committed: where this
     machine lacks them they are re-created first (confirmation seeds first), to the branch step and checked
     against the FD@20 the pretraining recorded there; the adopted selection seeds, whose histories v2's
     classifier scored, to the end and checked against the committed models.
Output: <--out>/{summary.json, report.md, fd_vs_seconds.png}. The defaults of `--out` (results/digits_v3)
and `--adopt-from` (results/digits_v2, v2's committed models) are paths relative to the working directory:
run from the repository's root, or pass both.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


from rfengine.study import driver, runs, schedule, stats
from rfengine.study.driver import CLASSIFIER, flop_floors

log = logging.getLogger("rfengine")
BASELINES = ["fm", "fm_ln", "fm_snr", "fm_cos"]
FC_VARIANTS = ["fc_input", "fc_input_p0.5", "fc_input_p0.25", "fc_self", "fc_self_nomask"]
PROTOCOL_KEYS = ["baselines", "fc_variants", "select_seeds", "confirm_seeds", "adopt_from", "lr", "ft_fm_steps",
                 "points", "chunk", "min_steps", "max_steps", "patience", "tol", "plateau_samples", "samples",
                 "sample_steps", "tail_fm_steps"]


def on_top(fc: str, baseline: str) -> str:
    """The run name of FC variant `fc` on the baseline's time sampler and weighting."""
    return fc if baseline == "fm" else f"{fc}@{baseline}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Equal-compute study v3: FC against the strongest cheap baseline.")
    p.add_argument("--out", default="results/digits_v3",
                   help="the study folder, relative to the working directory (the committed one: from the "
                        "repository's root)")
    p.add_argument("--workers", type=int, default=2, help="single-thread runs side by side")
    p.add_argument("--baselines", nargs="+", default=BASELINES, choices=BASELINES)
    p.add_argument("--fc-variants", nargs="+", default=FC_VARIANTS, choices=FC_VARIANTS)
    p.add_argument("--select-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--confirm-seeds", nargs="+", type=int, default=[10, 11, 12, 13, 14])
    p.add_argument("--adopt-from", default="results/digits_v2",
                   help="a study folder whose pretrained selection-seed models are reused, relative to the "
                        "working directory (default: v2's committed models, from the repository's root); '' to "
                        "pretrain them here")
    runs.add_protocol_args(p)
    p.add_argument("--stop-after", choices=["calibration", "baseline", "selection", "finetune"],
                   help="stop after this phase (finetune: before regime (b))")
    p.add_argument("--summarize", action="store_true",
                   help="write summary.json and report.md from the runs finished so far; trains nothing")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the pipeline")
    a = p.parse_args(argv)
    if a.quick:
        a.baselines, a.fc_variants, a.select_seeds, a.confirm_seeds = ["fm", "fm_ln"], ["fc_input", "fc_self"], [0, 1], [2]
        a.adopt_from, a.ft_fm_steps, a.points, a.chunk, a.min_steps, a.max_steps, a.patience = "", 6, 2, 2, 2, 4, 1
        a.plateau_samples, a.samples, a.sample_steps, a.tail_fm_steps = 16, 16, [2, 20], 2
    if "fm" not in a.baselines:
        p.error("--baselines must include fm (uniform-t FM is what every baseline is measured against)")
    if set(a.select_seeds) & set(a.confirm_seeds):
        p.error("--select-seeds and --confirm-seeds must not overlap")
    if a.ft_fm_steps % a.points:
        p.error("--ft-fm-steps must be a multiple of --points")
    # every run whose step cost is calibrated: the baselines, and each FC variant on each of them
    a.variants = [*a.baselines, *(on_top(f, b) for b in a.baselines for f in a.fc_variants)]
    return a





# ---------------------------------------------------------------------------------------------
# Choices, each made once and frozen
# ---------------------------------------------------------------------------------------------

def select_baseline(out: Path, baselines, seeds, sample_steps) -> dict:
    """The baseline with the lowest mean log FD ratio to uniform-t FM at 20 Euler steps on the selection
    seeds (FM itself, ratio 0, when none beats it); frozen in baseline.json."""
    path = out / "baseline.json"
    if not path.is_file():
        results = runs.finetune_results(out)
        missing = [f"{b} s{s}" for s in seeds for b in baselines if (b, s) not in results]
        if missing:
            raise RuntimeError(f"the baseline choice needs every baseline fine-tune; missing: {', '.join(missing)}")
        rows = stats.compare(results, baselines, seeds, sample_steps)
        at = [r for r in rows if r["sample_steps"] == stats.SELECT_AT]
        best = min(at, key=lambda r: r["mean_log_ratio"]) if at else None
        chosen = best["variant"] if best is not None and best["mean_log_ratio"] < 0 else "fm"
        runs.write_json(path, {"baseline": chosen, "rule": f"lowest mean log(FD/FD_fm) at {stats.SELECT_AT} Euler "
                                                            "steps on the selection seeds (fm if none is below 0)",
                               "seeds": list(seeds), "rows": rows})
    return json.loads(path.read_text())


def baseline_of(out: Path) -> str:
    return json.loads((out / "baseline.json").read_text())["baseline"]


def finetune_on_baseline(out: Path, fc: str, seed: int, init: Path, steps: dict, points: int, lr: float,
                         scorer_args: dict) -> dict:
    """FC variant `fc` on top of the frozen baseline, fine-tuned from seed `seed`'s pretrained model."""
    v = on_top(fc, baseline_of(out))
    return runs.finetune(v, seed, out / "finetune" / f"{v}_s{seed}", init, steps[v], points, lr, scorer_args)


def select(out: Path, fc_variants, seeds, sample_steps) -> dict:
    """The FC variant (on the baseline) with the lowest mean log FD ratio to the baseline at 20 Euler
    steps on the selection seeds; frozen with the baseline in selection.json."""
    path = out / "selection.json"
    if not path.is_file():
        base = baseline_of(out)
        names = [on_top(f, base) for f in fc_variants]
        results = runs.finetune_results(out)
        missing = [f"{v} s{s}" for s in seeds for v in names if (v, s) not in results]
        if missing:
            raise RuntimeError(f"selection needs every FC fine-tune; missing: {', '.join(missing)}")
        rows = stats.compare(results, names, seeds, sample_steps, base=base)
        choice = stats.choose(rows)
        runs.write_json(path, {**choice, "baseline": base, "rule": f"lowest mean log(FD/FD_baseline) at "
                               f"{stats.SELECT_AT} Euler steps on the selection seeds", "seeds": list(seeds),
                               "rows": rows})
    return json.loads(path.read_text())


def finetune_frozen(out: Path, which: str, seed: int, init: Path, steps: dict, points: int, lr: float,
                    scorer_args: dict) -> dict:
    """A confirmation fine-tune of the frozen `baseline` or `variant`."""
    v = json.loads((out / "selection.json").read_text())[which]
    return runs.finetune(v, seed, out / "finetune" / f"{v}_s{seed}", init, steps[v], points, lr, scorer_args)


def branch_frozen(out: Path, which: str, seed: int, tail: int, steps: dict, lr: float, scorer_args: dict) -> dict:
    """Regime (b) with the frozen `baseline` or `variant`, or uniform-t FM (`fm`, the baseline's own
    reference: the same seconds of the FM run it branched from)."""
    v = "fm" if which == "fm" else json.loads((out / "selection.json").read_text())[which]
    return schedule.branch(v, seed, out / "scheduled" / f"{v}_s{seed}", out / "pretrain" / f"s{seed}", tail,
                           steps[v], lr, scorer_args)


def pair_done(out: Path, seed: int) -> bool:
    """Whether seed `seed`'s regime (b) baseline and variant branches are finished from the same checkpoint."""
    sel = out / "selection.json"
    if not sel.is_file():
        return False
    chosen, done = json.loads(sel.read_text()), runs.finetune_results(out, "scheduled")
    pair = [done.get((chosen[w], seed)) for w in ("baseline", "variant")]
    return None not in pair and schedule.same_start(*pair)


# ---------------------------------------------------------------------------------------------
# The job graph
# ---------------------------------------------------------------------------------------------

def jobs(args, out: Path, cal: dict) -> dict:
    """name -> (priority, deps, fn, args); lower priority first. Selection, then confirmation, then (b)."""
    steps, scorer = cal["finetune_steps"], {"samples": args.samples, "sample_steps": args.sample_steps,
                                            "classifier": str(out / CLASSIFIER)}
    if args.quick:  # the exposure-bias curve on fewer trajectories (the protocol's 256 otherwise)
        scorer["bias_samples"] = 16
    rule = {k: getattr(args, k) for k in ("chunk", "min_steps", "max_steps", "patience", "tol")}
    rule["samples"] = args.plateau_samples
    tail = {v: max(1, round(args.tail_fm_steps * cal["cpu_seconds_per_step"]["fm"] / c))
            for v, c in cal["cpu_seconds_per_step"].items()}
    out_jobs = {}
    for s in args.select_seeds:
        pre = out / "pretrain" / f"s{s}"
        init = pre / "pretrained.safetensors"
        out_jobs[f"pretrain s{s}"] = (0, [], runs.pretrain, (s, pre, rule, args.lr, scorer))
        out_jobs[f"start s{s}"] = (4, [f"pretrain s{s}"], runs.score_file, (init, scorer, pre / "scores.json"))
        for b in args.baselines:
            out_jobs[f"{b} s{s}"] = (1, [f"pretrain s{s}"], runs.finetune,
                                     (b, s, out / "finetune" / f"{b}_s{s}", init, steps[b], args.points, args.lr, scorer))
        for f in args.fc_variants:
            out_jobs[f"{f}@base s{s}"] = (2, ["baseline"], finetune_on_baseline,
                                          (out, f, s, init, steps, args.points, args.lr, scorer))
    out_jobs["baseline"] = (0, [f"{b} s{s}" for s in args.select_seeds for b in args.baselines], select_baseline,
                            (out, args.baselines, args.select_seeds, args.sample_steps))
    out_jobs["select"] = (0, [f"{f}@base s{s}" for s in args.select_seeds for f in args.fc_variants], select,
                          (out, args.fc_variants, args.select_seeds, args.sample_steps))
    if args.stop_after in ("baseline", "selection"):
        if args.stop_after == "baseline":
            return {j: v for j, v in out_jobs.items() if "@base" not in j and j != "select"}
        return out_jobs
    for s in args.confirm_seeds:
        pre = out / "pretrain" / f"s{s}"
        init = pre / "pretrained.safetensors"
        # the longest jobs first: every confirmation seed's pretraining before any fine-tune, so that no
        # worker waits beside the last seed's pretraining
        out_jobs[f"pretrain s{s}"] = (0, ["select"], runs.pretrain, (s, pre, rule, args.lr, scorer))
        out_jobs[f"start s{s}"] = (4, [f"pretrain s{s}"], runs.score_file, (init, scorer, pre / "scores.json"))
        out_jobs[f"fm s{s}"] = (1, [f"pretrain s{s}"], runs.finetune,
                                ("fm", s, out / "finetune" / f"fm_s{s}", init, steps["fm"], args.points, args.lr, scorer))
        for which in ("baseline", "variant"):
            out_jobs[f"{which} s{s}"] = (1, [f"pretrain s{s}"], finetune_frozen,
                                         (out, which, s, init, steps, args.points, args.lr, scorer))
    if args.stop_after == "finetune":
        return out_jobs
    for s in [*args.select_seeds, *args.confirm_seeds]:
        # regime (b) branches from chunk checkpoints, which are not committed: on another machine (or for the
        # adopted seeds) only a re-creation brings them back; where they are here it only checks them.
        # The confirmation seeds first: their regime (b) pairs are the ones no choice has looked at. Their
        # pretraining was scored by this study's classifier, so the branch step is checked against its
        # history; the adopted seeds' histories were scored by v2's, so theirs are re-created to the end.
        # A seed whose baseline and variant branches are done from one checkpoint is not re-created again
        # (a re-creation here may come out differently, and would make both run again); its uniform-t FM
        # tail, the lowest priority, is then left out.
        pre, own = out / "pretrain" / f"s{s}", s in args.confirm_seeds or not args.adopt_from
        if pair_done(out, s):
            continue
        first = [] if own else [f"pretrain s{c}" for c in args.confirm_seeds]  # else they take a worker at once
        out_jobs[f"recreate s{s}"] = (8 if own else 10, [f"pretrain s{s}", *first], schedule.recreate,
                                      (s, pre, rule, args.lr, scorer, args.tail_fm_steps if own else None))
        deps = [f"pretrain s{s}", f"start s{s}", "select", f"recreate s{s}"]
        for which in ("baseline", "variant", "fm"):  # fm after the baseline: the same run when it is fm
            out_jobs[f"sched {which} s{s}"] = (9 if which == "fm" else 5,
                                               deps + ([f"sched baseline s{s}"] if which == "fm" else []),
                                               branch_frozen, (out, which, s, args.tail_fm_steps, tail, args.lr, scorer))
    return out_jobs


def run(args) -> dict:
    return driver.run(args, PROTOCOL_KEYS, jobs, summarize, "study v3")


# ---------------------------------------------------------------------------------------------
# The summary
# ---------------------------------------------------------------------------------------------

def paired(results: dict, variant: str, base: str, seeds, regime: str, cost: dict, sample_steps) -> dict | None:
    """variant against base on the seeds where both finished: the paired log FD ratio at 20 Euler steps
    (mean, 95% interval, per seed), every budget's row, and the measured step cost ratio."""
    seeds = [s for s in seeds if (variant, s) in results and (base, s) in results]
    if not seeds:
        return None
    r = stats.log_ratios(results, variant, seeds, stats.SELECT_AT, base=base)
    m, lo, hi = stats.t_interval(r)
    return {"baseline": base, "variant": variant, "regime": regime, "sample_steps": stats.SELECT_AT,
            "mean_log_ratio": m, "ci95": [lo, hi], "confirm_seeds": seeds, "per_seed": r,
            "step_cost": cost[variant] / cost[base], "verdict": stats.verdict(m, lo, hi, base=base),
            "rows": stats.compare(results, [variant], seeds, sample_steps, base=base)}



def summarize(args, out: Path, cal: dict) -> dict:
    """summary.json and report.md from whatever has finished (the blocks not reached yet are None)."""
    from rfengine.study.report_v3 import write_report
    if not (out / "baseline.json").is_file():
        raise SystemExit(f"rfengine: error: {out}: nothing to summarize before the baseline is chosen")
    sel = json.loads((out / "selection.json").read_text()) if (out / "selection.json").is_file() else None
    base = sel["baseline"] if sel else baseline_of(out)
    cost = cal["cpu_seconds_per_step"]
    ft = runs.finetune_results(out)
    starts = {s: json.loads((out / "pretrain" / f"s{s}" / "scores.json").read_text())
              for s in [*args.select_seeds, *args.confirm_seeds] if (out / "pretrain" / f"s{s}" / "scores.json").is_file()}
    headline = vs_fm = None
    scheduled = {"tail_fm_steps": args.tail_fm_steps, "variant_vs_baseline": None, "baseline_vs_fm": None}
    if sel:
        variant = sel["variant"]
        headline = paired(ft, variant, base, args.confirm_seeds, "finetune", cost, args.sample_steps)
        vs_fm = paired(ft, base, "fm", args.confirm_seeds, "finetune", cost, args.sample_steps) if base != "fm" else None
        for block in (headline, vs_fm):
            if block is not None:
                block["complete"] = block["confirm_seeds"] == list(args.confirm_seeds)
        sched, seeds = runs.finetune_results(out, "scheduled"), [*args.select_seeds, *args.confirm_seeds]
        for key, (v, b) in (("variant_vs_baseline", (variant, base)), ("baseline_vs_fm", (base, "fm"))):
            same = [s for s in seeds if (v, s) in sched and (b, s) in sched and schedule.same_start(sched[v, s], sched[b, s])]
            block = paired({k: r for k, r in sched.items() if k[1] in same}, v, b, seeds, "scheduled", cost,
                           args.sample_steps) if b != v else None
            if block is not None:  # both arms of every pair from one checkpoint; the pairs that were not are named
                block["excluded"] = [s for s in seeds if (v, s) in sched and (b, s) in sched and s not in same]
            scheduled[key] = block
    floors = flop_floors(dict.fromkeys([*args.baselines, *(on_top(f, base) for f in args.fc_variants)]))
    summary = {"protocol": {k: getattr(args, k) for k in PROTOCOL_KEYS}, "calibration": cal,
               "baseline_choice": json.loads((out / "baseline.json").read_text()), "selection": sel,
               "headline": headline, "baseline_vs_fm": vs_fm, "scheduled": scheduled,
               "step_costs": {v: {"measured_vs_fm": cal["cost_vs_fm"][v], "flop_floor_vs_fm": floors.get(v)}
                              for v in floors},
               "finetunes": {f"{v}_s{s}": {"by_steps": r["by_steps"], "steps": r["steps"],
                                           "cpu_seconds_measured": r["cpu_seconds_measured"],
                                           "paired_error_mean": r["paired_error_mean"],
                                           "energy_gap_end": r["energy_gap_end"]} for (v, s), r in ft.items()},
               "curves": {f"{v}_s{s}": r["curve"] for (v, s), r in ft.items()},
               "start_scores": {str(s): {k: v for k, v in sc.items() if k != "bias"} for s, sc in starts.items()},
               "recreated": {str(s): json.loads((out / "pretrain" / f"s{s}" / "recreated.json").read_text())
                             for s in [*args.select_seeds, *args.confirm_seeds]
                             if (out / "pretrain" / f"s{s}" / "recreated.json").is_file()}}
    runs.write_json(out / "summary.json", summary)
    write_report(summary, out)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    summary = run(args)
    h = summary.get("headline")
    if h:
        print(f"headline ({h['regime']}, {h['variant']} vs {h['baseline']}, {h['sample_steps']} Euler steps, "
              f"seeds {h['confirm_seeds']}): {h['verdict']}")
    if summary.get("baseline_vs_fm"):
        print(f"baseline vs uniform-t FM: {summary['baseline_vs_fm']['verdict']}")
    print(f"wrote {Path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
