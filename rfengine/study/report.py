"""The equal-compute study's report: markdown tables (report.md) and the FD-versus-seconds plot."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from rfengine.study import stats

LABELS = {"fm": "FM (continued)", "rf": "ReflexFlow (spec defaults)", "fc_only": "FC only (velocity bias)",
          "fc_input": "FC only (input bias)", "direction": "ReflexFlow, adr.loss direction",
          "prob0.25": "ReflexFlow, adr.prob 0.25", "fm_loss2": "FM, loss doubled (control)",
          "fm_ln": "FM, logit-normal t", "fm_snr": "FM, Min-SNR-5", "fm_cos": "FM + cosine loss",
          "fc_self": "FC, own error (self)"}


def _pct(x: float) -> str:
    return f"{100 * (math.exp(x) - 1):+.1f}%" if math.isfinite(x) else "n/a"


def _seconds(x) -> str:
    return "n/a (resumed)" if x is None else f"{x:.0f}"


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


def _regime_section(block: dict, steps, title: str) -> list[str]:
    """A regime measured against each seed's FM run (`fm_run_summary`): its ratio table and verdicts."""
    if not block.get("variants"):
        return []
    out = ["", f"## {title}", ""]
    out += _ratio_table([r for b in block["variants"].values() for r in b["rows"]], steps)
    return out + [""] + [f"- {LABELS.get(v, v)}, seeds {b['seeds']}: at {stats.SELECT_AT} Euler steps {b['verdict']}."
                         for v, b in block["variants"].items()]


def tables(summary: dict) -> str:
    p, cal, sel = summary["protocol"], summary["calibration"], summary["selection"]
    steps = p["sample_steps"]
    out = ["# Equal-compute study (digits, fine-tuning regime)", "",
           "Made by `python -m rfengine.study`; numbers in summary.json. FD ratio to FM on the same seed "
           "(same pretrained model, data order and sampling noise), mean over seeds of log(FD/FD_fm) shown as a "
           "percentage change, with its 95% t-interval in brackets.", "", "## Cost (calibrated, CPU seconds per "
           f"training step, one thread; {cal['machine']['cpu']})", "",
           "| variant | s/step | vs FM | fine-tune steps |", "|---|---|---|---|"]
    for v, c in cal["cpu_seconds_per_step"].items():
        out.append(f"| {LABELS.get(v, v)} | {c:.4f} | {cal['cost_vs_fm'][v]:.2f}x | {cal['finetune_steps'][v]} |")
    out += ["", f"Fine-tune budget: {cal['finetune_budget_cpu_seconds']:.0f} CPU seconds per run "
            f"({p['ft_fm_steps']} FM steps).", "", "## Pretraining (FM until FD@20 stops improving)", "",
            "| seed | stopped at | FD@20 along the way | why |", "|---|---|---|---|"]
    for s, pre in summary["pretrain"].items():
        hist = ", ".join(f"{h['fd20']:.1f}" for h in pre["history"])
        out.append(f"| {s} | {pre['stopped_at']} | {hist} | {pre['reason']} |")
    out += ["", f"## Selection seeds {sel['seeds']}: FD change vs FM at equal CPU seconds", ""]
    out += _ratio_table(sel["rows"], steps)
    out += ["", f"Chosen: **{LABELS.get(sel['variant'], sel['variant'])}** ({sel['rule']})."]
    if summary["confirmation"]:
        h = summary["headline"]
        out += ["", f"## Confirmation seeds {h['confirm_seeds']} (not seen by the choice)", ""]
        out += _ratio_table(summary["confirmation"], steps)
        state = "complete" if h["complete"] else "incomplete: not all confirmation seeds have finished"
        out += ["", f"**Headline** ({state}): {LABELS.get(h['variant'], h['variant'])} at "
                f"{h['sample_steps']} Euler steps {h['verdict']}."]
    sch = summary.get("scheduled") or {}
    out += _regime_section(sch, steps, f"Regime (b), scheduled: the FM run switched to the variant "
                           f"{sch.get('tail_fm_steps')} FM steps before its end (the same CPU seconds), against the "
                           "FM run to its end")
    out += _regime_section(summary.get("scratch") or {}, steps, "Regime (a), from scratch: the variant trained for "
                           "the CPU seconds of the whole FM run, against that FM run")
    for c, b in (summary.get("controls") or {}).items():
        out += ["", f"## Control: {LABELS.get(c, c)} (`{' '.join(b['variants'])}`), confirmation seeds {b['seeds']}",
                "", "The control against FM:", ""] + _ratio_table(b["control_vs_fm"], steps)
        out += ["", "The chosen variant against the control (the control is the baseline here):", ""]
        out += _ratio_table(b["chosen_vs_control"], steps) + ["", f"- At {stats.SELECT_AT} Euler steps the chosen "
                                                                   f"variant {b['verdict']}."]
    out += ["", "## Per run, fine-tuning regime (20 Euler steps)", "",
            "| variant | seed | steps | FD | vs FM | precision | recall | CPU s (calibrated) | CPU s (measured) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        if r["sample_steps"] == stats.SELECT_AT and r.get("regime", "finetune") == "finetune":
            rel = "-" if r["log_ratio_to_fm"] is None or r["variant"] == "fm" else _pct(r["log_ratio_to_fm"])
            out.append(f"| {LABELS.get(r['variant'], r['variant'])} | {r['seed']} | {r['steps']} | {r['fd']:.2f} | "
                       f"{rel} | {r['precision']:.3f} | {r['recall']:.3f} | {r['cpu_seconds']:.0f} | "
                       f"{_seconds(r['cpu_seconds_measured'])} |")
    out += ["", "Exposure bias of the fine-tuned models (mean over seeds; paired error `||xhat - x||^2/d` along "
            "20-step trajectories, energy gap at the last step):", "", "| variant | paired error | energy gap |",
            "|---|---|---|"]
    by = defaultdict(list)
    for key, e in summary["energy"].items():
        by[key.rsplit("_s", 1)[0]].append(e)
    for v, es in by.items():
        out.append(f"| {LABELS.get(v, v)} | {np.mean([e['paired_error_mean'] for e in es]):.4f} | "
                   f"{np.mean([e['energy_gap_end'] for e in es]):+.4f} |")
    return "\n".join(out) + "\n"


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


def write_report(summary: dict, out: Path) -> None:
    (out / "report.md").write_text(tables(summary))
    if summary["curves"]:
        sel, h = summary["selection"], summary.get("headline")
        panels = [(f"selection seeds {sel['seeds']}: every variant", sel["seeds"])]
        if h:
            panels.append((f"confirmation seeds {h['confirm_seeds']} (not seen by the choice)", h["confirm_seeds"]))
        plot(summary, out / "fd_vs_seconds.png", panels=panels)
