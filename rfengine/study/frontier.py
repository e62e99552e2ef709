"""The quality-per-model-call frontier: a model scored at each budget of model calls with every few-call
sampler that fits it and every grid shift, and the choices made from those scores (each recipe's best
sampler at a budget, and the best recipe at a budget against the baseline, each with its best sampler).

A budget B is the number of model calls per sample: Euler, DPM-Solver++(2M) and Adams-Bashforth 2 with B
steps, Heun with B/2 (two calls a step). Every sampler sees the same initial noise (`Scorer.noise`), so
the differences between samplers and models are not sampling noise.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from rfengine.flow import CALLS_PER_STEP
from rfengine.study import runs, stats
from rfengine.study.scoring import SHAPE, Scorer

BUDGETS = (4, 6, 10, 20, 40)
METHODS = ("euler", "heun", "dpmpp2m", "ab2")
SHIFTS = (1.0, 2.0)
SHIFT_UP_TO = 10  # budgets above this are scored on the unshifted grid only (a shift matters most at few steps)


def name(method: str, steps: int, shift: float) -> str:
    """A sampler setting's name, e.g. `heun-3`, `dpmpp2m-10_shift2`."""
    return f"{method}-{steps}" + ("" if shift == 1.0 else f"_shift{shift:g}")


def parse(setting: str) -> tuple[str, int, float]:
    """The inverse of `name`: `dpmpp2m-10_shift2` -> ("dpmpp2m", 10, 2.0)."""
    head, _, shift = setting.partition("_shift")
    method, _, steps = head.rpartition("-")
    return method, int(steps), float(shift) if shift else 1.0


