"""Training throughput on one GPU: images/s, tokens/s, model TFLOP/s, MFU and peak memory of the real
trainer (`python -m rfengine.train`) on synthetic latents, for a ladder of settings:

  fp32            eager, fp32
  bf16            eager, bf16 autocast
  bf16_compile    bf16 + per-block torch.compile
  bf16_compile_rf bf16 + compile, ReflexFlow (adr.prob = 1; FLOP floor 2.33x of fm)
  bf16_compile_rf_p0.5   the same at adr.prob = 0.5 (floor 1.67x)

Each setting runs in its own process (clean memory peaks) under a time limit; a failure (out of
memory, a timeout) is recorded with its reason and the ladder goes on. Writes train_check.json and
train_check.md into --out.

    python bench/train_check.py --arch SiT-B/2 --batch 256 --out bench/results/<card>_train
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fp32": ["train.precision=fp32"],
    "bf16": ["train.precision=bf16"],
    "bf16_compile": ["train.precision=bf16", "train.compile=true"],
    "bf16_compile_rf": ["train.precision=bf16", "train.compile=true", "objective.name=reflexflow"],
    "bf16_compile_rf_p0.5": ["train.precision=bf16", "train.compile=true", "objective.name=reflexflow",
                             "objective.adr.prob=0.5"],
}
FLOOR = {"bf16_compile_rf": 7 / 3, "bf16_compile_rf_p0.5": 5 / 3}


def run_variant(name: str, args, out: Path) -> dict:
    steps = args.fp32_steps if name == "fp32" else args.steps
    run_dir = out / name
    cmd = [sys.executable, "-m", "rfengine.train", *[a for s in [
        f"model.arch={args.arch}", "data.name=synthetic", "data.image_size=32", "data.channels=4",
        f"train.batch_size={args.batch}", f"train.steps={steps}", "train.log_every=5", "train.ckpt_every=1000000",
        "train.sample_every=1000000", "sample.num_images=1", "sample.steps=1", "train.tensorboard=false",
        "train.progress=false", "optim.lr=1e-4", f"train.out_dir={run_dir}", *VARIANTS[name], *args.set]
        for a in ("--set", s)]]
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout or None)
    except subprocess.TimeoutExpired:
        return {"variant": name, "status": f"timeout after {args.timeout} s"}
    wall = time.time() - t0
    (out / f"{name}.log").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        status = "out of memory" if "out of memory" in r.stderr.lower() else f"failed: {tail[:200]}"
        return {"variant": name, "status": status, "wall_s": wall}
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"variant": name, "status": "ok", "wall_s": wall, "steps": steps, **summary["throughput"]}


def table(results: list[dict], info: dict) -> str:
    fm = next((r for r in results if r["variant"] == "bf16_compile" and r["status"] == "ok"), None)
    lines = [f"Device: {info['device']}, torch {info['torch']}, commit {info['commit']}; {info['arch']} at batch "
             f"{info['batch']} on synthetic data (4x32x32 latents unless --set changes it); rates after a 5-step warm-up.", "",
             "| setting | status | images/s | tokens/s | model TFLOP/s | MFU | peak memory GiB | step vs bf16_compile fm "
             "| FLOP floor |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | {r['status']} | - | - | - | - | - | - | - |")
            continue
        rel = fm["images_per_s"] / r["images_per_s"] if fm else None
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "n/a"
        mem = r.get("peak_mem_gb", r.get("peak_rss_gb"))
        floor = FLOOR.get(r["variant"])
        lines.append(f"| {r['variant']} | ok | {r['images_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['model_tflops']:.1f} | {mfu} | {mem:.1f} | {f'{rel:.2f}x' if rel else '-'} | "
                     f"{f'{floor:.2f}x' if floor else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="SiT-B/2")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--fp32-steps", type=int, default=15)
    p.add_argument("--timeout", type=int, default=110, help="seconds per setting (0: no limit)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--set", action="append", default=[], help="extra config override for every setting")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from bench.conftest import device_info
    info = {**device_info(), "arch": args.arch, "batch": args.batch}
    results = []
    for name in args.variants.split(","):
        print(f"== {name}", flush=True)
        results.append(run_variant(name, args, out))
        print(json.dumps(results[-1]), flush=True)
    (out / "train_check.json").write_text(json.dumps({"info": info, "results": results}, indent=1))
    text = table(results, info)
    (out / "train_check.md").write_text(text)
    print(text)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "8")
    raise SystemExit(main())
