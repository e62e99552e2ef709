"""A study's compute measure: the seconds per training step of every variant, measured once, side by side,
and turned into the step counts that give every fine-tune the same budget (`calibrate`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rfengine.study import runs
from rfengine.study.pool import Pool


def calibrate(args, out: Path, pool: Pool) -> dict:
    """The study's calibration.json in folder `out`, measured on the first call and read back after it.

    `args` carries the study's settings: `variants` (run names, `runs.overrides`; must include `fm`), `lr`,
    `ft_fm_steps` (the fine-tune budget: the seconds of this many FM steps), `points` (every step count is
    a multiple of it) and `quick` (one repeat of 3 timed steps instead of 3 repeats of 40). Each variant's
    step is timed through the trainer (`runs.calibrate`) in `pool`'s workers, the median of the repeats
    taken. Returns {"cpu_seconds_per_step": {variant: s}, "cost_vs_fm": {variant: ratio},
    "finetune_budget_cpu_seconds": s, "finetune_steps": {variant: steps}, "machine": `runs.cpu_info()`,
    "per_repeat": {...}}. A folder calibrated on another device is refused (CPU seconds and GPU
    wall-clock seconds do not compare)."""
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
