"""What the studies' reports share: run labels, the paired-ratio table and the FD-versus-seconds plot."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

LABELS = {"fm": "FM (continued)", "rf": "ReflexFlow (defaults)", "fc_only": "FC only (velocity bias)",
          "fc_input": "FC only (input bias)", "direction": "ReflexFlow, adr.loss direction",
          "prob0.25": "ReflexFlow, adr.prob 0.25",
          "fm_ln": "FM, logit-normal t", "fm_snr": "FM, Min-SNR-5", "fm_cos": "FM + cosine loss",
          "fc_self": "FC, own error (self)"}


def _pct(x: float) -> str:
    return f"{100 * (math.exp(x) - 1):+.1f}%" if math.isfinite(x) else "n/a"



def _ratio_table(rows: list[dict], steps) -> list[str]:
    lines = ["| variant | " + " | ".join(f"@{k}" for k in steps) + " |", "|---|" + "---|" * len(steps)]
    by = {(r["variant"], r["sample_steps"]): r for r in rows}
    for v in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for k in steps:
            r = by[(v, k)]
            cells.append(f"{_pct(r['mean_log_ratio'])} [{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}]")
        lines.append(f"| {LABELS.get(v, v)} | " + " | ".join(cells) + " |")
    return lines




def _panel(ax, summary: dict, seeds=None, label=None, colors=None) -> None:
    """FD@20 against calibrated CPU seconds of fine-tuning, per variant (geometric mean over `seeds`,
    thin lines per seed, in the variant's colour), starting from the pretrained model's FD at 0 s."""
    label = label or (lambda v: LABELS.get(v, v))
    cal = summary["calibration"]
    curves = defaultdict(dict)
    for key, pts in summary["curves"].items():
        v, s = key.rsplit("_s", 1)
        if seeds is not None and int(s) not in seeds:
            continue
        start = summary["start_scores"].get(s)  # the pretrained model at 0 s, once it is scored
        xs = ([0.0] if start else []) + [p["step"] * cal["cpu_seconds_per_step"][v] for p in pts]
        ys = ([start["by_steps"]["20"]["fd"]] if start else []) + [p["fd20"] for p in pts]
        curves[v][s] = (xs, ys)
    for v, by_seed in sorted(curves.items()):
        color = (colors or {}).get(v)
        for xs, ys in by_seed.values():
            ax.plot(xs, ys, color=color, alpha=0.2, lw=0.8)
        n = min(len(ys) for _, ys in by_seed.values())
        xs = np.mean([xs[-n:] for xs, _ in by_seed.values()], axis=0)
        ys = np.exp(np.mean([np.log(ys[-n:]) for _, ys in by_seed.values()], axis=0))
        ax.plot(xs, ys, color=color, lw=2, marker="o", ms=3, label=f"{label(v)} ({len(by_seed)} seeds)")
    ax.set_xlabel("fine-tuning compute (CPU seconds, one thread)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot(summary: dict, path: Path, title: str = "Fine-tuning a plateaued FM model at equal compute",
         panels: list[tuple[str, list[int]]] | None = None, label=None) -> Path:
    """One panel per (title, seeds) in `panels` (every curve in one panel when None), sharing the FD axis;
    one colour per variant across panels; `label(variant)` names a curve in the legend."""
    import textwrap

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = panels or [("", None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), sharey=True, squeeze=False)
    names = sorted({key.rsplit("_s", 1)[0] for key in summary["curves"]})
    colors = {v: f"C{i % 10}" for i, v in enumerate(names)}
    for ax, (sub, seeds) in zip(axes[0], panels):
        _panel(ax, summary, seeds, label, colors)
        ax.set_title(sub, fontsize=9)
    axes[0][0].set_ylabel(f"FD @ 20 Euler steps ({summary['protocol']['samples']} samples)")
    fig.suptitle(textwrap.fill(title, 60 * len(panels)), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
