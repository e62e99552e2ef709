"""The study's report: mean ± std tables (markdown) and plots (PNG) from a summary.json."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

ORDER = ["fm", "fm_equal_wallclock", "ip", "ss", "reflexflow", "adr_only", "fc_only", "rf_adr_w0.3", "rf_direction",
         "rf_prob0.5"]
LABELS = {"fm": "FM (SiT)", "fm_equal_wallclock": "FM, equal wall-clock", "ip": "input perturbation",
          "ss": "scheduled sampling (K=1)", "reflexflow": "ReflexFlow", "adr_only": "ReflexFlow, ADR only",
          "fc_only": "ReflexFlow, FC only", "rf_adr_w0.3": "ReflexFlow, adr.weight 0.3",
          "rf_direction": "ReflexFlow, adr.loss direction", "rf_prob0.5": "ReflexFlow, adr.prob 0.5"}


def _ms(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def tables(summary: dict) -> str:
    rows = summary["rows"]
    methods = [m for m in ORDER if any(r["method"] == m for r in rows)]
    steps = sorted({r["sample_steps"] for r in rows})
    by = defaultdict(list)
    for r in rows:
        by[(r["method"], r["sample_steps"])].append(r)
    fm_mean = {k: np.mean([r["fd"] for r in by[("fm", k)]]) for k in steps if by[("fm", k)]}
    lines = ["| method | " + " | ".join(f"FD @{k}" for k in steps) + " | " +
             " | ".join(f"vs FM @{k}" for k in steps) + " |",
             "|---|" + "---|" * (2 * len(steps))]
    for m in methods:
        fds = [_ms([r["fd"] for r in by[(m, k)]]) for k in steps]
        rel = []
        for k in steps:
            if m == "fm" or k not in fm_mean:
                rel.append("-")
            else:
                rel.append(f"{100 * (np.mean([r['fd'] for r in by[(m, k)]]) / fm_mean[k] - 1):+.0f}%")
        lines.append(f"| {LABELS[m]} | " + " | ".join(fds) + " | " + " | ".join(rel) + " |")
    k0 = steps[len(steps) // 2]
    lines += ["", f"Precision / recall (k = 3) at {k0} steps, exposure bias along {summary['config']['bias_steps']}-step "
              "Euler trajectories (mean paired error `||xhat - x||^2/d`, energy gap at the last step), "
              "training cost:", "",
              "| method | train steps | precision | recall | paired error | energy gap | s/step | cost vs FM |",
              "|---|---|---|---|---|---|---|---|"]
    fm_cost = np.mean([r["sec_per_step"] for r in by[("fm", k0)]]) if by[("fm", k0)] else None
    for m in methods:
        rs = by[(m, k0)]
        cost = np.mean([r["sec_per_step"] for r in rs])
        lines.append(f"| {LABELS[m]} | {rs[0]['train_steps']} | {np.mean([r['precision'] for r in rs]):.3f} | "
                     f"{np.mean([r['recall'] for r in rs]):.3f} | {np.mean([r['bias_paired_mean'] for r in rs]):.4f} | "
                     f"{np.mean([r['bias_energy_gap_end'] for r in rs]):+.4f} | {cost:.3f} | "
                     f"{cost / fm_cost:.2f}x |" if fm_cost else "")
    return "\n".join(lines) + "\n"


def plots(summary: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    methods = [m for m in ORDER if any(r["method"] == m for r in rows)]
    steps = sorted({r["sample_steps"] for r in rows})
    made = []

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        means = [np.mean([r["fd"] for r in rows if r["method"] == m and r["sample_steps"] == k]) for k in steps]
        stds = [np.std([r["fd"] for r in rows if r["method"] == m and r["sample_steps"] == k]) for k in steps]
        ax.errorbar(steps, means, yerr=stds, marker="o", capsize=3, label=LABELS[m])
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(steps, [str(k) for k in steps])
    ax.set_xlabel("Euler sampling steps")
    ax.set_ylabel("FD (digit-classifier features)")
    ax.set_title(f"FD vs sampling steps (mean ± std over {len(summary['config']['seeds'])} seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    made.append(out / "fd_vs_steps.png")
    fig.savefig(made[-1], dpi=120)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for m in methods:
        curves = [r["bias"] for r in rows if r["method"] == m and r.get("bias")]
        if not curves:
            continue
        t = curves[0]["t"]
        a1.plot(t, np.mean([c["paired_error"] for c in curves], 0), label=LABELS[m])
        a2.plot(t, np.mean([c["energy_gap"] for c in curves], 0), label=LABELS[m])
    a1.set_title("paired error ||xhat_t - x_t||^2 / d")
    a2.set_title("energy gap (E||xhat_t||^2 - E||x_t||^2) / d")
    for a in (a1, a2):
        a.set_xlabel("t")
    a2.axhline(0, color="k", lw=0.5)
    a1.legend(fontsize=7)
    fig.tight_layout()
    made.append(out / "exposure_bias.png")
    fig.savefig(made[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in [m for m in ("fm", "reflexflow") if m in methods]:
        curves = [r["bias"] for r in rows if r["method"] == m and r.get("bias")]
        for key in curves[0]["spectra"]:
            ax.semilogy(np.mean([c["spectra"][key] for c in curves], 0), label=f"{LABELS[m]}, t = {key}")
    ax.set_xlabel("radial frequency (index)")
    ax.set_ylabel("power of the bias")
    ax.set_title("Radially averaged power spectrum of xhat_t - x_t")
    ax.legend(fontsize=7)
    fig.tight_layout()
    made.append(out / "bias_spectrum.png")
    fig.savefig(made[-1], dpi=120)
    plt.close(fig)
    return made


def write_report(summary: dict, out: Path, docs: Path) -> None:
    made = plots(summary, out)
    cfg = summary["config"]
    rel = lambda p: os.path.relpath(p, docs.parent)  # noqa: E731
    text = [
        "# ReflexFlow on the embedded digits: results",
        "",
        "Made by `python -m rfengine.study.v1" + (" --ablation" if cfg.get("ablation") else "") +
        (" --quick` (a smoke run, not evidence)" if cfg.get("quick") else "`") + f": unconditional DiT-T/2 on the 16x16 "
        f"scikit-learn digits, batch {cfg['batch']}, {cfg['steps']} training steps for every method "
        f"(FM also to {cfg['fm_steps_factor']}x for the equal wall-clock row), seeds {cfg['seeds']}, "
        f"{cfg['samples']} Euler samples per score from the EMA weights. FD is measured in the 64-d feature "
        f"space of a small digit classifier (held-out accuracy {summary['feature_accuracy']:.3f}) against all "
        f"1797 real images; FD between two random halves of the real set is {summary['real_vs_real_fd']:.1f}.",
        "",
        tables(summary),
        *[f"![{p.stem}]({rel(p)})" for p in made],
        "",
        "Samples (seed 0, 20 Euler steps), one grid per method, in "
        f"`{rel(out / 'grids')}/`; raw numbers in `{rel(out / 'summary.json')}`.",
        "",
    ]
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text("\n".join(text))


if __name__ == "__main__":
    import sys
    s = json.loads(Path(sys.argv[1]).read_text())
    write_report(s, Path(sys.argv[1]).parent, Path(sys.argv[2] if len(sys.argv) > 2 else "docs/results.md"))
