"""Does a study's gain hold under other samplers? Scores the confirmation seeds' final models
of two variants (a recipe and its baseline) under Euler, Heun, adaptive dopri5 and SiT's SDE sampler,
and reports the paired FD change per sampler with its 95% interval:

    python -m rfengine.study.samplers --study results/digits_v3 --seeds 10 11 12 13 14 --variants fm_ln fc_input@fm_ln

A model the study's run folder no longer holds (run folders are not committed) is fine-tuned again from
the seed's committed pretrained model with the study's own settings (`runs.train`, deterministic). Every
model sees the same initial noise; the SDE's noise is one seeded stream per batch, the same for every
model. Resumable: each (variant, seed) writes its scores when done. Output: <out>/samplers.json and
samplers.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from rfengine.study import runs, stats
from rfengine.study.scoring import SHAPE, Scorer

# name -> integrate() options; the number in a fixed-grid name is its step count
SAMPLERS = {"euler20": dict(method="euler", steps=20), "euler50": dict(method="euler", steps=50),
            "heun20": dict(method="heun", steps=20), "dopri5": dict(method="dopri5"),
            "sde50": dict(method="sde", steps=50), "sde250": dict(method="sde", steps=250)}


def model_path(study: Path, out: Path, variant: str, seed: int) -> Path:
    """The final EMA of the study's fine-tune of `variant` on `seed`, trained again under `out` when the
    study's run folder is gone."""
    own = study / "finetune" / f"{variant}_s{seed}" / "run" / "ema.safetensors"
    if own.is_file():
        return own
    again = out / "models" / f"{variant}_s{seed}"
    if not (again / "ema.safetensors").is_file():
        protocol = json.loads((study / "protocol.json").read_text())
        steps = json.loads((study / "calibration.json").read_text())["finetune_steps"][variant]
        init = study / "pretrain" / f"s{seed}" / "pretrained.safetensors"
        runs.train(variant, seed, again, steps, steps // protocol["points"],
                   [f"optim.lr={protocol['lr']}", f"train.init_from={init}", "train.init_weights=ema"])
    return again / "ema.safetensors"


def score(path: Path, samples: int, names, classifier: Path | None = None) -> dict:
    """FD (and function evaluations per sample batch) of the model at `path` under each sampler."""
    from rfengine.eval import feature_stats, frechet_distance
    from rfengine.sample import generate
    from rfengine.weights import load_model
    scorer = Scorer(samples=samples, sample_steps=[], classifier=str(classifier) if classifier else None)
    model, _, _, _ = load_model(path, "ema")
    out = {}
    for name in names:
        opts, parts, nfe = SAMPLERS[name], [], []
        with torch.inference_mode():
            for i in range(0, samples, scorer.batch):
                noise = scorer.noise[i:i + scorer.batch][: samples - i]
                st = {}
                x = generate(model, shape=SHAPE, n=len(noise), labels=None, noise=noise, stats=st,
                             generator=torch.Generator().manual_seed(777 + i), **opts)
                parts.append(x.clamp(-1, 1))
                nfe.append(st.get("nfe", opts.get("steps")))
        f = scorer.feats(torch.cat(parts))
        out[name] = {"fd": frechet_distance(*feature_stats(f), *scorer.real_stats), "nfe_per_batch": nfe}
    return out


def run(args) -> dict:
    study, out = Path(args.study), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    from tqdm import tqdm
    for v in args.variants:
        for s in tqdm(args.seeds, desc=v):
            path = out / "scores" / f"{v}_s{s}.json"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                pinned = study / "digits_classifier.pt"  # the study's own feature extractor, where it pinned one
                runs.write_json(path, score(model_path(study, out, v, s), args.samples, args.samplers,
                                            pinned if pinned.is_file() else None))
            results[(v, s)] = json.loads(path.read_text())
    base, variant = args.variants
    rows = []
    for name in args.samplers:
        r = [math.log(results[(variant, s)][name]["fd"] / results[(base, s)][name]["fd"]) for s in args.seeds]
        m, lo, hi = stats.t_interval(r)
        rows.append({"sampler": name, "mean_log_ratio": m, "ci95": [lo, hi], "per_seed": r,
                     "fd_base": float(np.mean([results[(base, s)][name]["fd"] for s in args.seeds])),
                     "fd_variant": float(np.mean([results[(variant, s)][name]["fd"] for s in args.seeds])),
                     "nfe_mean": float(np.mean([np.mean(results[(v, s)][name]["nfe_per_batch"])
                                                for v in args.variants for s in args.seeds]))})
    summary = {"study": str(study), "baseline": base, "variant": variant, "seeds": args.seeds,
               "samples": args.samples, "samplers": {n: SAMPLERS[n] for n in args.samplers}, "rows": rows,
               "scores": {f"{v}_s{s}": r for (v, s), r in results.items()}}
    runs.write_json(out / "samplers.json", summary)
    (out / "samplers.md").write_text(table(summary))
    return summary


def table(summary: dict) -> str:
    pct = lambda x: f"{100 * (math.exp(x) - 1):+.1f}%" if math.isfinite(x) else "n/a"  # noqa: E731
    lines = [f"| sampler | model calls | FD {summary['baseline']} | FD {summary['variant']} | change [95% CI] | per seed |",
             "|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        per = ", ".join(pct(x) for x in r["per_seed"])
        lines.append(f"| {r['sampler']} | {r['nfe_mean']:.0f} | {r['fd_base']:.2f} | {r['fd_variant']:.2f} | "
                     f"{pct(r['mean_log_ratio'])} [{pct(r['ci95'][0])}, {pct(r['ci95'][1])}] | {per} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="A study's gain under other samplers (Euler, Heun, dopri5, SDE).")
    p.add_argument("--study", default="results/digits_v3", help="the study folder (relative to the working directory)")
    p.add_argument("--seeds", nargs="+", type=int, default=[10, 11, 12, 13, 14])
    p.add_argument("--variants", nargs=2, default=["fm_ln", "fc_input@fm_ln"], metavar=("BASELINE", "VARIANT"))
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--out", help="default: <study>/samplers")
    a = p.parse_args(argv)
    a.out = a.out or str(Path(a.study) / "samplers")
    runs.init_worker(1)
    s = run(a)
    print(table(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
