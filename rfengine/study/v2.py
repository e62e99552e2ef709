"""The equal-compute study v2 of ReflexFlow on the embedded digits (issue 11), kept to reproduce
results/digits_v2 (`python -m rfengine.study` runs the current study, v3):

    python -m rfengine.study.v2                 # the whole protocol; resumable (run it again to continue)
    python -m rfengine.study.v2 --quick         # a smoke run of the same pipeline at tiny sizes

Regime (c), fine-tuning, the most promising one: per seed, FM is trained from scratch until its FD
at 20 Euler steps stops improving (rule in `runs.pretrain`); from that one pretrained model every
variant then trains for the same CPU seconds (fresh optimizer, `train.init_from`). Seconds per step
are calibrated once per study, each variant side by side on the same machine, and turned into step
counts, so every run is reproducible and the budget is equal by construction; each run's measured
CPU seconds are recorded next to it.

Selection seeds choose the variant (lowest mean log FD ratio to FM at 20 Euler steps); the choice is
frozen in selection.json before any confirmation seed is fine-tuned, and only FM and the chosen variant
are fine-tuned on the confirmation seeds. Their FM pretraining, which involves no variant, may run
while the selection is still going (it keeps both cores busy). All jobs form one dependency graph.
Output: results/digits_v2/{summary.json, report.md, fd_vs_seconds.png}.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from rfengine import checkpoint
from rfengine.study import runs, schedule, stats
from rfengine.study.pool import Pool

log = logging.getLogger("rfengine")
PROTOCOL_KEYS = ["variants", "select_seeds", "confirm_seeds", "lr", "ft_fm_steps", "points", "chunk", "min_steps",
                 "max_steps", "patience", "tol", "plateau_samples", "samples", "sample_steps"]
# regimes (b) and (a), added to a running study; recorded in protocol.json when first seen
ADDED_KEYS = ["tail_fm_steps", "scheduled_variants", "scratch_variants", "scratch_seeds", "controls"]
V2_VARIANTS = ["fm", "rf", "fc_only", "fc_input", "direction", "prob0.25"]  # the study's frozen protocol


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Equal-compute study: ReflexFlow variants vs FM on the digits.")
    p.add_argument("--out", default="results/digits_v2")
    p.add_argument("--workers", type=int, default=2, help="single-thread runs side by side")
    p.add_argument("--variants", nargs="+", default=V2_VARIANTS, choices=list(runs.VARIANTS))
    p.add_argument("--select-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--confirm-seeds", nargs="+", type=int, default=[5, 6, 7, 8, 9])
    runs.add_protocol_args(p)
    p.add_argument("--scheduled-variants", nargs="*", default=["chosen", "rf"], choices=["chosen", *V2_VARIANTS],
                   help="regime (b) variants ('chosen': the one frozen in selection.json); none to skip regime (b)")
    p.add_argument("--scratch-variants", nargs="*", default=["fc_input"], choices=V2_VARIANTS,
                   help="regime (a): trained from scratch for the seconds of the whole FM run; none to skip")
    p.add_argument("--scratch-seeds", nargs="*", type=int, default=[5, 6, 7, 8, 9])
    p.add_argument("--controls", nargs="*", default=list(runs.CONTROLS), choices=list(runs.CONTROLS),
                   help="fine-tuned on the confirmation seeds after everything else, against the chosen variant")
    p.add_argument("--stop-after", choices=["calibration", "selection"], help="stop after this phase")
    p.add_argument("--status", action="store_true",
                   help="print what has finished so far (paired ratios on the seeds complete so far); trains nothing")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the pipeline (about 3 minutes)")
    a = p.parse_args(argv)
    if a.quick:
        a.variants, a.select_seeds, a.confirm_seeds = ["fm", "fc_input"], [0, 1], [2]
        a.ft_fm_steps, a.points, a.chunk, a.min_steps, a.max_steps, a.patience = 8, 2, 4, 4, 8, 1
        a.plateau_samples, a.samples, a.sample_steps = 32, 64, [2, 20]
        a.tail_fm_steps, a.scheduled_variants, a.scratch_seeds, a.controls = 4, ["chosen"], [2], []
    if "fm" not in a.variants:
        p.error("--variants must include fm (every ratio is to FM)")
    if set(a.select_seeds) & set(a.confirm_seeds):
        p.error("--select-seeds and --confirm-seeds must not overlap")
    if a.ft_fm_steps % a.points:
        p.error("--ft-fm-steps must be a multiple of --points")
    return a


def _protocol(args, out: Path) -> None:
    """The protocol is frozen at the first start: continuing with other settings is refused. Keys
    added to the study later (ADDED_KEYS) are recorded the first time a run sees them."""
    path = out / "protocol.json"
    want = {k: getattr(args, k) for k in PROTOCOL_KEYS + ADDED_KEYS}
    if path.is_file():
        have = json.loads(path.read_text())
        diff = [k for k in want if k in have and have[k] != want[k]]
        if diff:
            raise SystemExit(f"rfengine: error: {out} was started with other settings ({', '.join(diff)}); "
                             "use another --out or the same settings")
        if any(k not in have for k in want):
            runs.write_json(path, {**have, **{k: v for k, v in want.items() if k not in have}})
    else:
        runs.write_json(path, want)


def calibrate(args, out: Path, pool: Pool) -> dict:
    path = out / "calibration.json"
    if path.is_file():
        cal = json.loads(path.read_text())
        was, now = cal["machine"].get("device", "cpu"), runs.cpu_info()["device"]
        if was != now:
            raise SystemExit(f"rfengine: error: {out} was calibrated on {was}, this machine trains on {now}: their "
                             "seconds are not comparable; use another --out")
        return cal
    reps = 1 if args.quick else 3
    jobs = {f"{v}#{r}": (r, [], runs.calibrate, (v, args.lr, 2 if args.quick else 10, 3 if args.quick else 40))
            for r in range(reps) for v in args.variants}
    res = pool.run(jobs, "calibration")
    cost = {v: float(np.median([res[f"{v}#{r}"] for r in range(reps)])) for v in args.variants}
    budget = args.ft_fm_steps * cost["fm"]
    steps = {v: max(args.points, int(round(budget / cost[v] / args.points)) * args.points) for v in args.variants}
    steps["fm"] = args.ft_fm_steps
    cal = {"cpu_seconds_per_step": cost, "cost_vs_fm": {v: c / cost["fm"] for v, c in cost.items()},
           "finetune_budget_cpu_seconds": budget, "finetune_steps": steps, "machine": runs.cpu_info(),
           "per_repeat": {j: r for j, r in res.items()}}
    runs.write_json(path, cal)
    return cal


def _scorer(args) -> dict:
    """The arguments of `runs.Scorer` for every full score of the study."""
    return {"samples": args.samples, "sample_steps": args.sample_steps}


def seed_jobs(args, out: Path, seed: int, cal: dict, confirm: bool = False) -> dict:
    """One seed's jobs: pretrain, score the pretrained model, fine-tune. A selection seed fine-tunes
    every variant; a confirmation seed fine-tunes FM and the chosen variant, and both wait for the
    `select` job (its FM pretraining, which involves no variant, may run during selection)."""
    scorer = _scorer(args)
    rule = {k: getattr(args, k) for k in ("chunk", "min_steps", "max_steps", "patience", "tol")}
    rule["samples"] = args.plateau_samples
    pre = out / "pretrain" / f"s{seed}"
    init = pre / "pretrained.safetensors"
    # Priorities (lowest first): the long pretraining runs start early, so the short fine-tunes fill the end.
    jobs = {f"pretrain s{seed}": (3 if confirm else 0, [], runs.pretrain, (seed, pre, rule, args.lr, scorer)),
            f"start s{seed}": (4, [f"pretrain s{seed}"], runs.score_file, (init, scorer, pre / "scores.json"))}
    deps = [f"pretrain s{seed}", *(["select"] if confirm else [])]
    for v in (["fm"] if confirm else args.variants):
        jobs[f"{v} s{seed}"] = (1, deps, runs.finetune, (v, seed, out / "finetune" / f"{v}_s{seed}", init,
                                                         cal["finetune_steps"][v], args.points, args.lr, scorer))
    if confirm:
        jobs[f"chosen s{seed}"] = (1, deps, runs.finetune_chosen, (out, seed, init, cal["finetune_steps"],
                                                                    args.points, args.lr, scorer))
    return jobs


def scheduled_jobs(args, out: Path, cal: dict) -> dict:
    """Regime (b) on every seed whose FM run keeps its checkpoint at the branch (`schedule.branch`): the
    chosen variant (after the choice) and the others named. A seed pretrained before its chunk
    checkpoints were kept is left out, and the log says so."""
    cost = cal["cpu_seconds_per_step"]
    steps = {v: max(1, round(args.tail_fm_steps * cost["fm"] / c)) for v, c in cost.items()}
    scorer = _scorer(args)
    jobs = {}
    for seed in [*args.select_seeds, *args.confirm_seeds]:
        pre = out / "pretrain" / f"s{seed}"
        if (pre / "plateau.json").is_file():
            plateau = json.loads((pre / "plateau.json").read_text())
            at = plateau.get("stopped_at", 0) - args.tail_fm_steps
            if "stopped_at" in plateau and not checkpoint.checkpoint_path(pre / "run" / "checkpoints", at).is_file():
                log.warning("regime (b): seed %d has no FM checkpoint at step %d; left out", seed, at)
                continue
        deps = [f"pretrain s{seed}", f"start s{seed}", "select"]
        for v in args.scheduled_variants:
            if v == "chosen":
                jobs[f"sched chosen s{seed}"] = (5, deps, schedule.branch_chosen,
                                                 (out, seed, pre, args.tail_fm_steps, steps, args.lr, scorer))
            else:
                jobs[f"sched {v} s{seed}"] = (5, deps, schedule.branch, (v, seed, out / "scheduled" / f"{v}_s{seed}", pre,
                                                                     args.tail_fm_steps, steps[v], args.lr, scorer))
    return jobs


def scratch_jobs(args, out: Path, cal: dict) -> dict:
    """Regime (a) (`runs.scratch`), after the choice and after regimes (c) and (b) in priority."""
    scorer = _scorer(args)
    return {f"scratch {v} s{s}": (6, [f"pretrain s{s}", f"start s{s}", "select"], runs.scratch,
                                  (v, s, out / "scratch" / f"{v}_s{s}", out / "pretrain" / f"s{s}",
                                   cal["cpu_seconds_per_step"], args.lr, scorer))
            for s in args.scratch_seeds for v in args.scratch_variants}


def control_jobs(args, out: Path, cal: dict) -> dict:
    """The controls (`runs.CONTROLS`) on the confirmation seeds, last: fine-tunes from the same pretrained
    model with FM's step count (they cost what FM costs)."""
    scorer = _scorer(args)
    return {f"control {c} s{s}": (7, [f"pretrain s{s}", "select"], runs.finetune,
                                  (c, s, out / "controls" / f"{c}_s{s}", out / "pretrain" / f"s{s}" / "pretrained.safetensors",
                                   cal["finetune_steps"]["fm"], args.points, args.lr, scorer))
            for s in args.confirm_seeds for c in args.controls}


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _protocol(args, out)
    if runs.on_gpu() and args.workers != 1:
        log.warning("a GPU is present: one run at a time (wall-clock seconds are the compute measure)")
        args.workers = 1
    pool = Pool(args.workers, out / "logs")
    cal = calibrate(args, out, pool)
    if args.stop_after == "calibration":
        return {}
    jobs = {}
    for s in args.select_seeds:
        jobs.update(seed_jobs(args, out, s, cal))
    jobs["select"] = (0, [f"{v} s{s}" for s in args.select_seeds for v in args.variants], runs.select,
                      (out, args.variants, args.select_seeds, args.sample_steps))
    if args.stop_after != "selection":
        for s in args.confirm_seeds:
            jobs.update(seed_jobs(args, out, s, cal, confirm=True))
        jobs.update(scheduled_jobs(args, out, cal))  # regime (c) first, then (b), then (a)
        jobs.update(scratch_jobs(args, out, cal))
        jobs.update(control_jobs(args, out, cal))
    selection = pool.run(jobs, "study")["select"]
    return summarize(args, out, cal, selection)


