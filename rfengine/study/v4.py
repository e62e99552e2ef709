"""The equal-compute study v4: where ReflexFlow pays per sampling budget (the quality-per-model-call frontier).

    python -m rfengine.study.v4              # the whole protocol; resumable (run it again to continue)
    python -m rfengine.study.v4 --quick      # a smoke run of the same pipeline at tiny sizes
    python -m rfengine.study.v4 --summarize  # summary.json, report.md and frontier.png from what has finished
    python -m rfengine.study.v4 --euler-check  # the secondary check (below) on the confirmations finished, then the summary

Question: at the same number of model calls per sample, does a recipe beat logit-normal FM once each side
samples with its own best few-call sampler and grid shift? Same machinery and rules as v3 (CPU seconds per
step calibrated side by side and turned into step counts; paired seeds; choices frozen before the
confirmation seeds exist):
  1. Selection seeds (default 0-4, their plateaued FM models adopted from `--adopt-from`): every recipe
     fine-tuned from the seed's model for the same CPU seconds, then scored on the frontier grid
     (`rfengine.study.frontier`: every budget, every sampler that spends it, every grid shift).
  2. Frozen in selection.json: per budget, each recipe's best sampler setting (lowest mean log FD over the
     selection seeds), the challenger (the recipe with the lowest mean log FD ratio to the baseline, each
     with its best setting) and the winner (the challenger when its ratio is below 1, else the baseline).
  3. Confirmation seeds (default 15-19, pretrained only after the freeze): the baseline and every budget's
     challenger fine-tuned and scored with their frozen settings; per budget the paired change with its
     95% t-interval (where the baseline won, by how much).
  4. A secondary check, fixed before any confirmation score existed (`--euler-check`): the confirmation models
     also scored with Euler at every budget on the uniform grid (`euler.json` beside each frontier), and per
     budget the paired change of each confirmed recipe against the baseline under Euler. It chooses nothing.
Recipes: logit-normal FM (the baseline), FC on the input-space bias with the default Euler rollout
(infer_steps 10), FC with Heun rollouts matched to 4-, 6- and 10-call Heun samplers (infer_steps 2, 3, 5),
ReflexFlow at its defaults (ADR + FC on the velocity bias) and with a Heun rollout matched to 6 calls, all on
logit-normal t. Output (default results/digits_v4, relative to the working directory):
{summary.json, report.md, frontier.png}.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rfengine.study import driver, frontier, runs
from rfengine.study.driver import CLASSIFIER, flop_floors
from rfengine.study.pool import Pool

log = logging.getLogger("rfengine")
BASELINE = "fm_ln"
EULER_CHECK = "euler.json"  # a confirmation model's scores with Euler at every budget (the secondary check)
RECIPES = [BASELINE, "fc_input@fm_ln", "fc_input_heun2@fm_ln", "fc_input_heun3@fm_ln", "fc_input_heun5@fm_ln",
           "rf@fm_ln", "rf_heun3@fm_ln"]
PROTOCOL_KEYS = ["recipes", "select_seeds", "confirm_seeds", "adopt_from", "lr", "ft_fm_steps", "points", "chunk",
                 "min_steps", "max_steps", "patience", "tol", "plateau_samples", "samples", "budgets", "methods",
                 "shifts", "shift_up_to"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Equal-compute study v4: the quality-per-model-call frontier.")
    p.add_argument("--out", default="results/digits_v4")
    p.add_argument("--workers", type=int, default=2, help="single-thread runs side by side")
    p.add_argument("--recipes", nargs="+", default=RECIPES, help=f"study variants; the first is the baseline ({BASELINE})")
    p.add_argument("--select-seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--confirm-seeds", nargs="+", type=int, default=[15, 16, 17, 18, 19])
    p.add_argument("--adopt-from", default="results/digits_v2",
                   help="a study whose pretrained selection-seed models are reused ('' to pretrain them here)")
    runs.add_protocol_args(p)
    p.add_argument("--budgets", nargs="+", type=int, default=list(frontier.BUDGETS), help="model calls per sample")
    p.add_argument("--methods", nargs="+", default=list(frontier.METHODS), choices=list(frontier.METHODS))
    p.add_argument("--shifts", nargs="+", type=float, default=list(frontier.SHIFTS))
    p.add_argument("--shift-up-to", type=int, default=frontier.SHIFT_UP_TO,
                   help="budgets above this are scored on the unshifted grid only")
    p.add_argument("--stop-after", choices=["calibration", "selection"])
    p.add_argument("--summarize", action="store_true", help="write the summary from the runs finished so far")
    p.add_argument("--euler-check", action="store_true",
                   help="score the finished confirmation models with Euler at every budget (the secondary check; "
                        "cached per model), then write the summary")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the pipeline")
    p.set_defaults(samples=1000)
    if p.parse_args(argv).quick:  # tiny defaults; options given explicitly still win
        p.set_defaults(recipes=[BASELINE, "fc_input_heun2@fm_ln"], select_seeds=[0, 1], confirm_seeds=[2],
                       adopt_from="", ft_fm_steps=2, points=1, chunk=2, min_steps=2, max_steps=2, patience=1,
                       plateau_samples=16, samples=16, budgets=[2, 4], methods=["euler", "heun"])
    a = p.parse_args(argv)
    if set(a.select_seeds) & set(a.confirm_seeds):
        p.error("--select-seeds and --confirm-seeds must not overlap")
    if a.ft_fm_steps % a.points:
        p.error("--ft-fm-steps must be a multiple of --points")
    try:
        [runs.overrides(r) for r in a.recipes]
    except ValueError as e:
        p.error(f"--recipes: {e}")
    a.baseline = a.recipes[0]
    a.variants = list(dict.fromkeys(["fm", *a.recipes]))  # calibrated: FM's cost sets the budget
    return a



def grid_of(args) -> dict:
    return frontier.settings(args.budgets, args.methods, args.shifts, args.shift_up_to)


def frontiers(out: Path, file: str = "frontier.json") -> dict:
    """(recipe, seed) -> frontier scores (`file`: the frontier, or `EULER_CHECK`) of every finished fine-tune
    under `out`."""
    res = {}
    for f in sorted((out / "finetune").glob(f"*/{file}")):
        sc = json.loads((f.parent / "scores.json").read_text())
        res[(sc["variant"], sc["seed"])] = json.loads(f.read_text())
    return res


def select(out: Path, recipes, baseline: str, seeds, budgets) -> dict:
    """The frozen choices (selection.json), made once from the selection seeds' frontiers."""
    path = out / "selection.json"
    if not path.is_file():
        fr = {k: v for k, v in frontiers(out).items() if k[1] in seeds}
        chosen = frontier.choose(fr, recipes, baseline, list(seeds), budgets)
        sel = {"baseline": baseline, "budgets": chosen}
        runs.write_json(path, {**sel, "confirm_recipes": frontier.confirm_set(sel), "seeds": list(seeds),
                               "rule": "per budget: each recipe's sampler setting with the lowest mean log FD on "
                                       "the selection seeds; the challenger is the other recipe with the lowest "
                                       "mean log(FD/FD_baseline), each with its own setting, and the winner is "
                                       "the challenger if that is below 0, else the baseline; the confirmation "
                                       "runs the baseline and every budget's challenger"})
    return json.loads(path.read_text())


