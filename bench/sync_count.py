"""The training loop's device syncs, counted on a GPU (bench/gpu_all.sh's main-job stage):

    python bench/sync_count.py --out syncs.json -- --config configs/imagenet256_dit.yaml --set ...

trains exactly as `python -m rfengine.train ...` (same process, same arguments) under
`torch.cuda.set_sync_debug_mode("warn")` and counts the synchronizing CUDA operations of every loop
iteration, from the start of one step to the start of the next. A plain step (one that logs nothing,
writes no checkpoint, draws no grid and is not the last) should sync once: its one flag read. What the
meta-device harness of tests/test_device.py cannot see shows here: `nonzero`, an implicit host-device
copy, a sync inside a library. Without CUDA (gpu_all.sh's CPU dry run) nothing can be counted: the file
says so and still lists the plain steps, so the plumbing is checked.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SYNC = "synchronizing CUDA operation"  # the text of torch's warning in "warn" mode


def count(train_args: list[str], warm: int, cuda: bool | None = None) -> dict:
    """Run the trainer's command line on `train_args`; the syncs of each plain step after the first `warm`
    steps (compilation, autotuning) and the trainer's exit status. `cuda`: whether the syncs are counted
    (default: whether CUDA is available; torch warns of syncs on CUDA only)."""
    import torch

    from rfengine import train
    from rfengine.trainer import Trainer
    cuda = torch.cuda.is_available() if cuda is None else cuda
    syncs, marks = [], []  # marks: (step, syncs so far, plain) at the start of each step
    real_step, real_show = Trainer.train_step, warnings.showwarning

    def marked(self, x1, y):
        step, cfg = self.state.step + 1, self.cfg.train
        plain = not (self.metrics.logs_at(step) or step % cfg.ckpt_every == 0 or step % cfg.sample_every == 0
                     or step == cfg.steps)
        marks.append((step, len(syncs), plain))
        return real_step(self, x1, y)

    def show(message, category, filename, lineno, file=None, line=None):
        if SYNC in str(message):
            syncs.append(f"{filename}:{lineno}")
        else:
            real_show(message, category, filename, lineno, file, line)

    Trainer.train_step = marked
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("always", message=f".*{SYNC}")  # every one, not once per line
            warnings.showwarning = show
            if cuda:
                torch.cuda.set_sync_debug_mode("warn")
            rc = train.main(train_args)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
        Trainer.train_step = real_step
    per_step = {}
    for (step, start, plain), (_, end, _) in zip(marks, marks[1:]):  # the last step ends the run: not counted
        if plain and step > warm:
            per_step[step] = end - start
    result = {"exit": rc, "device": torch.cuda.get_device_name(0) if cuda else "cpu", "counted": cuda,
              "warm_up_steps": warm, "plain_steps": sorted(per_step)}
    if not cuda:
        return {**result, "note": "no CUDA device: syncs are counted on a GPU only"}
    where = {}
    for (step, start, plain), (_, end, _) in zip(marks, marks[1:]):
        if step in per_step:
            for site in syncs[start:end]:
                where[site] = where.get(site, 0) + 1
    values = list(per_step.values())
    return {**result, "syncs_per_plain_step": per_step,
            "median": statistics.median(values) if values else None, "max": max(values) if values else None,
            "sites": dict(sorted(where.items(), key=lambda kv: -kv[1]))}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: sync_count.py --out FILE [--warm N] -- <rfengine.train arguments>", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--warm", type=int, default=5, help="steps left out at the start (compilation, autotuning)")
    a = p.parse_args(argv[:cut])
    result = count(argv[cut + 1:], a.warm)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(f"syncs: {json.dumps({k: v for k, v in result.items() if k not in ('sites', 'syncs_per_plain_step')})}")
    return result["exit"]


if __name__ == "__main__":
    raise SystemExit(main())