def summarize(args, out: Path, cal: dict, selection: dict) -> dict:
    from rfengine.study.report import write_report
    results, starts, plateaus = runs.finetune_results(out), {}, {}
    for s in [*args.select_seeds, *args.confirm_seeds]:
        pre = out / "pretrain" / f"s{s}"
        if (pre / "scores.json").is_file():
            starts[s] = json.loads((pre / "scores.json").read_text())
        if (pre / "plateau.json").is_file():
            plateaus[s] = json.loads((pre / "plateau.json").read_text())
    confirm = [s for s in args.confirm_seeds if ("fm", s) in results and (selection["variant"], s) in results]
    headline = None
    if confirm:
        r = stats.log_ratios(results, selection["variant"], confirm, stats.SELECT_AT)
        m, lo, hi = stats.t_interval(r)
        headline = {"regime": "finetune", "variant": selection["variant"], "sample_steps": stats.SELECT_AT,
                    "mean_log_ratio": m, "ci95": [lo, hi], "confirm_seeds": confirm, "per_seed": r,
                    "verdict": stats.verdict(m, lo, hi), "complete": len(confirm) == len(args.confirm_seeds)}
    rows = []
    for (v, s), r in sorted(results.items()):
        fm = results.get(("fm", s))
        for k, score in r["by_steps"].items():
            rows.append({"regime": "finetune", "variant": v, "seed": s, "sample_steps": int(k), **score,
                         "steps": r["steps"], "cpu_seconds": r["steps"] * cal["cpu_seconds_per_step"][v],
                         "cpu_seconds_measured": r["cpu_seconds_measured"],
                         "log_ratio_to_fm": None if fm is None else float(np.log(score["fd"] / fm["by_steps"][k]["fd"])),
                         "phase": "selection" if s in args.select_seeds else "confirmation"})
    scheduled = fm_run_summary(args, out, "scheduled", cal, starts, rows)
    scratch = fm_run_summary(args, out, "scratch", cal, starts, rows)
    summary = {"protocol": {k: getattr(args, k) for k in PROTOCOL_KEYS + ADDED_KEYS}, "calibration": cal,
               "scheduled": scheduled, "scratch": scratch,
               "controls": control_summary(args, out, results, selection["variant"]),
               "selection": selection, "headline": headline, "rows": rows,
               "confirmation": stats.compare(results, ["fm", selection["variant"]], confirm, args.sample_steps)
               if confirm else [],
               "pretrain": {str(s): {"stopped_at": p.get("stopped_at"), "reason": p.get("reason"),
                                     "history": p["history"], "cpu_seconds": p["cpu_seconds"]}
                            for s, p in plateaus.items()},
               "start_scores": {str(s): {k: v for k, v in sc.items() if k != "bias"} for s, sc in starts.items()},
               "curves": {f"{v}_s{s}": r["curve"] for (v, s), r in results.items()},
               "energy": {f"{v}_s{s}": {"paired_error_mean": r["paired_error_mean"],
                                        "energy_gap_end": r["energy_gap_end"]} for (v, s), r in results.items()}}
    runs.write_json(out / "summary.json", summary)
    write_report(summary, out)
    return summary


