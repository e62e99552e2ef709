"""Study v4's answer per budget (the confirmation of each budget's challenger, the winner or where the
baseline won the recipe that came closest, against the baseline, each with its frozen sampler setting),
its report tables and the frontier plot (FD against model calls)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rfengine.flow import CALLS_PER_STEP
from rfengine.study import frontier, stats

pct = lambda x: f"{100 * (math.exp(x) - 1):+.1f}%" if math.isfinite(x) else "n/a"  # noqa: E731


def gmean(values) -> float:
    """The geometric mean (FDs are compared as log ratios); nan for none."""
    values = list(values)
    return float(np.exp(np.mean(np.log(values)))) if values else float("nan")


def confirmation(fr: dict, sel: dict, seeds, cost: dict) -> dict:
    """budget -> the frozen winner, challenger and samplers, and on the confirmation seeds finished so far
    the paired log FD ratio of the challenger (the winner, or where the baseline won the recipe that came
    closest) to the baseline (mean, 95% interval, per seed), the FDs and the step cost."""
    base, out = sel["baseline"], {}
    for b, c in sel["budgets"].items():
        win, samp = c["winner"], c["samplers"]
        ch = frontier.challenger(c)
        if ch is None:  # no recipe besides the baseline: nothing to confirm against it
            out[b] = {"winner": win, "winner_sampler": samp[win], "challenger": None, "baseline": base,
                      "baseline_sampler": samp[base], "confirm_seeds": [], "per_seed": None, "mean_log_ratio": None,
                      "ci95": None, "complete": False, "verdict": f"no recipe besides {base}"}
            continue
        row = {"winner": win, "winner_sampler": samp[win], "challenger": ch, "challenger_sampler": samp[ch],
               "baseline": base, "baseline_sampler": samp[base], "step_cost_vs_baseline": cost[ch] / cost[base],
               "selection": next((r for r in c["rows"] if r["recipe"] == ch), None)}
        done = [s for s in seeds if (base, s) in fr and (ch, s) in fr]
        row["fd_baseline"] = {str(s): fr[(base, s)]["by_budget"][b][samp[base]] for s in done}
        row["fd_challenger"] = {str(s): fr[(ch, s)]["by_budget"][b][samp[ch]] for s in done}
        lead = (f"{win} won on the selection seeds" if win != base
                else f"no recipe beat {base} on the selection seeds; {ch} came closest")
        if done:
            r = frontier.log_ratios(fr, ch, samp[ch], base, samp[base], done, b)
            m, lo, hi = stats.t_interval(r)
            row.update(confirm_seeds=done, per_seed=r, mean_log_ratio=m, ci95=[lo, hi], complete=done == list(seeds),
                       verdict=f"{lead}; confirmation, {ch} ({samp[ch]}) vs {base} ({samp[base]}): "
                               + stats.verdict(m, lo, hi, base=base))
        else:
            row.update(confirm_seeds=[], per_seed=None, mean_log_ratio=None, ci95=None, complete=False,
                       verdict=f"{lead}; confirmation not run yet")
        out[b] = row
    return out


def euler_check(fr: dict, sel: dict, seeds) -> dict:
    """The secondary check: budget -> confirmed recipe (other than the baseline) -> under Euler with B steps on
    the uniform grid, on the confirmation seeds scored so far, the paired log FD ratio to the baseline (mean,
    95% interval, per seed) and the FDs. fr: (recipe, seed) -> Euler scores (`v4.EULER_CHECK`)."""
    base, out = sel["baseline"], {}
    for b in sel["budgets"]:
        setting, out[b] = frontier.name("euler", int(b), 1.0), {}
        for r in frontier.confirm_set(sel):
            if r == base:
                continue
            done = [s for s in seeds if (base, s) in fr and (r, s) in fr]
            row = {"sampler": setting, "confirm_seeds": done, "complete": done == list(seeds),
                   "fd_baseline": {str(s): fr[(base, s)]["by_budget"][b][setting] for s in done},
                   "fd_recipe": {str(s): fr[(r, s)]["by_budget"][b][setting] for s in done},
                   "per_seed": None, "mean_log_ratio": None, "ci95": None, "verdict": "not scored yet"}
            if done:
                row["per_seed"] = frontier.log_ratios(fr, r, setting, base, setting, done, b)
                m, lo, hi = stats.t_interval(row["per_seed"])
                row.update(mean_log_ratio=m, ci95=[lo, hi], verdict=stats.verdict(m, lo, hi, base=base))
            out[b][r] = row
    return out


def sample_options(setting: str) -> str:
    """A frontier setting's name as `rfengine.sample` options: `ab2-4_shift2` -> `--method ab2 --steps 4 --shift 2`."""
    method, steps, shift = frontier.parse(setting)
    return f"--method {method} --steps {steps}" + (f" --shift {shift:g}" if shift != 1.0 else "")


