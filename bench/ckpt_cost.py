"""What a checkpoint costs the training loop: the time `CheckpointManager.save` keeps the loop
waiting, written in the foreground (`train.async_ckpt=false`) and in the background (true), against
the serialisation alone (the same state `torch.save`d into memory). Single-file checkpoints on one
process, sharded ones (torch.distributed.checkpoint) under FSDP on N processes.

    python bench/ckpt_cost.py --arch DiT-S/4 --out bench/results/<machine>_ckpt            # single file
    torchrun --nproc_per_node=2 bench/ckpt_cost.py --arch DiT-S/4 --fsdp --out ...         # sharded

Each setting saves `--repeats` checkpoints into a fresh folder (median reported). `loop_s` is what
the loop pays; `until_on_disk_s` is from the call until the file or folder is complete; on rank 0.
Writes ckpt_cost_<single|sharded>.json next to a one-line summary on stdout.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(args, async_ckpt: bool, folder: Path) -> dict:
    import torch

    from rfengine import config as config_lib
    from rfengine import parallel
    from rfengine.trainer import Trainer
    over = ["data.name=digits", f"model.arch={args.arch}", "model.class_conditional=false", "train.steps=100",
            "train.progress=false", "train.tensorboard=false", f"train.keep_ckpts={args.repeats + 1}",
            f"train.out_dir={folder}", f"train.async_ckpt={str(async_ckpt).lower()}",
            f"parallel.mode={'fsdp' if args.fsdp else 'ddp'}", "train.batch_size=8"]
    tr = Trainer(config_lib.load(None, over))
    for q in tr.model.parameters():  # one optimizer step, so its state (two moments) is in the checkpoint
        q.grad = torch.zeros_like(q)
    tr.optimizer.step()
    loop, on_disk = [], []
    for i in range(args.repeats):
        tr.state.step = i + 1
        parallel.barrier()
        t0 = time.perf_counter()
        tr.checkpoints.save(wait=False)
        loop.append(time.perf_counter() - t0)
        tr.checkpoints.writer.wait()
        parallel.barrier()
        on_disk.append(time.perf_counter() - t0)
    # The serialisation alone: this process's part of the same state into memory.
    if tr.built.sharded:  # shards as plain tensors of their own (torch.save writes a view's whole storage)
        def local(obj):
            if isinstance(obj, torch.Tensor):
                return parallel.local(obj).clone()
            return {k: local(v) for k, v in obj.items()} if isinstance(obj, dict) else obj
        state = local(tr.checkpoints._sharded_state())
    else:
        state = {"model": tr.model.state_dict(), "ema": tr.ema.state_dict(), "optimizer": tr.optimizer.state_dict()}
    ser, size = [], 0
    for _ in range(args.repeats):
        buf = io.BytesIO()
        t0 = time.perf_counter()
        torch.save(state, buf)
        ser.append(time.perf_counter() - t0)
        size = buf.tell()
    return {"loop_s": statistics.median(loop), "until_on_disk_s": statistics.median(on_disk),
            "serialise_s": statistics.median(ser), "bytes_per_process": size, "loop_all": loop}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="DiT-S/4")
    p.add_argument("--fsdp", action="store_true", help="sharded checkpoints (run under torchrun)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="where the checkpoints go (the storage measured; default a temp folder)")
    p.add_argument("--out", default=None, help="folder for ckpt_cost_<kind>.json")
    args = p.parse_args(argv)
    import torch

    from rfengine import parallel
    res = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for async_ckpt in (False, True):
            res["background" if async_ckpt else "foreground"] = measure(args, async_ckpt, Path(tmp) / str(async_ckpt))
    d = parallel.init_distributed()
    kind = "sharded" if args.fsdp else "single"
    if d.is_main:
        fg, bg = res["foreground"], res["background"]
        report = {"kind": kind, "arch": args.arch, "processes": d.world, "torch": torch.__version__,
                  "device": str(d.device), "repeats": args.repeats, **res}
        print(f"{kind} {args.arch} x{d.world}: {fg['bytes_per_process'] / 2**20:.0f} MiB per process; loop pays "
              f"{fg['loop_s']:.2f} s in the foreground, {bg['loop_s']:.2f} s in the background; serialising "
              f"alone {fg['serialise_s']:.2f} s; on disk after {bg['until_on_disk_s']:.2f} s")
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"ckpt_cost_{kind}.json").write_text(json.dumps(report, indent=1))
    parallel.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
