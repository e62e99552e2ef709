"""The digits study: ReflexFlow against its baselines on the embedded data, at equal steps and at
equal wall-clock (SPEC section 6, issue "evaluation and evidence").

    python -m rfengine.study.v1                      # the full study (about 50 minutes on 2 cores)
    python -m rfengine.study.v1 --quick              # a 2-minute smoke run of the same pipeline

For every seed and method it trains an unconditional DiT-T/2 on the 16x16 digits, samples the EMA
model with the Euler sampler at each of --sample-steps, and scores FD (and k-NN precision/recall) in
the feature space of a small digit classifier against all 1797 real images, plus the exposure-bias
curve of SPEC section 2. `fm` trains longer than the others (--fm-steps-factor) so that its
checkpoint at the wall-clock of a `reflexflow` run can be scored too. Each run's scores are written
as soon as they exist (results/digits/runs/<method>_s<seed>/scores.json), so an interrupted study
continues where it stopped. The end product: results/digits/summary.json, docs/results.md and the
plots next to it.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from rfengine import checkpoint, config as config_lib
from rfengine.data.digits import DigitsDataset
from rfengine.eval import DigitsFeatures, feature_stats, frechet_distance, precision_recall
from rfengine.eval.diagnostics import exposure_bias
from rfengine.sample import generate, load_model, save_grid

log = logging.getLogger("rfengine")

METHODS = {
    "fm": ["objective.name=fm"],
    "ip": ["objective.name=ip"],
    "ss": ["objective.name=ss"],
    "reflexflow": ["objective.name=reflexflow"],
    "adr_only": ["objective.name=reflexflow", "objective.fc.alpha=0"],
    "fc_only": ["objective.name=reflexflow", "objective.adr.weight=0"],
    # ablations of ReflexFlow's switches (python -m rfengine.study.v1 --ablation)
    "rf_adr_w0.3": ["objective.name=reflexflow", "objective.adr.weight=0.3"],
    "rf_direction": ["objective.name=reflexflow", "objective.adr.loss=direction"],
    "rf_prob0.5": ["objective.name=reflexflow", "objective.adr.prob=0.5"],
}
MAIN = ["fm", "ip", "ss", "reflexflow", "adr_only", "fc_only"]
ABLATION = ["fm", "reflexflow", "rf_adr_w0.3", "rf_direction", "rf_prob0.5"]
BASE = ["model.arch=DiT-T/2", "model.class_conditional=false", "data.name=digits", "optim.lr=1e-3",
        "optim.warmup_steps=50", "optim.ema_decay=0.99", "train.log_every=25", "train.progress=false",
        "train.sample_every=1000000", "train.keep_ckpts=100"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="ReflexFlow vs baselines on the embedded digits.")
    p.add_argument("--out", default="results/digits")
    p.add_argument("--docs", default="docs/results.md")
    p.add_argument("--methods", nargs="+", default=MAIN, choices=list(METHODS))
    p.add_argument("--ablation", action="store_true",
                   help="the ablation grid instead: fm and reflexflow reused from --reuse (default "
                        "results/digits), variants of ReflexFlow's switches trained, seeds 0 1; "
                        "writes results/digits_ablation and docs/ablation.md")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=500, help="training steps of every method")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--fm-steps-factor", type=float, default=2.5,
                   help="fm trains this many times longer, for the equal wall-clock comparison")
    p.add_argument("--samples", type=int, default=500, help="generated images per FD")
    p.add_argument("--sample-steps", nargs="+", type=int, default=[5, 10, 20, 50])
    p.add_argument("--bias-steps", type=int, default=20, help="Euler steps of the exposure-bias curve")
    p.add_argument("--reuse", help="another study's output folder: runs found there (same method and seed) "
                   "are reused instead of retrained, e.g. the fm baseline for an ablation")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline in ~2 minutes")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run (e.g. an ablation: objective.fc.cutoff=0.5)")
    a = p.parse_args(argv)
    if a.ablation:
        a.methods = ABLATION
        a.reuse = a.reuse or "results/digits"
        a.seeds = a.seeds if a.seeds != [0, 1, 2] else [0, 1]
        a.out = a.out if a.out != "results/digits" else "results/digits_ablation"
        a.docs = a.docs if a.docs != "docs/results.md" else "docs/ablation.md"
    if a.quick:
        a.steps, a.seeds, a.samples, a.sample_steps, a.bias_steps = 6, [0], 64, [2, 4], 4
    return a


# ---------------------------------------------------------------------------------------------
# One run: train, then score
# ---------------------------------------------------------------------------------------------

def train_run(args, method: str, seed: int, steps: int, ckpt_every: int) -> None:
    from rfengine.trainer import Trainer
    out = Path(args.out) / "runs" / f"{method}_s{seed}"
    overrides = [*BASE, *METHODS[method], *args.overrides, f"train.seed={seed}", f"train.steps={steps}",
                 f"train.batch_size={args.batch}", f"train.ckpt_every={ckpt_every}", f"train.out_dir={out}"]
    cfg = config_lib.load(None, overrides)
    Trainer(cfg, resume="auto").run()


def score(model, args, feats: DigitsFeatures, real_feats: np.ndarray, real_x: torch.Tensor) -> dict:
    out = {}
    mu_r, sig_r = feature_stats(real_feats)
    for k in args.sample_steps:
        x = generate(model, shape=(1, 16, 16), n=args.samples, labels=None, steps=k, seed=12345).clamp(-1, 1)
        f = feats(x)
        prec, rec = precision_recall(real_feats, f)
        out[str(k)] = {"fd": frechet_distance(*feature_stats(f), mu_r, sig_r), "precision": prec, "recall": rec}
    g = torch.Generator().manual_seed(777)
    idx = torch.randperm(real_x.shape[0], generator=g)[:256]
    x0 = torch.randn((256, 1, 16, 16), generator=g)
    bias = exposure_bias(model, x0, real_x[idx], None, args.bias_steps)
    return {"by_steps": out, "bias": bias}


def timing(run_dir: Path) -> float:
    """Median seconds per training step, from the logged images/s (after the first log row)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ips = [r["images_per_s"] for r in rows[1:] if r.get("images_per_s")] or [rows[0]["images_per_s"]]
    return float(np.median([1.0 / v for v in ips]))  # seconds per image; times batch below