def advice(by_budget: dict) -> dict:
    """budget -> what to train and how to sample for it, from the confirmation: the challenger where the
    confirmation seeds established it better than the baseline (all seeds in, the 95% interval below 0),
    else the baseline; with the measured change of the challenger against the baseline."""
    out = {}
    for b, r in by_budget.items():
        won = bool(r["challenger"] and r["complete"] and r["ci95"] and r["ci95"][1] < 0)
        train = r["challenger"] if won else r["baseline"]
        sampler = r["challenger_sampler"] if won else r["baseline_sampler"]
        if r["challenger"] is None:
            measured = f"no recipe besides {r['baseline']} to compare"
        elif r["mean_log_ratio"] is None:
            measured = "confirmation pending"
        else:
            measured = (f"{r['challenger']} ({r['challenger_sampler']}) vs {r['baseline']} ({r['baseline_sampler']}): "
                        f"{pct(r['mean_log_ratio'])} [{pct(r['ci95'][0])}, {pct(r['ci95'][1])}], seeds "
                        f"{r['confirm_seeds']}" + ("" if r["complete"] else " (confirmation not complete)"))
        out[b] = {"train": train, "sampler": sampler, "sample_options": sample_options(sampler), "pays": won,
                  "measured": measured}
    return out


def sampler_table(summary: dict) -> list:
    """Markdown lines: the baseline's FD with every sampler at every budget (geometric mean over the selection
    seeds it has; `uniform / shifted` grid where both were scored): how much the choice of sampler moves FD."""
    p = summary["protocol"]
    base = p["recipes"][0]
    seeds = common_seeds(summary, [base], p["select_seeds"])
    if not seeds:
        return []
    lines = [f"## The baseline ({base}) with every sampler, selection seeds {seeds}", "",
             "FD, geometric mean over the seeds; uniform grid / grid shifted by "
             f"{'/'.join(f'{x:g}' for x in p['shifts'] if x != 1.0) or '-'} (up to {p['shift_up_to']} calls).", "",
             "| model calls | " + " | ".join(p["methods"]) + " |", "|---" * (len(p["methods"]) + 1) + "|"]
    for b in map(str, p["budgets"]):
        runs_ = [summary["frontiers"][f"{base}_s{s}"][b] for s in seeds if b in summary["frontiers"][f"{base}_s{s}"]]
        if len(runs_) < len(seeds):
            continue
        cells = []
        for m in p["methods"]:
            names = sorted((n for n in runs_[0] if frontier.parse(n)[0] == m),
                           key=lambda n: frontier.parse(n)[2] != 1.0)  # the uniform grid first
            vals = [gmean(r[n] for r in runs_) for n in names]
            cells.append(" / ".join(f"{v:.1f}" for v in vals) or "-")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return lines + [""]


