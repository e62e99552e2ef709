"""Summarise a `pytest bench/ --benchmark-json` file as markdown tables: per op, shape, dtype and
pass, the mean time of each implementation, the fused kernel's speed-up over the eager and the
compiled reference, its effective GB/s and that as a share of the measured copy bandwidth; and per
model/batch/precision/mode, each objective's training-step time relative to `fm` next to its FLOP
floor.

    python bench/report.py bench/results/<run>/bench.json > summary.md
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> str:
    data = json.load(open(path))
    info = data.get("machine_info", {}).get("rfengine", {})
    rows = defaultdict(dict)
    copy_gbps = None
    steps = defaultdict(dict)
    for b in data["benchmarks"]:
        x = b.get("extra_info", {})
        if x.get("kind") == "step":
            steps[b["group"]][x["objective"]] = (b["stats"]["mean"], b["stats"]["min"], x["flop_floor"])
            continue
        if b["group"] == "copy":
            copy_gbps = x.get("gbps")
            continue
        key = (x["op"], "x".join(map(str, x["shape"])), x["dtype"], x["pass_"])
        rows[key][x["impl"]] = (b["stats"]["mean"], x.get("gbps"))
    lines = [f"Device: {info.get('device')}, torch {info.get('torch')}, CUDA {info.get('cuda')}, "
             f"triton {info.get('triton')}, commit {info.get('commit')}"]
    if rows:
        lines += [f"Measured copy bandwidth: {copy_gbps:.0f} GB/s" if copy_gbps else "Copy bandwidth: not measured", "",
                  "| op | shape | dtype | pass | eager us | compiled us | fused us | fused vs eager | fused vs compiled "
                  "| fused GB/s | % of copy |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: f"{v * 1e6:.1f}" if v is not None else "-"  # noqa: E731
    for key in sorted(rows):
        r = rows[key]
        e, c, f = (r.get(i, (None, None))[0] for i in ("eager", "compiled", "fused"))
        gbps = r.get("fused", (None, None))[1]
        ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"  # noqa: E731
        share = f"{100 * gbps / copy_gbps:.0f}%" if gbps and copy_gbps else "-"
        lines.append(f"| {' | '.join(key)} | {fmt(e)} | {fmt(c)} | {fmt(f)} | {ratio(e, f)} | {ratio(c, f)} | "
                     f"{f'{gbps:.0f}' if gbps else '-'} | {share} |")
    if steps:
        lines += ["", "| step group | objective | mean ms | min ms | vs fm (mean) | vs fm (min) | FLOP floor | mean / floor |",
                  "|---|---|---|---|---|---|---|---|"]
        for group in sorted(steps):
            base = steps[group].get("fm")
            for name, (mean, low, floor) in sorted(steps[group].items(), key=lambda kv: kv[1][2]):
                rel = mean / base[0] if base else None
                lines.append(f"| {group} | {name} | {mean * 1e3:.1f} | {low * 1e3:.1f} | "
                             f"{f'{rel:.2f}x' if rel else '-'} | {f'{low / base[1]:.2f}x' if base else '-'} | "
                             f"{floor:.2f}x | {f'{rel / floor:.2f}' if rel else '-'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1]))