def confirm_job(out: Path, recipe: str, seed: int, init: Path, steps: dict, points: int, lr: float,
                scorer_args: dict, grid: dict) -> dict:
    """A confirmation fine-tune of `recipe`, scored with its frozen sampler setting at every budget."""
    chosen = json.loads((out / "selection.json").read_text())["budgets"]
    return frontier.finetune_and_score(recipe, seed, out / "finetune" / f"{recipe}_s{seed}", init, steps[recipe],
                                       points, lr, scorer_args, frontier.confirm_grid(chosen, recipe, grid))


def scorer_args(args, out: Path) -> dict:
    """The `Scorer` of every score of this study (its samples, noise and pinned classifier)."""
    scorer = {"samples": args.samples, "sample_steps": [20], "classifier": str(out / CLASSIFIER)}
    if args.quick:
        scorer["bias_samples"] = 16
    return scorer


def jobs(args, out: Path, cal: dict) -> dict:
    """name -> (priority, deps, fn, args); lower priority first: selection, then confirmation."""
    steps, grid, scorer = cal["finetune_steps"], grid_of(args), scorer_args(args, out)
    rule = {k: getattr(args, k) for k in ("chunk", "min_steps", "max_steps", "patience", "tol")}
    rule["samples"] = args.plateau_samples
    out_jobs = {}
    for s in args.select_seeds:
        pre = out / "pretrain" / f"s{s}"
        init = pre / "pretrained.safetensors"
        out_jobs[f"pretrain s{s}"] = (0, [], runs.pretrain, (s, pre, rule, args.lr, scorer))
        for r in args.recipes:
            out_jobs[f"{r} s{s}"] = (1, [f"pretrain s{s}"], frontier.finetune_and_score,
                                     (r, s, out / "finetune" / f"{r}_s{s}", init, steps[r], args.points, args.lr,
                                      scorer, grid))
    out_jobs["select"] = (0, [f"{r} s{s}" for s in args.select_seeds for r in args.recipes], select,
                          (out, args.recipes, args.baseline, args.select_seeds, args.budgets))
    if args.stop_after == "selection":
        return out_jobs
    for s in args.confirm_seeds:
        pre = out / "pretrain" / f"s{s}"
        init = pre / "pretrained.safetensors"
        out_jobs[f"pretrain s{s}"] = (0, ["select"], runs.pretrain, (s, pre, rule, args.lr, scorer))
        for r in args.recipes:  # every recipe is a candidate until the freeze; the ones it does not confirm skip
            out_jobs[f"{r} s{s}"] = (1, [f"pretrain s{s}", "select"], confirm_if_chosen,
                                     (out, r, s, init, steps, args.points, args.lr, scorer, grid))
    return out_jobs