def tables(summary: dict) -> str:
    sel, p = summary["selection"], summary["protocol"]
    lines = ["# Study v4: the quality-per-model-call frontier", "",
             f"Recipes fine-tuned for equal CPU seconds from plateaued FM models; {p['samples']} samples per score; "
             f"budgets {p['budgets']} model calls; samplers {p['methods']}, grid shifts {p['shifts']} "
             f"(up to {p['shift_up_to']} calls).", ""]
    lines += sampler_table(summary)
    if not sel:
        return "\n".join(lines + ["Selection not finished yet.", ""])
    lines += [f"## Selection seeds {sel['seeds']}: each recipe with its best sampler, change vs {sel['baseline']}", "",
              "| budget | recipe | sampler | change [95% CI] | per seed |", "|---|---|---|---|---|"]
    for b, c in sel["budgets"].items():
        lines.append(f"| {b} | {sel['baseline']} (baseline) | {c['samplers'][sel['baseline']]} | | |")
        for r in sorted(c["rows"], key=lambda r: r["mean_log_ratio"]):
            mark = " **(winner)**" if r["recipe"] == c["winner"] else ""
            lines.append(f"| {b} | {r['recipe']}{mark} | {r['sampler']} | {pct(r['mean_log_ratio'])} "
                         f"[{pct(r['ci95'][0])}, {pct(r['ci95'][1])}] | {', '.join(pct(x) for x in r['per_seed'])} |")
    lines += same_sampler_table(summary)
    if summary.get("by_budget"):
        lines += ["", "## What to train for a sampling budget", "",
                  "The recipe the confirmation seeds support at each budget (a challenger only where its 95% interval "
                  "lies below the baseline), and the sampler setting frozen for it on the selection seeds.", "",
                  "| model calls per sample | train | sample with | measured on the confirmation seeds |",
                  "|---|---|---|---|"]
        for b, a in advice(summary["by_budget"]).items():
            lines.append(f"| {b} | {a['train']} | `{a['sample_options']}` | {a['measured']} |")
    lines += ["", f"## Confirmation seeds {p['confirm_seeds']} (pretrained after the choices were frozen)", "",
              "| budget | selection winner | challenger (sampler) | baseline (sampler) | FD baseline | FD challenger "
              "| change [95% CI] | per seed | step cost vs baseline |", "|---|---|---|---|---|---|---|---|---|"]
    for b, r in (summary.get("by_budget") or {}).items():
        if r["challenger"] is None:  # a study of the baseline alone
            lines.append(f"| {b} | {r['winner']} | none | {r['baseline']} ({r['baseline_sampler']}) | | | n/a | | |")
            continue
        fb, fw = gmean(r["fd_baseline"].values()), gmean(r["fd_challenger"].values())  # geometric, as the change is
        fd = lambda x: f"{x:.2f}" if math.isfinite(x) else ""  # noqa: E731  (no seed in yet)
        ch = (f"{pct(r['mean_log_ratio'])} [{pct(r['ci95'][0])}, {pct(r['ci95'][1])}]"
              if r["mean_log_ratio"] is not None else "n/a")
        per = ", ".join(pct(x) for x in r["per_seed"]) if r["per_seed"] else ""
        lines.append(f"| {b} | {r['winner']} | {r['challenger']} ({r['challenger_sampler']}) | {r['baseline']} "
                     f"({r['baseline_sampler']}) | "
                     f"{fd(fb)} | {fd(fw)} | {ch} | {per} | {r['step_cost_vs_baseline']:.2f}x |")
    lines += ["", "The challenger is the winner, or, where no recipe beat the baseline on the selection seeds, the "
                  "recipe that came closest: its change says by how much the baseline wins.", "",
              "Step cost: CPU seconds per training step, measured side by side at calibration "
                  "(`calibration.json`); every recipe trained for the same CPU seconds.", ""]
    return "\n".join(lines + euler_table(summary))