def _run_and_score(args, method, seed, feats, real_feats, real_x) -> list[dict]:
    run_dir = Path(args.out) / "runs" / f"{method}_s{seed}"
    cached = run_dir / "scores.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if args.reuse and (Path(args.reuse) / "runs" / f"{method}_s{seed}" / "scores.json").is_file():
        log.info("reusing %s seed %d from %s", method, seed, args.reuse)
        return json.loads((Path(args.reuse) / "runs" / f"{method}_s{seed}" / "scores.json").read_text())
    steps, ckpt_every = args.steps, args.steps
    if method == "fm":  # longer, with checkpoints every quarter of the common length
        ckpt_every = max(1, args.steps // 4)
        steps = int(math.ceil(args.steps * args.fm_steps_factor / ckpt_every)) * ckpt_every
    t0 = time.perf_counter()
    train_run(args, method, seed, steps, ckpt_every)
    sec_per_step = timing(run_dir) * args.batch
    model, _, _ = load_model(checkpoint.checkpoint_path(run_dir / "checkpoints", args.steps), "ema")
    rows = _rows(method, seed, args.steps, sec_per_step, score(model, args, feats, real_feats, real_x))
    x = generate(model, shape=(1, 16, 16), n=100, labels=None, steps=20, seed=1).clamp(-1, 1)
    save_grid(x, Path(args.out) / "grids" / f"{method}_s{seed}.png", nrow=10)
    cached.write_text(json.dumps(rows))
    log.info("%s seed %d: %.0f s with scoring (%.3f s/step)", method, seed, time.perf_counter() - t0, sec_per_step)
    return rows


def _rows(method, seed, step, sec_per_step, s) -> list[dict]:
    rows = []
    for i, (k, v) in enumerate(s["by_steps"].items()):
        rows.append({"method": method, "seed": seed, "train_steps": step, "sample_steps": int(k), **v,
                     "sec_per_step": sec_per_step, "train_seconds": sec_per_step * step,
                     "bias_paired_mean": float(np.mean(s["bias"]["paired_error"])),
                     "bias_energy_gap_end": s["bias"]["energy_gap"][-1],
                     "bias": s["bias"] if i == 0 else None})
    return rows


def _fm_equal_wallclock(args, seed, rows, feats, real_feats, real_x) -> list[dict]:
    """Score the fm checkpoint whose training time is closest to the reflexflow run's."""
    run_dir = Path(args.out) / "runs" / f"fm_s{seed}"
    if not run_dir.is_dir():  # fm reused from another study: its wall-clock row belongs to that study
        return []
    cached = run_dir / "scores_wallclock.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    rf = [r for r in rows if r["method"] == "reflexflow" and r["seed"] == seed]
    fm = [r for r in rows if r["method"] == "fm" and r["seed"] == seed]
    if not rf or not fm:
        return []
    budget = rf[0]["train_seconds"]
    ckpts = checkpoint.list_checkpoints(run_dir / "checkpoints")
    step, path = min(ckpts, key=lambda c: abs(c[0] * fm[0]["sec_per_step"] - budget))
    model, _, _ = load_model(path, "ema")
    out = _rows("fm_equal_wallclock", seed, step, fm[0]["sec_per_step"], score(model, args, feats, real_feats, real_x))
    cached.write_text(json.dumps(out))
    return out


def run_study(args) -> dict:
    from tqdm import tqdm
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    feats = DigitsFeatures()
    ds = DigitsDataset(16)
    real_x = ds.images
    real_feats = feats(real_x)
    rows = []
    with tqdm(total=len(args.seeds) * len(args.methods), desc="study", dynamic_ncols=True) as bar:
        for seed in args.seeds:
            for method in args.methods:
                bar.set_postfix(run=f"{method} s{seed}")
                rows.extend(_run_and_score(args, method, seed, feats, real_feats, real_x))
                bar.update(1)
            rows.extend(_fm_equal_wallclock(args, seed, rows, feats, real_feats, real_x))
    summary = {"config": {k: v for k, v in vars(args).items()}, "feature_accuracy": feats.accuracy,
               "real_vs_real_fd": real_vs_real(real_feats), "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def real_vs_real(real_feats: np.ndarray) -> float:
    """FD between two random halves of the real set: the floor that seed noise sits on."""
    perm = np.random.default_rng(0).permutation(len(real_feats))
    a, b = real_feats[perm[: len(perm) // 2]], real_feats[perm[len(perm) // 2:]]
    return frechet_distance(*feature_stats(a), *feature_stats(b))


def main(argv=None) -> int:
    from rfengine.study.v1_report import write_report
    from rfengine.telemetry import setup_logging
    args = parse_args(argv)
    setup_logging(True, None)
    summary = run_study(args)
    write_report(summary, Path(args.out), Path(args.docs))
    print(f"wrote {Path(args.out) / 'summary.json'} and {args.docs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