def settings(budgets=BUDGETS, methods=METHODS, shifts=SHIFTS, shift_up_to: int = SHIFT_UP_TO) -> dict:
    """budget (str) -> the sampler settings that spend exactly that many model calls per sample:
    [{"name", "method", "steps", "shift"}]."""
    out = {}
    for b in budgets:
        rows = []
        for m in methods:
            calls = CALLS_PER_STEP[m]
            if b % calls:
                continue
            for sh in (shifts if b <= shift_up_to else (1.0,)):
                rows.append({"name": name(m, b // calls, sh), "method": m, "steps": b // calls, "shift": float(sh)})
        out[str(b)] = rows
    return out


@torch.inference_mode()
def fd(model, scorer: Scorer, method: str, steps: int, shift: float) -> float:
    """FD of `scorer.samples` samples of `model` with one sampler setting, against the real digits."""
    from rfengine.eval import feature_stats, frechet_distance
    from rfengine.sample import generate
    parts = []
    for i in range(0, scorer.samples, scorer.batch):
        noise = scorer.noise[i:i + scorer.batch][: scorer.samples - i]
        parts.append(generate(model, shape=SHAPE, n=len(noise), labels=None, noise=noise, method=method,
                              steps=steps, shift=shift).clamp(-1, 1))
    return frechet_distance(*feature_stats(scorer.feats(torch.cat(parts))), *scorer.real_stats)


def score(weights: Path, scorer_args: dict, grid: dict, path: Path) -> dict:
    """FD of the EMA weights at `weights` for every setting of `grid` (budget -> settings); cached in `path`."""
    if path.is_file():
        return json.loads(path.read_text())
    model, scorer = runs.load(weights), Scorer(**scorer_args)
    by_budget = {b: {s["name"]: fd(model, scorer, s["method"], s["steps"], s["shift"]) for s in rows}
                 for b, rows in grid.items()}
    result = {"samples": scorer.samples, "weights": str(weights), "by_budget": by_budget,
              "settings": {s["name"]: s for rows in grid.values() for s in rows}}
    runs.write_json(path, result)
    return result


def finetune_and_score(variant: str, seed: int, run_dir: Path, init: Path, steps: int, points: int, lr: float,
                       scorer_args: dict, grid: dict) -> dict:
    """A study fine-tune (`runs.finetune`: equal compute, FD@20 along the way) and then its final EMA on the
    frontier `grid` (`frontier.json` beside its scores)."""
    runs.finetune(variant, seed, run_dir, init, steps, points, lr, scorer_args)
    return score(run_dir / "run" / "ema.safetensors", scorer_args, grid, run_dir / "frontier.json")


# ---------------------------------------------------------------------------------------------
# Choices from the selection seeds' frontiers
# ---------------------------------------------------------------------------------------------

def best_sampler(frontiers: dict, recipe: str, seeds, budget: str) -> dict:
    """The recipe's sampler setting at `budget` with the lowest mean log FD over `seeds`.
    frontiers: (recipe, seed) -> a `score` result."""
    names = list(frontiers[(recipe, seeds[0])]["by_budget"][budget])
    mean = {n: float(np.mean([math.log(frontiers[(recipe, s)]["by_budget"][budget][n]) for s in seeds])) for n in names}
    best = min(names, key=lambda n: mean[n])
    return {"sampler": best, "mean_log_fd": mean[best], "all": mean}


def log_ratios(frontiers: dict, recipe: str, sampler: str, base: str, base_sampler: str, seeds, budget: str) -> list:
    """Per seed log(FD_recipe(sampler) / FD_base(base_sampler)) at `budget`."""
    return [math.log(frontiers[(recipe, s)]["by_budget"][budget][sampler]
                     / frontiers[(base, s)]["by_budget"][budget][base_sampler]) for s in seeds]


def choose(frontiers: dict, recipes, baseline: str, seeds, budgets) -> dict:
    """Per budget: every recipe's best sampler, each recipe's paired change against the baseline (each side
    with its best sampler), the challenger (the other recipe with the lowest mean log ratio, below 0 or
    not) and the winner: the challenger when its mean log ratio is below 0, else the baseline itself."""
    missing = [f"{r} s{s}" for r in recipes for s in seeds if (r, s) not in frontiers]
    if missing:
        raise RuntimeError(f"the frontier choice needs every selection score; missing: {', '.join(missing)}")
    out = {}
    for b in map(str, budgets):
        best = {r: best_sampler(frontiers, r, list(seeds), b) for r in recipes}
        rows = []
        for r in recipes:
            if r == baseline:
                continue
            lr = log_ratios(frontiers, r, best[r]["sampler"], baseline, best[baseline]["sampler"], seeds, b)
            m, lo, hi = stats.t_interval(lr)
            rows.append({"recipe": r, "sampler": best[r]["sampler"], "mean_log_ratio": m, "ci95": [lo, hi],
                         "per_seed": lr})
        top = min(rows, key=lambda row: row["mean_log_ratio"]) if rows else None
        winner = top["recipe"] if top is not None and top["mean_log_ratio"] < 0 else baseline
        out[b] = {"winner": winner, "challenger": top["recipe"] if top is not None else None,
                  "samplers": {r: best[r]["sampler"] for r in recipes},
                  "mean_log_fd": {r: best[r]["mean_log_fd"] for r in recipes}, "rows": rows}
    return out


def challenger(budget: dict) -> str | None:
    """The challenger of one budget of a frozen selection (a `choose` entry): the recipe other than the
    baseline with the lowest mean log FD ratio (recorded, or found from the rows in a selection written
    before challengers were recorded); None when the study has no recipe besides the baseline."""
    if budget.get("challenger"):
        return budget["challenger"]
    return min(budget["rows"], key=lambda r: r["mean_log_ratio"])["recipe"] if budget["rows"] else None


def confirm_set(selection: dict) -> list:
    """The recipes a frozen selection (`select`'s file: baseline, budgets -> a `choose` result) confirms:
    the baseline, then each budget's challenger (its winner, or, where the baseline won, the recipe that
    came closest), so that every budget's answer is measured on the confirmation seeds, a loss included."""
    budgets = selection["budgets"].values()
    closest = [r for r in map(challenger, budgets) if r is not None]
    return list(dict.fromkeys([selection["baseline"], *(c["winner"] for c in budgets), *closest]))


def confirm_grid(chosen: dict, recipe: str, grid: dict) -> dict:
    """The one frozen sampler setting per budget of `recipe` (a `choose` result), as a scoring grid."""
    by_name = {s["name"]: s for rows in grid.values() for s in rows}
    return {b: [by_name[c["samplers"][recipe]]] for b, c in chosen.items()}
