"""The last stages of bench/gpu_all.sh.

    python bench/gpu_summary.py plan --out plan.json [--variants bf16,bf16_compile] -- --set model.arch=SiT-B/2 ...
        the planner's prediction for each setting of the trainer ladder (bench/train_check.py) that ran
    python bench/gpu_summary.py summary --dir RESULTS
        summary.md: kernel benchmarks (bench/report.py), the ladder, the planner against the measured
        peak memory, and every goal with its measured value and a verdict (or "not measured")
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The ladder's settings as config overrides (bench/train_check.py's VARIANTS, precision and objective).
GOALS = {
    "adr_copy": "fused ADR step (last step, forward) >= 85% of the copy bandwidth",
    "fc_eager": "fused FC loss forward+backward >= 3x the eager reference",
    "fc_compiled": "fused FC loss forward+backward faster than the compiled reference",
    "rf_floor": "ReflexFlow step (compiled, bf16) within 5% of its FLOP floor (p=1: 2.33x, p=0.5: 1.67x of FM)",
    "mfu": "MFU >= 40% for SiT-B/2, bf16 + compile, FM",
    "plan": "planner's peak memory within 10% of the measured peak (bf16 FM eager)",
    "syncs": "a step that logs nothing syncs the device once (its flag read), main job after its warm-up",
}


def plan_ladder(out: Path, overrides: list[str], names: list[str]) -> None:
    """plan.json: the planner's prediction for each of the ladder's settings `names` (bench/train_check.py's
    VARIANTS), with the config `overrides` ('--set', 'key=value', ...)."""
    from bench.train_check import VARIANTS
    from rfengine import config, plan
    sets = [o for o in overrides if o != "--set"]
    result = {}
    for name in names:
        cfg = config.load(None, [*sets, *VARIANTS[name]])
        result[name] = plan.plan(cfg, 1, "H100")
    out.write_text(json.dumps(result, indent=1))
    for name, p in result.items():
        print(f"{name}: predicted peak {p['peak_bytes'] / 2**30:.2f} GiB "
              f"(activations {p['activation_bytes'][p['config']['activation_checkpointing']] / 2**30:.2f} GiB)")


def _verdict(ok) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def main_job(run: Path, log: Path, rc: int, syncs: Path | None = None) -> dict:
    """What the main job's stage shows: whether configs/imagenet256_dit.yaml ran to its end, crossed its
    switch (the logged steps before it FM, those after it with FC's terms; the switch's own step is a logged
    one), the device syncs of its steps that log nothing (bench/sync_count.py), and its last log lines."""
    rows = []
    if (run / "metrics.jsonl").is_file():
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    fc = [r["step"] for r in rows if "loss_fc" in r]
    last = rows[-1]["step"] if rows else None
    tail = log.read_text().splitlines()[-15:] if log.is_file() else []
    return {"exit": rc, "steps_logged": len(rows), "last_step": last,
            "first_fc_step": fc[0] if fc else None, "fm_steps": (fc[0] - 1) if fc else last,
            "fc_steps": (last - fc[0] + 1) if fc else 0,
            "finite": all(isinstance(r.get("loss"), float) and r["loss"] == r["loss"] for r in rows),
            "images_per_s_last": rows[-1].get("images_per_s") if rows else None,
            "exported": (run / "ema.safetensors").is_file(),
            "syncs": json.loads(syncs.read_text()) if syncs is not None and syncs.is_file() else None,
            "log_tail": tail}


def _stages(path: Path | None) -> list[str]:
    """The stages' exit codes; one that ran out of its budget (exit 124) says so."""
    if path is None or not path.is_file():
        return []
    rows = ["| stage | exit | budget (s) | note |", "|---|---|---|---|"]
    for line in path.read_text().splitlines():
        name, rc, budget = line.split("\t")
        note = f"**timed out** after its {budget} s budget: its results are missing or partial" if rc == "124" else (
            "ok" if rc == "0" else "**failed**")
        rows.append(f"| {name} | {rc} | {budget} | {note} |")
    return ["## Stages", "", *rows, ""]