def fm_run_summary(args, out: Path, regime: str, cal: dict, starts: dict, rows: list) -> dict:
    """Regimes (b) `scheduled` and (a) `scratch`, whose baseline is each seed's FM pretraining run to
    its end: per variant, the paired log FD ratio to it per seed and budget, with the 95% interval;
    their rows are added to `rows`."""
    found = runs.finetune_results(out, regime)
    cost = cal["cpu_seconds_per_step"]
    block = {"baseline": "the seed's FM pretraining run to its end (the pretrained model)", "variants": {}}
    if regime == "scheduled":
        block["tail_fm_steps"] = args.tail_fm_steps
    for v in sorted({v for v, _ in found}):
        seeds = sorted(s for (w, s) in found if w == v and s in starts)
        if not seeds:
            continue
        results = {**{("fm", s): starts[s] for s in seeds}, **{(v, s): found[(v, s)] for s in seeds}}
        compared = stats.compare(results, ["fm", v], seeds, args.sample_steps)
        at = next(r for r in compared if r["sample_steps"] == stats.SELECT_AT)
        block["variants"][v] = {"seeds": seeds, "rows": compared,
                                "verdict": stats.verdict(at["mean_log_ratio"], *at["ci95"])}
        for s in seeds:
            r = found[(v, s)]
            extra = {"branch_step": r["branch_step"]} if "branch_step" in r else {}
            for k, score in r["by_steps"].items():
                base = starts[s]["by_steps"][k]
                rows.append({"regime": regime, "variant": v, "seed": s, "sample_steps": int(k), **score,
                             "steps": r["steps"], "cpu_seconds": r["steps"] * cost[v],
                             "cpu_seconds_measured": r["cpu_seconds_measured"], **extra,
                             "log_ratio_to_fm": float(np.log(score["fd"] / base["fd"])), "phase": regime})
                if not any(x["regime"] == regime and x["variant"] == "fm" and x["seed"] == s
                           and x["sample_steps"] == int(k) for x in rows):
                    rows.append({"regime": regime, "variant": "fm", "seed": s, "sample_steps": int(k), **base,
                                 "steps": r["fm_steps"], "cpu_seconds": r["fm_steps"] * cost["fm"],
                                 "cpu_seconds_measured": None, **extra, "log_ratio_to_fm": 0.0, "phase": regime})
    return block