def euler_table(summary: dict) -> list:
    """Markdown lines: the secondary check (each confirmed recipe against the baseline under Euler with B steps
    on the confirmation seeds), once any confirmation model has its Euler scores."""
    check = summary.get("euler_check") or {}
    rows = [(b, r, x) for b, by in check.items() for r, x in by.items() if x["confirm_seeds"]]
    if not rows:
        return []
    base = summary["selection"]["baseline"]
    lines = ["## Secondary check: Euler with B steps (uniform grid) on the confirmation seeds", "",
             "Fixed before any confirmation score existed; it chooses nothing. FD: geometric mean over the seeds.", "",
             f"| model calls (Euler steps) | recipe | seeds | FD {base} | FD recipe | change [95% CI] | per seed |",
             "|---|---|---|---|---|---|---|"]
    for b, r, x in rows:
        lines.append(f"| {b} | {r} | {x['confirm_seeds']} | {gmean(x['fd_baseline'].values()):.2f} | "
                     f"{gmean(x['fd_recipe'].values()):.2f} | {pct(x['mean_log_ratio'])} [{pct(x['ci95'][0])}, "
                     f"{pct(x['ci95'][1])}] | {', '.join(pct(v) for v in x['per_seed'])} |")
    return lines + [""]


def same_sampler_table(summary: dict, methods=("euler", "heun")) -> list:
    """Markdown lines: on the selection seeds, each recipe against the baseline with the same sampler (each of
    `methods` on the uniform grid) at every budget it spends: where a recipe pays for a user whose sampler is
    fixed. Paired change of FD, 95% t-interval."""
    p = summary["protocol"]
    base, seeds = p["recipes"][0], common_seeds(summary, p["recipes"], p["select_seeds"])
    methods = [m for m in methods if m in p["methods"]]
    if not seeds or not methods:
        return []
    fr = {(r, s): {"by_budget": summary["frontiers"][f"{r}_s{s}"]} for r in p["recipes"] for s in seeds}
    lines = ["", f"## Selection seeds {seeds}: each recipe against {base} with the same sampler", "",
             "A user whose sampler is fixed: both sides with it, on the uniform grid; change of FD [95% CI].", ""]
    for m in methods:
        budgets = [b for b in map(str, p["budgets"]) if int(b) % CALLS_PER_STEP[m] == 0]
        if not budgets:  # no budget this sampler spends exactly
            continue
        names = {b: frontier.name(m, int(b) // CALLS_PER_STEP[m], 1.0) for b in budgets}
        lines += [f"| {m}: recipe | " + " | ".join(f"{b} calls ({names[b]})" for b in budgets) + " |",
                  "|---" * (len(budgets) + 1) + "|"]
        for r in p["recipes"][1:]:
            cells = []
            for b in budgets:
                lr = frontier.log_ratios(fr, r, names[b], base, names[b], seeds, b)
                mean, lo, hi = stats.t_interval(lr)
                cells.append(f"{pct(mean)} [{pct(lo)}, {pct(hi)}]")
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines[:-1]


LABELS = {"fm_ln": "logit-normal FM (baseline)", "fc_input@fm_ln": "FC input bias, Euler rollout (10)",
          "fc_input_heun2@fm_ln": "FC input bias, Heun rollout (2)",
          "fc_input_heun3@fm_ln": "FC input bias, Heun rollout (3)",
          "fc_input_heun5@fm_ln": "FC input bias, Heun rollout (5)", "rf@fm_ln": "ReflexFlow defaults (ADR + FC)",
          "rf_heun3@fm_ln": "ReflexFlow, Heun rollout (3)"}


def common_seeds(summary: dict, recipes, seeds, source: str = "frontiers") -> list:
    """The seeds of `seeds` on which every recipe of `recipes` has its scores in `source`: a mean over seeds
    compares recipes on the same seeds only (while a study runs, some recipes have seeds the others lack)."""
    return [s for s in seeds if all(f"{r}_s{s}" in summary.get(source, {}) for r in recipes)]


def mean_frontier(summary: dict, recipe: str, seeds, samplers, source: str = "frontiers") -> tuple[list, list]:
    """(budgets, geometric mean FD over `seeds`) of a recipe with, per budget, the best of `samplers(budget,
    names)` (a list of the setting names to consider) by mean log FD; `source`: the summary's scores to read
    (`frontiers`, or `euler_frontiers` of the secondary check)."""
    xs, ys = [], []
    for b in map(str, summary["protocol"]["budgets"]):
        runs_ = [summary.get(source, {}).get(f"{recipe}_s{s}") for s in seeds]
        runs_ = [r for r in runs_ if r is not None and b in r]
        if not runs_ or len(runs_) < len(seeds):
            continue
        names = [n for n in samplers(b, list(runs_[0][b])) if all(n in r[b] for r in runs_)]
        if not names:
            continue
        best = min(names, key=lambda n: np.mean([math.log(r[b][n]) for r in runs_]))
        xs.append(int(b))
        ys.append(gmean(r[b][best] for r in runs_))
    return xs, ys


def panels(summary: dict) -> list:
    """(title, seeds, recipes, samplers, source) of each panel of the frontier plot: the selection with each
    recipe's best setting, the selection with Euler only (the sampler earlier studies measured FC with), and,
    once they have seeds, the confirmation with the frozen settings and the secondary check (Euler only)."""
    p, sel = summary["protocol"], summary["selection"]
    seeds = common_seeds(summary, p["recipes"], p["select_seeds"])
    euler = lambda b, names: [n for n in names if n == f"euler-{b}"]  # noqa: E731
    out = [(f"selection seeds {seeds}: each recipe with its best sampler and shift", seeds, p["recipes"],
            lambda b, names: names, "frontiers")]
    if "euler" in p["methods"]:
        out.append((f"selection seeds {seeds}: Euler only, uniform grid", seeds, p["recipes"], euler, "frontiers"))
    if sel and summary.get("by_budget"):
        recipes = frontier.confirm_set(sel)
        cseeds = common_seeds(summary, recipes, p["confirm_seeds"])
        if cseeds:  # a confirmation frontier holds its frozen setting only
            out.append((f"confirmation seeds {cseeds}: frozen samplers", cseeds, recipes, lambda b, names: names,
                        "frontiers"))
        eseeds = common_seeds(summary, recipes, p["confirm_seeds"], "euler_frontiers")
        if eseeds:
            out.append((f"confirmation seeds {eseeds}: Euler only (secondary check)", eseeds, recipes, euler,
                        "euler_frontiers"))
    return [x for x in out if x[1]]


def write_report(summary: dict, out: Path) -> None:
    (out / "report.md").write_text(tables(summary))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    p = summary["protocol"]
    drawn = panels(summary)
    if not drawn:  # nothing finished yet: no plot, and none left from an earlier summary
        (out / "frontier.png").unlink(missing_ok=True)
        return
    cols = min(2, len(drawn))  # two panels a row: selection above, confirmation below
    rows = -(-len(drawn) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 5.0 * rows), sharey=True, squeeze=False)
    colors = {r: f"C{i % 10}" for i, r in enumerate(p["recipes"])}
    for ax in axes.flat[len(drawn):]:
        ax.set_visible(False)
    for ax, (title, seeds, recipes, samplers, source) in zip(axes.flat, drawn):
        for r in recipes:
            xs, ys = mean_frontier(summary, r, seeds, samplers, source)
            if xs:
                ax.plot(xs, ys, "o-", color=colors[r], label=LABELS.get(r, r),
                        lw=2.6 if r == p["recipes"][0] else 1.4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(p["budgets"], [str(b) for b in p["budgets"]])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel("model calls per sample")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"FD (geometric mean over seeds, {p['samples']} samples; lower is better)")
    axes[0][0].legend(fontsize=7.5)
    fig.suptitle("Quality per model call: every recipe fine-tuned for the same CPU seconds", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    plt.close(fig)