def confirm_if_chosen(out: Path, recipe: str, seed: int, *rest) -> dict | None:
    """`confirm_job` for a recipe the frozen selection confirms (`frontier.confirm_set`); nothing for the others."""
    if recipe not in frontier.confirm_set(json.loads((out / "selection.json").read_text())):
        return None
    return confirm_job(out, recipe, seed, *rest)


def euler_jobs(args, out: Path) -> dict:
    """The secondary check's jobs: each finished confirmation fine-tune of a confirmed recipe scored with Euler
    at every budget on the uniform grid, with the same scorer (samples, noise, classifier) as its frontier."""
    sel = json.loads((out / "selection.json").read_text())
    grid, scorer = frontier.settings(args.budgets, ["euler"], [1.0]), scorer_args(args, out)
    found = {}
    for s in args.confirm_seeds:
        for r in frontier.confirm_set(sel):
            d = out / "finetune" / f"{r}_s{s}"
            if (d / "frontier.json").is_file():  # its fine-tune and frozen scores have finished
                found[f"euler {r} s{s}"] = (0, [], frontier.score, (d / "run" / "ema.safetensors", scorer, grid,
                                                                    d / EULER_CHECK))
    return found


def run(args) -> dict:
    if args.euler_check:
        out = Path(args.out)
        if not (out / "selection.json").is_file():  # before the protocol: a folder without a study stays untouched
            raise SystemExit(f"rfengine: error: --euler-check: {out / 'selection.json'} is missing: "
                             "the check scores the confirmation models, which exist only after the selection")
        driver.freeze_protocol(args, out, PROTOCOL_KEYS)  # this study's settings, or refused
        found = euler_jobs(args, out)
        driver.one_at_a_time_on_gpu(args)
        log.info("Euler check: %d finished confirmation models to score (scored ones are cached)", len(found))
        Pool(args.workers, out / "logs").run(found, "study v4, Euler check")
        args.summarize = True
    return driver.run(args, PROTOCOL_KEYS, jobs, summarize, "study v4")



def summarize(args, out: Path, cal: dict) -> dict:
    """summary.json, report.md and frontier.png from whatever has finished."""
    from rfengine.study.report_v4 import advice, confirmation, euler_check, write_report
    sel = json.loads((out / "selection.json").read_text()) if (out / "selection.json").is_file() else None
    fr = frontiers(out)
    cost = cal["cpu_seconds_per_step"]
    by_budget = confirmation(fr, sel, args.confirm_seeds, cost) if sel else None
    euler = frontiers(out, EULER_CHECK)
    summary = {"protocol": {k: getattr(args, k) for k in PROTOCOL_KEYS}, "calibration": cal, "selection": sel,
               "by_budget": by_budget,
               # per budget what to train and how to sample, as the confirmation (not the selection) decides
               "answer": advice(by_budget) if by_budget else None,
               "euler_check": euler_check(euler, sel, args.confirm_seeds) if sel else None,
               "step_costs": {r: {"measured_vs_fm": cal["cost_vs_fm"][r],
                                  "measured_vs_baseline": cost[r] / cost[args.baseline],
                                  "flop_floor_vs_fm": f} for r, f in flop_floors(args.variants).items()},
               "frontiers": {f"{r}_s{s}": v["by_budget"] for (r, s), v in fr.items()},
               "euler_frontiers": {f"{r}_s{s}": v["by_budget"] for (r, s), v in euler.items()},
               "finetunes": {f"{v}_s{s}": {"steps": r["steps"], "cpu_seconds_measured": r["cpu_seconds_measured"],
                                           "fd20": r["by_steps"]["20"]["fd"], "curve": r["curve"]}
                             for (v, s), r in runs.finetune_results(out).items()}}
    runs.write_json(out / "summary.json", summary)
    write_report(summary, out)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    summary = run(args)
    for b, row in (summary.get("by_budget") or {}).items():
        print(f"{b} calls: {row['verdict']}")
    print(f"wrote {Path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