def control_summary(args, out: Path, results: dict, chosen: str) -> dict:
    """Per control, on the confirmation seeds it finished: its paired log FD ratio to FM, and the chosen
    variant's ratio to it (below 0: the chosen variant beats the control too)."""
    found = runs.finetune_results(out, "controls")
    block = {}
    for c in sorted({c for c, _ in found}):
        seeds = [s for s in args.confirm_seeds if (c, s) in found and ("fm", s) in results and (chosen, s) in results]
        if not seeds:
            continue
        both = {**results, **found}
        vs_fm = stats.compare(both, [c], seeds, args.sample_steps)
        chosen_vs = stats.compare(both, [chosen], seeds, args.sample_steps, base=c)
        at = next(r for r in chosen_vs if r["sample_steps"] == stats.SELECT_AT)
        block[c] = {"seeds": seeds, "control_vs_fm": vs_fm, "chosen_vs_control": chosen_vs,
                    "verdict": stats.verdict(at["mean_log_ratio"], *at["ci95"], base=c),
                    "variants": runs.CONTROLS[c]}
    return block


def status(args) -> str:
    """The selection seeds finished so far and their paired ratios: progress, not the answer (the
    choice is made on all selection seeds)."""
    out = Path(args.out)
    results = runs.finetune_results(out)
    seeds = [s for s in args.select_seeds if all((v, s) in results for v in args.variants)]
    lines = [f"{out}: {len(results)} fine-tunes scored; selection seeds complete: {seeds or 'none'} "
             f"of {args.select_seeds}"]
    if seeds:
        for r in stats.compare(results, args.variants, seeds, args.sample_steps):
            per = ", ".join(f"{100 * (np.exp(x) - 1):+.1f}%" for x in r["per_seed"])
            lines.append(f"  {r['variant']:>10} @{r['sample_steps']:<3} FD vs FM per seed: {per}")
        from rfengine.study.report import plot
        starts = {str(s): json.loads((out / "pretrain" / f"s{s}" / "scores.json").read_text()) for s in seeds
                  if (out / "pretrain" / f"s{s}" / "scores.json").is_file()}
        partial = {"calibration": json.loads((out / "calibration.json").read_text()), "start_scores": starts,
                   "protocol": {"samples": args.samples},
                   "curves": {f"{v}_s{s}": results[(v, s)]["curve"] for v in args.variants for s in seeds}}
        path = plot(partial, out / "fd_vs_seconds_partial.png",
                    f"In progress: selection seeds {seeds} of {args.select_seeds} (not the answer)")
        lines.append(f"  plot: {path}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.status:
        print(status(args))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    summary = run(args)
    if summary.get("headline"):
        h = summary["headline"]
        print(f"headline ({h['regime']}, {h['variant']}, {h['sample_steps']} Euler steps, seeds {h['confirm_seeds']}): "
              f"{h['verdict']}")
    print(f"wrote {Path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
