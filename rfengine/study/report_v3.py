"""Study v3's report: report.md (the baseline choice, the FC choice, the headline and `baseline_vs_fm`,
regime (b), the step costs measured and as FLOP floors) and fd_vs_seconds.png."""
from __future__ import annotations

from pathlib import Path

from rfengine.study import stats
from rfengine.study.report import LABELS, _ratio_table, plot

LABELS_V3 = {"fm": "FM, uniform t", "fm_ln": "FM, logit-normal t", "fm_snr": "FM, Min-SNR-5", "fm_cos": "FM + cosine loss",
             "fc_input": "FC, input-space bias", "fc_input_p0.5": "FC, input-space bias, rollout on 1/2",
             "fc_input_p0.25": "FC, input-space bias, rollout on 1/4", "fc_self": "FC, own error (self)",
             "fc_self_nomask": "FC, own error, no low-pass"}


def label(v: str) -> str:
    fc, _, base = v.partition("@")
    name = LABELS_V3.get(fc, LABELS.get(fc, fc))
    return f"{name} on {label(base)}" if base else name


def _relabel(rows: list[dict]) -> list[dict]:
    return [{**r, "variant": label(r["variant"])} for r in rows]


def _paired(block: dict | None, steps, what: str) -> list[str]:
    if not block:
        return ["", f"{what}: no seed has finished yet."]
    state = "complete" if block.get("complete", True) else "incomplete: not every confirmation seed has finished"
    return (["", f"{what}, seeds {block['confirm_seeds']} ({state}; measured step cost {block['step_cost']:.2f}x):", ""]
            + _ratio_table(_relabel(block["rows"]), steps)
            + ["", f"At {block['sample_steps']} Euler steps {label(block['variant'])} {block['verdict']}."])


def tables(summary: dict) -> str:
    p, cal = summary["protocol"], summary["calibration"]
    steps = p["sample_steps"]
    out = ["# Equal-compute study v3 (digits): FC against the strongest cheap baseline", "",
           "Made by `python -m rfengine.study`; numbers in summary.json. Paired FD ratios on the same seed (same "
           "pretrained model, data order and sampling noise): the mean over seeds of log(FD/FD_base) shown as a "
           "percentage change, with its 95% t-interval in brackets.", "",
           f"## Step cost (CPU seconds per step, one thread; {cal['machine']['cpu']})", "",
           "| variant | s/step | measured vs FM | FLOP floor vs FM | fine-tune steps |", "|---|---|---|---|---|"]
    for v, c in summary["step_costs"].items():
        floor = "-" if c["flop_floor_vs_fm"] is None else f"{c['flop_floor_vs_fm']:.2f}x"
        out.append(f"| {label(v)} | {cal['cpu_seconds_per_step'][v]:.4f} | {c['measured_vs_fm']:.2f}x | {floor} | "
                   f"{cal['finetune_steps'][v]} |")
    out += ["", f"Fine-tune budget: {cal['finetune_budget_cpu_seconds']:.0f} CPU seconds per run "
            f"({p['ft_fm_steps']} FM steps)."]
    bc = summary["baseline_choice"]
    out += ["", f"## Step 1, the strongest baseline: selection seeds {bc['seeds']}, FD change vs uniform-t FM", ""]
    out += _ratio_table(_relabel(bc["rows"]), steps)
    out += ["", f"Chosen: **{label(bc['baseline'])}** ({bc['rule']})."]
    sel = summary.get("selection")
    if sel:
        out += ["", f"## Step 2, FC on the baseline: selection seeds {sel['seeds']}, FD change vs {label(sel['baseline'])}",
                ""] + _ratio_table(_relabel(sel["rows"]), steps)
        out += ["", f"Chosen: **{label(sel['variant'])}** ({sel['rule']})."]
        out += ["", "## Confirmation (seeds not seen by either choice)"]
        out += _paired(summary.get("headline"), steps, f"**Headline**: {label(sel['variant'])} against the baseline")
        if sel["baseline"] != "fm":
            out += _paired(summary.get("baseline_vs_fm"), steps, "The baseline against uniform-t FM")
        sch = summary.get("scheduled") or {}
        out += ["", f"## Regime (b), scheduled: the FM run continued for its last {sch.get('tail_fm_steps')} FM steps' "
                "seconds with the baseline or the variant"]
        out += ["", "Both arms of a pair continue the same chunk checkpoint (the SHA-256 of its weights recorded in "
                "each branch); a pair whose arms started from different re-creations is left out and named."]
        out += _paired(sch.get("variant_vs_baseline"), steps, "The variant against the baseline's tail")
        out += _paired(sch.get("baseline_vs_fm"), steps, "The baseline's tail against uniform-t FM's tail")
        for block in (sch.get("variant_vs_baseline"), sch.get("baseline_vs_fm")):
            if block and block.get("excluded"):
                out += ["", f"Left out of {label(block['variant'])} vs {label(block['baseline'])} (arms from different "
                        f"checkpoints): seeds {block['excluded']}."]
    rec = summary.get("recreated") or {}
    if rec:
        out += ["", "## Re-created FM runs (their chunk checkpoints, for regime (b))", "",
                "A re-creation on another machine is not always bit-identical; the miss is the relative FD@20 "
                "difference (a re-creation beyond 10% stops the study as a broken one).", "",
                "| seed | re-created to step | checked against | identical | FD@20 re-created | FD@20 original | miss |",
                "|---|---|---|---|---|---|---|"]
        for s, r in rec.items():
            same = r.get("identical", r.get("identical_fd"))  # weights (to the end) or the FD (at the branch step)
            miss = r["fd20_recreated"] / r["fd20_original"] - 1
            out.append(f"| {s} | {r['steps']} | {r['checked_against']} | {same} | {r['fd20_recreated']:.2f} | "
                       f"{r['fd20_original']:.2f} | {miss:+.1%} |")
    out += ["", f"## Per run (fine-tuning, {stats.SELECT_AT} Euler steps)", "",
            "| run | seed | steps | FD | precision | recall | energy gap |", "|---|---|---|---|---|---|---|"]
    for key, r in sorted(summary["finetunes"].items()):
        v, s = key.rsplit("_s", 1)
        sc = r["by_steps"][str(stats.SELECT_AT)]
        out.append(f"| {label(v)} | {s} | {r['steps']} | {sc['fd']:.2f} | {sc['precision']:.3f} | {sc['recall']:.3f} | "
                   f"{r['energy_gap_end']:+.4f} |")
    return "\n".join(out) + "\n"


def write_report(summary: dict, out: Path) -> None:
    (out / "report.md").write_text(tables(summary))
    sel, h = summary.get("selection"), summary.get("headline")
    if not sel:
        return
    keep = {sel["baseline"], sel["variant"], "fm"}
    curves = {k: c for k, c in summary["curves"].items() if k.rsplit("_s", 1)[0] in keep}
    panels = [(f"selection seeds {sel['seeds']}", sel["seeds"])]
    if h:
        panels.append((f"confirmation seeds {h['confirm_seeds']} (not seen by the choices)", h["confirm_seeds"]))
    plot({**summary, "curves": curves}, out / "fd_vs_seconds.png",
         "Fine-tuning a plateaued FM model at equal compute: uniform-t FM, the chosen baseline and the FC "
         "variant chosen on top of it", panels, label)