def summary(d: Path, stages: Path | None = None) -> str:
    from bench.report import main as bench_tables
    lines = [f"# GPU check: {d.name}", ""]
    env = (d / "env.txt").read_text().strip() if (d / "env.txt").is_file() else "env.txt missing"
    lines += ["```", env, "```", ""]
    lines += _stages(stages)
    goals = {k: (None, "-") for k in GOALS}
    if (d / "main_job.json").is_file():
        m = json.loads((d / "main_job.json").read_text())
        ok = m["exit"] == 0 and m["fc_steps"] > 0 and m["fm_steps"] > 0 and m["finite"] and m["exported"]
        lines += ["## Main job (configs/imagenet256_dit.yaml on synthetic latents)", "",
                  f"Exit {m['exit']}; {m['steps_logged']} steps logged, the last {m['last_step']}; FM for {m['fm_steps']} "
                  f"steps, FC from step {m['first_fc_step']} ({m['fc_steps']} steps); losses finite: {m['finite']}; "
                  f"EMA exported: {m['exported']}. Verdict: {'ran through its switch' if ok else '**did not**'}.", ""]
        sy = m.get("syncs") or {}
        if sy.get("counted"):
            per = sy["syncs_per_plain_step"]
            odd = {k: v for k, v in per.items() if v != 1}
            goals["syncs"] = (not odd and bool(per), f"median {sy['median']}, max {sy['max']} over {len(per)} steps"
                              + (f"; steps with other counts: {odd}" if odd else ""))
            sites = ", ".join(f"{k} ({v})" for k, v in list(sy["sites"].items())[:6])
            lines += [f"Device syncs per step that logs nothing (after {sy['warm_up_steps']} warm-up steps): median "
                      f"{sy['median']}, max {sy['max']}; where: {sites or 'none'}.", ""]
        elif sy:
            lines += [f"Device syncs: not counted ({sy.get('note', '?')}); {len(sy['plain_steps'])} steps that log "
                      "nothing were marked.", ""]
    if (d / "kernel_tests.txt").is_file():
        tail = [x for x in (d / "kernel_tests.txt").read_text().splitlines() if x.strip()][-1:]
        lines += [f"Kernel tests on this device: {tail[0] if tail else '?'}", ""]
    bench = d / "bench.json"
    if bench.is_file():
        data = json.loads(bench.read_text())
        lines += ["## Kernels", "", bench_tables(str(bench)), ""]
        copy = next((b["extra_info"].get("gbps") for b in data["benchmarks"] if b["group"] == "copy"), None)
        by = {}
        for b in data["benchmarks"]:
            x = b.get("extra_info", {})
            if "op" in x:
                by[(x["op"], x["dtype"], x["pass_"], x["impl"])] = (b["stats"]["mean"], x.get("gbps"))
        for dt in ("bf16", "fp32"):
            fused = by.get(("adr_euler_step", dt, "fwd", "fused"))
            if fused and copy and goals["adr_copy"][0] is None:
                share = fused[1] / copy
                goals["adr_copy"] = (share >= 0.85, f"{share:.0%} of {copy:.0f} GB/s ({dt})")
            f, e, c = (by.get(("fc_weighted_mse", dt, "fwdbwd", i)) for i in ("fused", "eager", "compiled"))
            if f and e and goals["fc_eager"][0] is None:
                goals["fc_eager"] = (e[0] / f[0] >= 3, f"{e[0] / f[0]:.2f}x ({dt})")
            if f and c and goals["fc_compiled"][0] is None:
                goals["fc_compiled"] = (c[0] / f[0] > 1, f"{c[0] / f[0]:.2f}x ({dt})")
    ladder = d / "train_check.json"
    if ladder.is_file():
        from bench.train_check import FLOOR, table
        data = json.loads(ladder.read_text())
        lines += ["## Trainer ladder", "", table(data["results"], data["info"]), ""]
        res = {r["variant"]: r for r in data["results"] if r["status"] == "ok"}
        fm = res.get("bf16_compile")
        if fm:
            if "mfu" in fm:
                goals["mfu"] = (fm["mfu"] >= 0.40, f"{fm['mfu']:.1%}")
            parts, oks = [], []
            for name, floor in FLOOR.items():
                if name in res:
                    rel = fm["images_per_s"] / res[name]["images_per_s"]
                    parts.append(f"{name}: {rel:.2f}x (floor {floor:.2f}x, {rel / floor - 1:+.1%})")
                    oks.append(rel / floor <= 1.05)
            if oks:
                goals["rf_floor"] = (all(oks), "; ".join(parts))
        plan_path = d / "plan.json"
        if plan_path.is_file():
            plans = json.loads(plan_path.read_text())
            rows = ["| setting | predicted peak GiB | measured peak GiB | predicted / measured |", "|---|---|---|---|"]
            for name, p in plans.items():
                got = res.get(name, {}).get("peak_mem_gb")
                pred = p["peak_bytes"] / 2 ** 30
                rows.append(f"| {name} | {pred:.2f} | {f'{got:.2f}' if got else '-'} | "
                            f"{f'{pred / got:.2f}' if got else '-'} |")
                if name == "bf16" and got:
                    goals["plan"] = (abs(pred / got - 1) <= 0.10, f"{pred:.2f} vs {got:.2f} GiB")
            lines += ["## Planner vs measured peak memory", "",
                      "The planner counts an eager step; compiled steps may keep fewer activations.", "", *rows, ""]
    lines += ["## Goals", "", "| goal | measured | verdict |", "|---|---|---|"]
    for k, text in GOALS.items():
        ok, value = goals[k]
        lines.append(f"| {text} | {value} | {_verdict(ok)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["plan", "main", "summary"])
    p.add_argument("--out")
    p.add_argument("--dir")
    p.add_argument("--stages", help="summary: the stages' exit codes (stage, exit, budget per line)")
    p.add_argument("--log", help="main: the main job's log")
    p.add_argument("--rc", type=int, default=0, help="main: the main job's exit status")
    p.add_argument("--syncs", help="main: bench/sync_count.py's counts")
    p.add_argument("--variants", help="plan: the ladder's settings that ran, comma-separated (bench/train_check.py "
                                      "--variants; default: every setting but fp32)")
    a = p.parse_args(argv)
    if a.what == "plan":
        from bench.train_check import VARIANTS
        names = a.variants.split(",") if a.variants else [n for n in VARIANTS if n != "fp32"]
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            p.error(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
        plan_ladder(Path(a.out), extra, names)
    elif a.what == "main":
        syncs = Path(a.syncs) if a.syncs else None
        Path(a.out).write_text(json.dumps(main_job(Path(a.dir), Path(a.log), a.rc, syncs), indent=1))
    else:
        text = summary(Path(a.dir), Path(a.stages) if a.stages else None)
        (Path(a.dir) / "summary.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
